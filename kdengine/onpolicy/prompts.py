"""The prompts of a run's data, for completions to be sampled from.

- Conversations and prompt/completion pairs (example data): an example's prompt is everything
  before its last trained span (the last assistant turn, or the completion), so the student
  writes the answer the data's own answer stands for; an example whose first token already
  trains has no prompt and is left out.
- Raw text: a window of seq_len tokens cut in two; the first seq_len - max_new_tokens tokens are
  the prompt (the student continues the text).

A prompt keeps at most seq_len - max_new_tokens tokens (its last ones: the end of a conversation
is what the answer follows), so prompt + completion always fits a training row. Step k's prompts
depend on (seed, k) only, as the samplers' batches do, so a resumed run draws the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdengine.config import ConfigError, RunConfig
from kdengine.data import BatchSampler, TokenSplits
from kdengine.data.examples import ExampleData


@dataclass
class PromptSource:
    """`train(step)`: step's batch_size prompts; `held_out(n)`: n fixed held-out prompts."""

    max_prompt: int
    batch_size: int
    seed: int
    _train: list[torch.Tensor] | BatchSampler
    _val: list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]

    def train(self, step: int) -> list[torch.Tensor]:
        if isinstance(self._train, BatchSampler):  # raw text: this step's windows, cut
            windows, _ = self._train.batch(step)
            return [row[:self.max_prompt].clone() for row in windows]
        n, first = len(self._train), (step - 1) * self.batch_size
        picks = []
        for i in range(first, first + self.batch_size):
            epoch, at = divmod(i, n)
            picks.append(self._train[int(self._permutation(epoch, n)[at])])
        return picks

    def held_out(self, count: int) -> list[torch.Tensor]:
        return list(self._val[:count])

    def _permutation(self, epoch: int, n: int) -> torch.Tensor:
        if getattr(self, "_epoch", None) != epoch:
            # a stream of its own (not the packed sampler's): on-policy steps draw prompts
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + 7919 * epoch + 1)
                                                % (2**63))
            self._epoch, self._perm = epoch, torch.randperm(n, generator=gen)
        return self._perm


def prompt_source(config: RunConfig, data: TokenSplits | ExampleData) -> PromptSource:
    """The prompts of `data` for a run that samples completions; ConfigError (one line, naming
    the field) when the data holds none."""
    max_prompt = config.seq_len - config.max_new_tokens
    if isinstance(data, ExampleData):
        train = _example_prompts(data, data.train.segments[:, 0].unique(), max_prompt)
        val = _example_prompts(data, data.val.segments[:, 0].unique(), max_prompt)
        if not train or not val:
            where = "training" if not train else "held-out"
            # a seq_kd run (lmbda 0) was never given --lmbda: name what it was given
            field, runs = ("lmbda", "on-policy") if config.lmbda > 0 else ("seq_kd", "seq_kd")
            raise ConfigError(field, f"the data's {where} examples hold no prompt (every "
                              f"token of them trains): {runs} runs need conversations or "
                              "prompt/completion pairs with --train-on completion")
        return PromptSource(max_prompt, config.batch_size, config.seed, train, val)
    sampler = BatchSampler(data.train, config.batch_size, config.seq_len, config.seed + 1)
    val_sampler = BatchSampler(data.val, config.batch_size, config.seq_len, config.seed)
    batches = -(-config.eval_prompts // config.batch_size)
    val = [row[:max_prompt].clone() for windows, _ in val_sampler.fixed_batches(batches)
           for row in windows]
    return PromptSource(max_prompt, config.batch_size, config.seed, sampler, val)


def _example_prompts(data: ExampleData, examples: torch.Tensor,
                     max_prompt: int) -> list[torch.Tensor]:
    store = data.store
    prompts = []
    for e in examples.tolist():
        start, end = int(store.offsets[e]), int(store.offsets[e + 1])
        trains = store.trains[start:end].bool()
        if not bool(trains.any()):
            continue
        last = int(trains.nonzero()[-1])
        # the last trained span starts after the last untrained token before its end
        before = (~trains[:last]).nonzero()
        if len(before) == 0:
            continue  # the example trains from its first token: no prompt
        span_start = int(before[-1]) + 1
        prompt = store.tokens[start:start + span_start].to(torch.int64)
        prompts.append(prompt[-max_prompt:].clone())
    return prompts


def holds_conversations(config: RunConfig, data: TokenSplits | ExampleData) -> bool:
    """Whether the chat template renders some of the data: conversations (`messages`), or
    prompt/completion pairs given as message lists (strings are tokenized as they stand)."""
    if not isinstance(data, ExampleData):
        return False
    kinds = data.store.meta.get("kinds") or {}
    if kinds.get("messages"):
        return True
    if not kinds.get("prompt_completion"):
        return False
    from kdengine.data.formats import find_sources, parse_fields

    try:  # the first record says which (a file mixes none: one format a file)
        for source in find_sources(config.data, config.data_split,
                                   parse_fields(config.data_fields)):
            for example in source.examples():
                if example.kind == "prompt_completion":
                    return not isinstance(example.record["prompt"], str)
    except Exception:  # noqa: BLE001 - the data stage read it already: assume the template
        return True
    return False


# a conversation to see how the template opens the assistant's turn
_PROBE = [{"role": "user", "content": "Hello?"}]
_ANSWER = "Hi there."


def _answered_probe(template: Any) -> str | None:
    """The probe conversation with the assistant's answer, as the template renders it."""
    try:
        return template.render([*_PROBE, {"role": "assistant", "content": _ANSWER}])
    except Exception:  # noqa: BLE001 - the template's own error: the data stage names it
        return None


def assistant_closing(template: Any) -> str | None:
    """What the template writes after an assistant's content (its end of turn, and anything
    after it), from the probe conversation; None when it cannot render the probe."""
    whole = _answered_probe(template)
    at = whole.rfind(_ANSWER) if whole is not None else -1
    return whole[at + len(_ANSWER):] if at >= 0 else None


def assistant_header(template: Any) -> tuple[str, bool] | None:
    """(what the template writes before an assistant's content, whether add_generation_prompt
    changes its rendering), from a probe conversation; None when it cannot render the probe."""
    try:
        bare = template.render(_PROBE)
        opened = template.render(_PROBE, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - the template's own error: the data stage names it
        return None
    whole = _answered_probe(template)
    if whole is None:
        return None
    # the common prefix of the probe without and with the answer: the user's turn
    common = next((i for i, (a, b) in enumerate(zip(bare, whole, strict=False))
                   if a != b),
                  min(len(bare), len(whole)))
    at = whole.find(_ANSWER, common)
    if at < 0:
        return None
    return whole[common:at], opened != bare


def check_generation_prompt(config: RunConfig, data: TokenSplits | ExampleData,
                            template_dir: Any) -> None:
    """Refuse (ConfigError naming lmbda or seq_kd) a chat template that writes an assistant
    header but ignores add_generation_prompt, for a run that samples completions of
    conversations: each prompt would end before the header, and the model that writes the
    completion would have to write the header itself."""
    if template_dir is None or not config.samples_completions:
        return
    from kdengine.data.chat import load_chat_template

    template = load_chat_template(template_dir)
    if template is None or not holds_conversations(config, data):
        return
    found = assistant_header(template)
    if found is None:
        return
    header, honoured = found
    if honoured or not header.strip():
        return
    field = "lmbda" if config.lmbda > 0 else "seq_kd"
    other = "--lmbda 0" if field == "lmbda" else "without --seq-kd"
    raise ConfigError(field, f"the chat template ({template.source}) renders a conversation the "
                      "same with and without add_generation_prompt, so each prompt would end "
                      f"before the assistant's header ({header.strip()!r}) and the model that "
                      "samples would have to write it: put a template that writes that header "
                      "under {% if add_generation_prompt %} in chat_template.jinja beside "
                      f"{Path(template_dir) / 'tokenizer_config.json'} (it takes priority), "
                      f"or run {other}")
