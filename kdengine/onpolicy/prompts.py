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
            raise ConfigError("lmbda", f"the data's {where} examples hold no prompt (every "
                              "token of them trains): on-policy runs need conversations or "
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
