"""The rows a teacher cache is keyed to, and samplers that say which rows each batch holds.

A cache stores the teacher's targets per row position, so the data must come as fixed rows:

- example data (conversations, prompt/completion): the packed rows of kdengine.data.packing,
  exactly as a live run trains on them; the sampler picks the same rows as PackedSampler, so a
  cached run and a live run see the same batches;
- raw text (files, shards, the demo): a grid of windows, row i = stream[i*seq_len :
  i*seq_len + seq_len + 1] (inputs and the labels shifted by one: every token is a target once),
  in a fresh permutation each epoch. A live raw-text run draws windows at random offsets
  instead; the grid is what makes "score the data once" possible (a cache of every random
  window would be seq_len times the data).

Neither depends on the run's seed, batch_size or steps: one cache serves a sweep over them.
Rows are numbered train first, then validation (`offset`), in one space the cache shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from kdengine.data import Stream, TokenSplits, TokenStream, refuse_changed_position
from kdengine.data.examples import ExampleData
from kdengine.data.packing import PackedRows


class CachedBatch(NamedTuple):
    input_ids: torch.Tensor  # [batch, seq_len] int64
    labels: torch.Tensor  # [batch, seq_len] int64
    position_ids: torch.Tensor | None  # packed rows: 0 at each example's start; windows: None
    rows: torch.Tensor  # [batch] int64: the cache's row of each batch row


class WindowRows:
    """Raw text as a grid of windows of seq_len + 1 tokens, hop seq_len."""

    def __init__(self, stream: Stream, seq_len: int) -> None:
        self.stream, self.seq_len = stream, seq_len
        self.count = max((len(stream) - 1) // seq_len, 0)

    def __len__(self) -> int:
        return self.count

    def identity(self) -> str:
        from kdengine.data import stream_fingerprint

        return f"windows:{stream_fingerprint(self.stream)}"

    def rows(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor, None]:
        starts = torch.as_tensor(indices, dtype=torch.int64).reshape(-1) * self.seq_len
        if isinstance(self.stream, TokenStream):
            rows = self.stream.windows(starts, self.seq_len + 1)
        else:
            rows = self.stream[starts.unsqueeze(1) + torch.arange(self.seq_len + 1)]
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous(), None


class PackedRowView:
    """PackedRows under the same interface as WindowRows."""

    def __init__(self, packed: PackedRows) -> None:
        self.packed, self.seq_len = packed, packed.seq_len

    def __len__(self) -> int:
        return len(self.packed)

    def identity(self) -> str:
        return f"packed:{self.packed.store.key}:{len(self.packed)}"

    def rows(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, ...]:
        return tuple(self.packed.rows(indices))


RowView = WindowRows | PackedRowView


def cache_rows(data: TokenSplits | ExampleData, seq_len: int) -> tuple[RowView, RowView]:
    """(train, validation) rows of a run's data, as the cache numbers them."""
    if isinstance(data, ExampleData):
        return PackedRowView(data.train), PackedRowView(data.val)
    return WindowRows(data.train, seq_len), WindowRows(data.val, seq_len)


class RowSampler:
    """Step k's batch is a function of (seed, k): rows in a fresh permutation each epoch (the
    same picks as kdengine.data.packing.PackedSampler), each batch with its cache rows."""

    def __init__(self, view: RowView, batch_size: int, seed: int, offset: int = 0,
                 check: Callable[[CachedBatch], None] | None = None) -> None:
        self.view, self.batch_size, self.seed, self.offset = view, batch_size, seed, offset
        self.check = check  # the cache's: are these the tokens its targets were computed on?
        self.seq_len = view.seq_len
        self._epoch: int | None = None
        self._perm = torch.empty(0, dtype=torch.int64)

    def position(self, step: int) -> dict[str, object]:
        """The data position after `step` optimizer steps, for a checkpoint."""
        return {"next_step": step + 1, "seed": self.seed, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "stream": f"cache-rows:{len(self.view)}"}

    def check_position(self, saved: dict[str, object], step: int) -> None:
        refuse_changed_position(saved, self.position(step))

    def picks(self, step: int) -> list[int]:
        n, first = len(self.view), step * self.batch_size
        out = []
        for i in range(first, first + self.batch_size):
            epoch, at = divmod(i, n)
            out.append(int(self._permutation(epoch)[at]))
        return out

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
            self._epoch, self._perm = epoch, torch.randperm(len(self.view), generator=gen)
        return self._perm

    def batch(self, step: int) -> CachedBatch:
        return self._batch(self.picks(step))

    def _batch(self, picks: list[int]) -> CachedBatch:
        input_ids, labels, positions = self.view.rows(picks)
        batch = CachedBatch(input_ids, labels, positions,
                            torch.tensor(picks, dtype=torch.int64) + self.offset)
        if self.check is not None:
            self.check(batch)
        return batch

    def fixed_batches(self, count: int) -> list[CachedBatch]:
        """Up to `count` full batches of the rows in order (the held-out set; PackedSampler's
        rule: the last wraps around to the first rows when the rows run out)."""
        n, size = len(self.view), self.batch_size
        wanted = -(-min(count * size, n) // size)
        return [self._batch([(b * size + i) % n for i in range(size)]) for b in range(wanted)]


def row_hash(input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """[rows] int64: what the teacher saw in each row (its ids, and positions where packed), as
    a position-weighted wrapping sum. The cache stores it per row; a run compares it with every
    batch, so targets can never be applied to other tokens than they were computed on."""
    ids = input_ids.to(torch.int64)
    weights = torch.arange(1, ids.shape[-1] + 1, dtype=torch.int64, device=ids.device)
    weights = weights * 2654435761 + 97
    total = ((ids + 1) * weights).sum(-1)
    if position_ids is not None:
        total = total + ((position_ids.to(torch.int64) + 7) * (weights * 31 + 11)).sum(-1)
    return total


def describe_rows(train: RowView, val: RowView) -> dict[str, Any]:
    return {"layout": "packed" if isinstance(train, PackedRowView) else "windows",
            "train": len(train), "val": len(val), "seq_len": train.seq_len}
