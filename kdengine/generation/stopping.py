"""Where each row of a generation ends: at an EOS token (kept), once its decoded text contains a
stop string (up to and including the token that completed it), or at max_new_tokens."""

from __future__ import annotations

from collections.abc import Callable

import torch

from kdengine.generation.sampling import SamplingConfig


class RowStops:
    """Writes each step's tokens into `tokens` [batch, max_new_tokens] (pad_id once a row has
    finished) and keeps `lengths` and `finished` per row on the device. Only stop strings need the
    host each step (to decode); EOS is tracked on the device without a sync."""

    def __init__(self, tokens: torch.Tensor, config: SamplingConfig, pad_id: int,
                 decode: Callable[[list[int]], str] | None) -> None:
        if config.stop_strings and decode is None:
            raise ValueError("stop_strings need `decode` (token ids -> text)")
        batch, device = tokens.shape[0], tokens.device
        self.tokens, self.pad_id, self.decode = tokens, pad_id, decode
        self.stop_strings = config.stop_strings
        self.lengths = torch.zeros(batch, dtype=torch.int64, device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.eos = (torch.tensor(config.eos_ids, dtype=torch.int64, device=device)
                    if config.eos_ids else None)
        self.texts: list[list[int]] = [[] for _ in range(batch)]  # host copy, for stop strings
        # A stop string ends in the newest token's text and starts at most len(s) characters
        # back: decoding this many trailing tokens covers it (with margin for tokens that
        # decode to no character alone, such as pieces of a multi-byte character).
        self.tail = 4 * max((len(s) for s in self.stop_strings), default=0) + 8
        self.can_stop = bool(config.eos_ids or config.stop_strings)

    def record(self, step: int, sampled: torch.Tensor) -> torch.Tensor:
        """Record the tokens sampled at `step` [batch]; returns what each row feeds back
        (pad_id for a row that had already finished)."""
        live = ~self.finished
        kept = torch.where(live, sampled, self.pad_id)
        self.tokens[:, step] = kept
        self.lengths += live
        if self.eos is not None:
            self.finished |= live & torch.isin(sampled, self.eos)
        if self.stop_strings:
            self._check_stop_strings(kept, live)
        return kept

    def _check_stop_strings(self, kept: torch.Tensor, live: torch.Tensor) -> None:
        stopped = []
        for row, (token, alive) in enumerate(zip(kept.tolist(), live.tolist(), strict=True)):
            if not alive:
                continue
            text = self.texts[row]
            text.append(token)
            tail = self.decode(text[-self.tail:])
            if any(s in tail for s in self.stop_strings):
                stopped.append(row)
        if stopped:
            self.finished[torch.tensor(stopped, device=self.finished.device)] = True

    def all_finished(self) -> bool:
        """(A host sync.)"""
        return bool(self.finished.all())
