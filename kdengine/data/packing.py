"""Packed rows of tokenized examples, with the boundaries masked attention needs.

The batch format (agreed with the model side, kdengine/models/decoder.py):

    input_ids     [batch, seq_len] int64   the tokens of one or more whole examples, packed
    labels        [batch, seq_len] int64   the next token to predict, or IGNORE_INDEX (-100)
                                           where nothing trains (prompts, padding, and the last
                                           token of every example: no target crosses examples)
    position_ids  [batch, seq_len] int64   0, 1, 2, ... restarting at 0 at each example start;
                                           padding at a row's end continues the last example's
                                           count (its labels are IGNORE_INDEX)

An example starts where position_ids == 0. The model attends causally *within* each example
only (block-diagonal causal mask: query i sees key j iff j <= i and no example starts in
(j, i]), and uses position_ids for the rotary positions, as transformers' packed
("padding-free") collators and flash-attn's varlen kernels do. Rows are built once and stored
(kdengine.data.store); this module only lays examples into rows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import NamedTuple

import torch

from kdengine.config import ON_LONG, ConfigError
from kdengine.data import refuse_changed_position
from kdengine.data.store import TokenStore
from kdengine.losses import IGNORE_INDEX


class PackedBatch(NamedTuple):
    input_ids: torch.Tensor  # [batch, seq_len] int64
    labels: torch.Tensor  # [batch, seq_len] int64, IGNORE_INDEX where nothing trains
    position_ids: torch.Tensor  # [batch, seq_len] int64, 0 at each example's first token


@dataclass
class PackedRows:
    """Examples of a store laid into rows of `seq_len` tokens, best fit, longest first.

    `segments` is [n, 2] int64 (example index, tokens taken), grouped by row: row r is
    segments[row_starts[r]:row_starts[r + 1]]. Nothing is copied: a row is gathered from the
    mapped store when a batch asks for it."""

    store: TokenStore
    seq_len: int
    segments: torch.Tensor
    row_starts: torch.Tensor
    truncated: int
    dropped: int
    untrained: int = 0  # examples left out before packing as training nothing (examples.py)

    def __len__(self) -> int:
        return len(self.row_starts) - 1

    @property
    def filled(self) -> int:
        """Tokens in rows that are not padding."""
        return int(self.segments[:, 1].sum()) if len(self.segments) else 0

    def rows(self, indices: torch.Tensor | list[int]) -> PackedBatch:
        """The rows at `indices` as a batch (padding: eos ids, no labels, positions counting
        on from the row's last example). Gathered with a few vectorized index operations, not
        a loop over examples: rows of 8k tokens may hold hundreds of short chats."""
        rows = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        shape = (len(rows), self.seq_len)
        inputs = torch.full(shape, self.store.meta.get("eos_id", 0), dtype=torch.int64)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.int64)
        positions = torch.zeros(shape, dtype=torch.int64)
        counts = self.row_starts[rows + 1] - self.row_starts[rows]  # examples in each row
        segment = _ranges(self.row_starts[rows], counts)
        example, take = self.segments[segment, 0], self.segments[segment, 1]
        row = torch.repeat_interleave(torch.arange(len(rows)), counts)
        # where each example starts in its row: the takes before it in the same row
        before = torch.cumsum(take, 0) - take
        first = torch.cumsum(counts, 0) - counts
        column = before - torch.repeat_interleave(before[first[counts > 0]], counts[counts > 0])
        # one entry per token: its example's segment, and k, its position in the example
        per_token = torch.repeat_interleave(torch.arange(len(take)), take)
        k = torch.arange(int(take.sum())) - torch.repeat_interleave(before, take)
        source = self.store.offsets[example][per_token] + k
        at_row, at_col = row[per_token], column[per_token] + k
        inputs[at_row, at_col] = self.store.tokens[source].to(torch.int64)
        positions[at_row, at_col] = k
        # the next token is a target when it is inside the same example and it trains (a
        # truncated example keeps the target of its last input)
        has_next = source + 1 < self.store.offsets[example + 1][per_token]
        nxt = (source + 1)[has_next]
        keep = self.store.trains[nxt].bool()
        labels[at_row[has_next][keep], at_col[has_next][keep]] = \
            self.store.tokens[nxt[keep]].to(torch.int64)
        used = torch.zeros(len(rows), dtype=torch.int64).index_add_(0, row, take)
        col = torch.arange(self.seq_len).unsqueeze(0)
        last = positions.gather(1, (used - 1).clamp(min=0).unsqueeze(1))
        last = torch.where(used.unsqueeze(1) > 0, last + 1, 0)  # padding counts on from it
        positions = torch.where(col >= used.unsqueeze(1), last + col - used.unsqueeze(1),
                                positions)
        return PackedBatch(inputs, labels, positions)


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """cat(arange(s, s + c) for s, c in zip(starts, counts)), without a Python loop."""
    offsets = torch.cumsum(counts, 0) - counts
    return torch.repeat_interleave(starts - offsets, counts) + torch.arange(int(counts.sum()))


def pack_rows(store: TokenStore, examples: torch.Tensor, seq_len: int,
              on_long: str = "truncate") -> PackedRows:
    """Lay `examples` (indices into the store) into rows: longest first, each into the row
    with the least room that fits it (best fit decreasing: rows come out nearly full, and the
    same examples always give the same rows). An example longer than seq_len is cut to
    seq_len (`truncate`) or left out (`drop`); both are counted."""
    if on_long not in ON_LONG:
        raise ConfigError("on_long", f"must be one of {', '.join(ON_LONG)}")
    lengths = store.lengths()[examples]
    too_long = lengths > seq_len
    if on_long == "drop":
        examples, lengths = examples[~too_long], lengths[~too_long]
    takes = lengths.clamp(max=seq_len)
    order = torch.argsort(-takes, stable=True)
    room: list[tuple[int, int]] = []  # (free tokens, row) of rows with room, sorted
    members: list[list[int]] = []  # positions in `order` of each row's examples
    for k, take in enumerate(takes[order].tolist()):
        if take == 0:
            continue
        at = bisect.bisect_left(room, (take, -1))
        if at == len(room):
            members.append([k])
            free, row = seq_len - take, len(members) - 1
        else:
            free, row = room.pop(at)
            members[row].append(k)
            free -= take
        if free:
            bisect.insort(room, (free, row))
    picked = torch.tensor([k for row in members for k in row], dtype=torch.int64)
    chosen = order[picked] if len(picked) else picked
    segments = torch.stack([examples[chosen], takes[chosen]], 1) if len(chosen) else \
        torch.empty(0, 2, dtype=torch.int64)
    row_starts = torch.zeros(len(members) + 1, dtype=torch.int64)
    if members:
        row_starts[1:] = torch.tensor([len(m) for m in members]).cumsum(0)
    return PackedRows(store, seq_len, segments, row_starts,
                      truncated=int(too_long.sum()) if on_long == "truncate" else 0,
                      dropped=int(too_long.sum()) if on_long == "drop" else 0)


class PackedSampler:
    """BatchSampler's interface over packed rows: step k's batch depends on (seed, k) only
    (rows in a fresh permutation each epoch), so resume needs no data cursor; `batch` returns
    a PackedBatch (input_ids, labels, position_ids)."""

    def __init__(self, rows: PackedRows, batch_size: int, seed: int) -> None:
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.seq_len = rows.seq_len

    def position(self, step: int) -> dict[str, object]:
        """The data position after `step` optimizer steps, for a checkpoint."""
        # examples that train nothing were packed before they were left out: a checkpoint of
        # such data, from then, has other rows (the same store), and is refused
        return {"next_step": step + 1, "seed": self.seed, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "stream": self._stream(self.rows.store.content)}

    def _stream(self, store: str) -> str:
        left_out = f":-{self.rows.untrained}" if self.rows.untrained else ""
        return f"{store}:{len(self.rows)}{left_out}"

    def check_position(self, saved: dict[str, object], step: int) -> None:
        """Refuse to resume on data or sampling that differ from the checkpoint's. The stream
        is the store's content; a checkpoint written before named the store's key, which
        still matches the same store."""
        now = self.position(step)
        if saved.get("stream") == self._stream(self.rows.store.key):
            now["stream"] = saved["stream"]
        refuse_changed_position(saved, now)

    def batch(self, step: int) -> PackedBatch:
        n = len(self.rows)
        first = step * self.batch_size
        picks = []
        for i in range(first, first + self.batch_size):
            epoch, at = divmod(i, n)
            picks.append(int(self._permutation(epoch)[at]))
        return self.rows.rows(picks)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_epoch", None) != epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
            self._epoch, self._perm = epoch, torch.randperm(len(self.rows), generator=gen)
        return self._perm

    def fixed_batches(self, count: int) -> list[PackedBatch]:
        """Up to `count` batches of the rows in order, always the same: the held-out set. Every
        batch is full (batch_size rows: the same shapes as training, for compiled graphs and
        torchrun's split by rows); the last wraps around to the first rows when the rows run
        out before it is full."""
        n, size = len(self.rows), self.batch_size
        wanted = -(-min(count * size, n) // size)  # batches to show every row once, at most count
        return [self.rows.rows([(b * size + i) % n for i in range(size)]) for b in range(wanted)]
