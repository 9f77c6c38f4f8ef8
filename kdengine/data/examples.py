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
from kdengine.data.formats import parse_fields
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

    def to_event(self) -> dict[str, Any]:
        return asdict(self)


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
                      samples_completions: bool = False) -> ExampleData:
    """Everything a run needs of example data (see open_store for `progress` and
    `workers`); ConfigError, one line, for data that cannot train. `samples_completions`: an
    on-policy (or seq_kd) run's, whose prompts are what comes before each example's answer."""
    store = open_store(spec, tokenizer, template, options, root, progress, workers)
    held = store.names % 10_000 < val_fraction * 10_000
    if not bool(held.any()) and len(store) > 1:
        held[_last_that_trains(store)] = True
    every = torch.arange(len(store))
    train = pack_rows(store, every[~held], seq_len, on_long)
    val = pack_rows(store, every[held], seq_len, on_long)
    dropped = train.dropped + val.dropped
    if (len(train) < batch_size or len(val) < 1) and dropped:  # --on-long drop left too few
        more = "" if dropped == len(store) else ", or more data"
        raise ConfigError("on_long", f"drop left out {dropped} of the {len(store)} examples "
                          f"as longer than seq_len {seq_len}, leaving {len(train)} train and "
                          f"{len(val)} validation rows: batch_size {batch_size} needs "
                          f"{batch_size} train rows and one validation row (give a larger "
                          f"--seq-len, or --on-long truncate{more})")
    if len(train) < batch_size or len(val) < 1:
        raise ConfigError("data", f"{spec} has {len(store)} examples, packed into {len(train)} "
                          f"train and {len(val)} validation rows of seq_len {seq_len}: "
                          f"batch_size {batch_size} needs {batch_size} train rows and one "
                          "validation row (give more data, or a smaller --batch-size)")
    if not _trains_any(store, val):
        # --train-on all, which an on-policy run refuses (it leaves no prompt), is no fix there
        fix = ("or data whose examples end with an answer (conversations whose last turn is the "
               "assistant's, or prompt/completion pairs): an on-policy run samples its own "
               "answer to what comes before it" if samples_completions else "or --train-on all")
        raise ConfigError("data", f"{spec}: the {len(val)} validation rows hold no trained "
                          "tokens (every held-out example lost its completion to truncation, "
                          f"or has none): give a larger seq_len or val_fraction, {fix}")
    meta = store.meta
    stats = DataStats(
        examples=meta["examples"], train_examples=int((~held).sum()),
        val_examples=int(held.sum()), tokens=meta["tokens"],
        trained_tokens=meta["trained_tokens"], truncated=train.truncated + val.truncated,
        dropped=dropped, skipped_files=meta["skipped_files"],
        skipped=meta["skipped"], train_rows=len(train), val_rows=len(val),
        fill=round(train.filled / max(len(train) * seq_len, 1), 4), cached=store.tokenized == 0)
    return ExampleData(store, train, val, stats)


def _last_that_trains(store: TokenStore) -> int:
    """The last example with a target that trains (a trailing user-only or system-only record
    has none: held out alone, it leaves validation nothing to measure); the last example when
    none has one (the check that follows names that)."""
    offsets = store.offsets.tolist()
    for example in range(len(store) - 1, -1, -1):
        if bool(store.trains[offsets[example] + 1:offsets[example + 1]].any()):
            return example
    return len(store) - 1


def _trains_any(store: TokenStore, rows: PackedRows) -> bool:
    """Whether some example in `rows` has a target that trains (the label of a token is the
    next token's, so an example's first token is never a target; a truncated one keeps its
    last input's target, PackedRows.rows): stops at the first."""
    for example, take in rows.segments.tolist():
        start, end = int(store.offsets[example]), int(store.offsets[example + 1])
        if bool(store.trains[start + 1:min(start + take + 1, end)].any()):
            return True
    return False


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
                             workers=workers, samples_completions=config.samples_completions)
