"""How the next token is chosen from the logits: greedy, or a draw after temperature, top-k and
top-p (in that order, as transformers' logits warpers), all randomness from one generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """max_new_tokens: tokens to generate at most per row. temperature: 0.0 = greedy (argmax).
    top_p: nucleus (1.0 = off). top_k: 0 = off. eos_ids: a row stops after emitting one (the EOS
    token is kept in the completion). stop_strings: a row stops once its decoded completion
    contains one (needs `decode`). vocab_limit: ids at or above it are never drawn (a teacher
    whose embedding is padded beyond the student's vocab writes only ids the student has)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    eos_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    vocab_limit: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), not {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), not {self.top_k}")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings must not contain an empty string")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def warp_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Float32 logits [batch, vocab] after temperature, top-k and top-p: the tokens that may not be
    drawn are -inf. Same rules as transformers' TemperatureLogitsWarper, TopKLogitsWarper (ties
    with the k-th score are kept) and TopPLogitsWarper (the smallest set whose probability
    exceeds top_p, at least one token)."""
    scores = logits.float()
    if config.temperature != 1.0:
        scores = scores / config.temperature
    if config.top_k > 0 and config.top_k < scores.shape[-1]:
        kth = torch.topk(scores, config.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        ascending, order = torch.sort(scores, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1.0 - config.top_p
        drop[..., -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def next_tokens(logits: torch.Tensor, config: SamplingConfig,
                generator: torch.Generator) -> torch.Tensor:
    """The next token of each row [batch] int64 from its logits [batch, vocab]."""
    if config.vocab_limit is not None and config.vocab_limit < logits.shape[-1]:
        logits = logits[:, :config.vocab_limit]
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = warp_logits(logits, config).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
