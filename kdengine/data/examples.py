"""Example data for a run, in one call: sources -> token store (cached) -> packed train and
validation rows -> samplers, with the counts the data stage reports.

Validation holds out whole examples by the hash of their name, as kdengine.data does for
documents (is_validation); when none is held out, the last example that trains is. Evaluation
sees the held-out examples' trained tokens only (their labels are IGNORE_INDEX elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kdengine.config import ConfigError, RunConfig
from kdengine.data.chat import ChatTemplate
from kdengine.data.formats import counted, parse_fields
from kdengine.data.packing import PackedRows, PackedSampler, pack_rows
from kdengine.data.store import DataOptions, TokenStore, open_store


@dataclass
class DataStats:
    """What the data stage reports (its event's fields)."""

    examples: int
    train_examples: int
    val_examples: int
    tokens: int
    trained_tokens: int
    truncated: int
    dropped: int
    skipped_files: int
    skipped: list[list[str]]  # [file, reason] of the first few skipped files
    train_rows: int
    val_rows: int
    fill: float  # share of the train rows' tokens that are not padding
    cached: bool  # the token store was built by an earlier command, nothing tokenized by this
    no_answer: int = 0  # examples with no target at all (no assistant turn): not packed
    answer_past_seq_len: int = 0  # ... whose targets all lie past seq_len: not packed
    answers: int | None = None  # assistant turns that train, and completions (None: a store
    empty_answers: int | None = None  # built before they were counted) ... and the empty ones
    first_empty_answer: str | None = None  # the first example with an empty one

    def to_event(self) -> dict[str, Any]:
        return asdict(self)

    def left_out_line(self) -> str | None:
        """The examples that train nothing, in words (None when none does)."""
        if not (self.no_answer or self.answer_past_seq_len):
            return None
        total = self.no_answer + self.answer_past_seq_len
        trains = "trains nothing and is" if total == 1 else "train nothing and are"
        return (f"data: {counted(total, 'example')} {trains} "
                f"left out of the rows ({self.no_answer} with no assistant turn or "
                f"completion, {self.answer_past_seq_len} whose trained tokens all lie past "
                "seq_len)")

    def empty_answers_warning(self) -> str | None:
        """The empty answers, in words (None when none is, or the store did not count them)."""
        if not self.empty_answers:
            return None
        return (f"data: {self.empty_answers} of {self.answers} assistant turns (or completions) "
                f"are empty (content \"\"; the first: {self.first_empty_answer}): each trains "
                "only its end-of-turn token")


@dataclass
class ExampleData:
    store: TokenStore
    train: PackedRows
    val: PackedRows
    stats: DataStats

    def samplers(self, batch_size: int, seed: int) -> tuple[PackedSampler, PackedSampler]:
        return PackedSampler(self.train, batch_size, seed), PackedSampler(self.val, batch_size,
                                                                         seed)


def load_example_data(spec: str, tokenizer: Any, template: ChatTemplate | None, *,
                      seq_len: int, batch_size: int, val_fraction: float,
                      options: DataOptions | None = None, on_long: str = "truncate",
                      root: Path | None = None,
                      progress: Callable[[int, str], None] | None = None,
                      workers: int | None = None,
                      samples_completions: bool = False,
                      trains_answers: bool = True) -> ExampleData:
    """Everything a run needs of example data (see open_store for `progress` and
    `workers`); ConfigError, one line, for data that cannot train. `samples_completions`: an
    on-policy (or seq_kd) run's, whose prompts are what comes before each example's answer.
    `trains_answers`: whether a step ever trains on the data's own answers (not so where
    every step samples its completions: --lmbda 1, --seq-kd), which empty ones then refuse."""
    store = open_store(spec, tokenizer, template, options, root, progress, workers)
    meta = store.meta
    if trains_answers:
        _refuse_only_empty_answers(spec, meta)
    first = first_targets(store)
    fits = store.lengths() <= seq_len if on_long == "drop" else \
        torch.ones(len(store), dtype=torch.bool)
    no_answer = first == NO_TARGET
    past = ~no_answer & (first > seq_len)  # truncated to seq_len, it keeps no target
    trains = ~no_answer & ~past
    held = store.names % 10_000 < val_fraction * 10_000
    if not bool(held.any()) and len(store) > 1:
        held[_last_that_trains(trains)] = True
    every = torch.arange(len(store))
    # an example that trains nothing adds no term to the loss, only rows: it is not packed
    train = pack_rows(store, every[~held & (trains | ~fits)], seq_len, on_long)
    val = pack_rows(store, every[held & (trains | ~fits)], seq_len, on_long)
    dropped = train.dropped + val.dropped
    untrained = int((fits & ~trains).sum())
    train.untrained, val.untrained = int((fits & ~trains & ~held).sum()), \
        int((fits & ~trains & held).sum())
    left_out = _left_out_text(int((fits & no_answer).sum()), int((fits & past).sum()), seq_len)
    if (len(train) < batch_size or len(val) < 1) and dropped:  # --on-long drop left too few
        more = "" if dropped == len(store) else ", or more data"
        raise ConfigError("on_long", f"drop left out {dropped} of the "
                          f"{counted(len(store), 'example')} as longer than seq_len {seq_len}, "
                          f"leaving {len(train)} train and {counted(len(val), 'validation row')}"
                          f": batch_size {batch_size} needs {counted(batch_size, 'train row')} "
                          "and one validation row (give a larger "
                          f"--seq-len, or --on-long truncate{more})")
    if bool(held.any()) and len(val) < 1:  # every held-out example trains nothing
        # --train-on all, which an on-policy run refuses (it leaves no prompt), is no fix there
        fix = ("or data whose examples end with an answer (conversations whose last turn is the "
               "assistant's, or prompt/completion pairs): an on-policy run samples its own "
               "answer to what comes before it" if samples_completions else "or --train-on all")
        why = _left_out_text(int((held & no_answer).sum()), int((held & past).sum()), seq_len)
        # a larger seq_len helps where answers lie past it; val_fraction where others train
        larger = [name for name, helps in (("seq_len", bool((held & past).any())),
                                           ("val_fraction", bool(trains.any()))) if helps]
        give = (f"a larger {' or '.join(larger)}, {fix}" if larger else
                fix.removeprefix("or ") if samples_completions else
                "data with answers (conversations with an assistant turn, or prompt/completion "
                "pairs), or --train-on all")
        raise ConfigError("data", f"{spec}: the validation rows hold no trained tokens (of the "
                          f"{counted(int(held.sum()), 'held-out example')}, {why}): give {give}")
    if len(train) < batch_size or len(val) < 1:
        why = f" ({untrained} left out: {left_out})" if untrained else ""
        raise ConfigError("data", f"{spec} has {counted(len(store), 'example')}{why}, packed "
                          f"into {len(train)} train and {counted(len(val), 'validation row')} "
                          f"of seq_len {seq_len}: batch_size {batch_size} needs "
                          f"{counted(batch_size, 'train row')} and one validation row (give "
                          "more data, or a smaller --batch-size)")
    stats = DataStats(
        examples=meta["examples"], train_examples=int((~held).sum()),
        val_examples=int(held.sum()), tokens=meta["tokens"],
        trained_tokens=meta["trained_tokens"], truncated=train.truncated + val.truncated,
        dropped=dropped, skipped_files=meta["skipped_files"],
        skipped=meta["skipped"], train_rows=len(train), val_rows=len(val),
        fill=round(train.filled / max(len(train) * seq_len, 1), 4), cached=store.tokenized == 0,
        no_answer=int((fits & no_answer).sum()), answer_past_seq_len=int((fits & past).sum()),
        answers=meta.get("answers"), empty_answers=meta.get("empty_answers"),
        first_empty_answer=meta.get("first_empty_answer"))
    return ExampleData(store, train, val, stats)


def _refuse_only_empty_answers(spec: str, meta: dict[str, Any]) -> None:
    """Data whose every answer is empty trains only end-of-turn tokens: refused (a store built
    before answers were counted has no count, and is not)."""
    answers, empty = meta.get("answers"), meta.get("empty_answers")
    if answers and empty == answers:
        raise ConfigError("data", f"{spec}: all {answers} assistant turns (or completions) are "
                          f"empty (content \"\"; the first: {meta.get('first_empty_answer')}), "
                          "so only their end-of-turn token would train: give the answers' "
                          "text (in another field? name it with --data-fields)")


def _left_out_text(no_answer: int, past: int, seq_len: int) -> str:
    parts = ([f"{no_answer} with no assistant turn or completion"] if no_answer else []) + \
        ([f"{past} whose trained tokens all lie past seq_len {seq_len}"] if past else [])
    return ", ".join(parts)


NO_TARGET = torch.iinfo(torch.int64).max
_CHUNK = 1 << 22  # tokens of trains.bin looked at at once


def first_targets(store: TokenStore) -> torch.Tensor:
    """[examples] int64: where each example's first training target is, from its start (a
    target at k is the label of input k - 1; an example's first token is never one), or
    NO_TARGET where it has none. One pass over trains.bin in chunks: the positions of a
    chunk's trained tokens, searched for each example that overlaps it."""
    offsets = store.offsets
    starts, ends = offsets[:-1] + 1, offsets[1:]
    first = torch.full((len(store),), NO_TARGET, dtype=torch.int64)
    total = int(offsets[-1]) if len(offsets) else 0
    for lo in range(0, total, _CHUNK):
        hi = min(lo + _CHUNK, total)
        at = store.trains[lo:hi].nonzero().flatten() + lo
        if len(at) == 0:
            continue
        # the examples whose targets [start, end) overlap [lo, hi)
        a = int(torch.searchsorted(ends, lo, right=True))
        b = int(torch.searchsorted(starts, hi, right=False))
        if a >= b:
            continue
        todo = torch.arange(a, b)[first[a:b] == NO_TARGET]
        j = torch.searchsorted(at, starts[todo].clamp(min=lo))
        found = j < len(at)
        todo, j = todo[found], j[found]
        hit = at[j] < ends[todo]
        first[todo[hit]] = at[j[hit]] - offsets[todo[hit]]
    return first


def _last_that_trains(trains: torch.Tensor) -> int:
    """The last example with a target that trains within seq_len (a trailing user-only or
    system-only record has none: held out alone, it leaves validation nothing to measure);
    the last example when none has one (the checks that follow name that)."""
    where = trains.nonzero()
    return int(where[-1]) if len(where) else len(trains) - 1


def load_examples(config: RunConfig, tokenizer: Any, template_dir: Path | None,
                  progress: Callable[[str], None] | None = None,
                  workers: int | None = None) -> ExampleData:
    """Example data as a run's config asks for it: the store built or reused,
    packed into seq_len rows; ConfigError naming the field for what cannot train."""
    from kdengine.data.chat import load_chat_template

    template = load_chat_template(template_dir) if template_dir is not None else None
    options = DataOptions(split=config.data_split, fields=parse_fields(config.data_fields),
                          train_on=config.train_on, on_bad_file=config.on_bad_file)

    def tokenized(done: int, source: str) -> None:
        if progress is not None:
            progress(f"data: {done} examples tokenized (at {source})")

    return load_example_data(config.data, tokenizer, template, seq_len=config.seq_len,
                             batch_size=config.batch_size, val_fraction=config.val_fraction,
                             options=options, on_long=config.on_long, progress=tokenized,
                             workers=workers, samples_completions=config.samples_completions,
                             trains_answers=config.lmbda < 1 and not config.seq_kd)
