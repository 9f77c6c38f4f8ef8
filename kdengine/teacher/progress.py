"""The score stage's progress as a cache job's watcher sees it: rows scored, tokens/s and the
ETA in a `step` event every ~2 s between shard ends, not only once a shard (16k rows on the demo,
over a minute) is written. It reads only what the writer has on the host already (the batch's
NLL, which the writer syncs for anyway): no extra device sync."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kdengine.durations import format_seconds

PROGRESS_EVERY_S = 2.0  # the least time between two progress events (and at most one a batch)
RATE_WINDOW_S = 60.0  # tokens/s and the ETA: over the last minute of scoring


class ScoreProgress:
    """Rows scored by this attempt and the rows before it, the teacher's CE on this attempt's
    rows, and the rate: tokens a second over the last RATE_WINDOW_S of scoring, counted from
    this attempt's first batch's end (its warm-up, a CUDA teacher's compile, would otherwise hold
    the rate down and the ETA up for minutes; the first batch alone until a second one ends).
    A window, not the whole attempt: on a demo job whose CPU was shared and then freed, the
    average since the start said 10k tokens/s and a 4-minute ETA while the job ran at 18k.
    Shard writes fall inside the measured time, so the ETA counts the writes still to come."""

    def __init__(self, *, total_rows: int, seq_len: int, shards: int, rows_written: int,
                 every_s: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total_rows, self.seq_len, self.shards = total_rows, seq_len, shards
        self.rows_written = rows_written  # in finished shards: what a stopped job keeps
        self.rows = rows_written  # scored, kept or not
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.clock = clock
        self.nll, self.count = 0.0, 0
        self.started = clock()
        self.tokens = 0
        # (time, tokens scored) from the first batch's end on, one a progress event: the window
        self.marks: deque[tuple[float, int]] = deque()
        self.last_event = self.started

    def batch(self, rows: int, tokens: int, nll: float, count: int) -> None:
        self.rows += rows
        self.tokens += tokens
        self.nll += nll
        self.count += count
        if not self.marks:
            self.marks.append((self.clock(), self.tokens))

    def shard_written(self) -> None:
        self.rows_written = self.rows

    def due(self) -> bool:
        """A progress event is due: PROGRESS_EVERY_S since the last event (a shard end's too)."""
        return self.clock() - self.last_event >= self.every_s

    @property
    def tokens_per_s(self) -> float:
        now = self.clock()
        while len(self.marks) > 1 and now - self.marks[1][0] >= RATE_WINDOW_S:
            self.marks.popleft()  # the oldest kept is the last one a window or more back
        if self.marks and self.tokens > self.marks[0][1] and now > self.marks[0][0]:
            return (self.tokens - self.marks[0][1]) / (now - self.marks[0][0])
        return self.tokens / max(now - self.started, 1e-9)

    @property
    def teacher_ce(self) -> float:
        return self.nll / max(self.count, 1)

    def fields(self, shard: int) -> dict[str, Any]:
        """The `step` event's fields (a shard end adds `write_s`)."""
        self.last_event = self.clock()
        rate = self.tokens_per_s
        if self.marks:
            self.marks.append((self.last_event, self.tokens))
        left = (self.total_rows - self.rows) * self.seq_len / max(rate, 1e-9)
        ce = self.teacher_ce
        return {"step": self.rows, "total_steps": self.total_rows, "loss": ce, "ce": ce,
                "tokens_per_s": rate, "eta_s": round(left, 1), "shard": shard,
                "shards": self.shards, "rows_written": self.rows_written}

    def line(self, fields: dict[str, Any], write_s: float | None = None) -> str:
        """The launch.log line of a step event's fields: 'shard 1/3: 2,048/36,707 rows (6%),
        ...' between shard ends (78 characters on the demo: one line of the dashboard's log at
        80 columns), 'shard 1/3 written: ...' at one."""
        shard = f"shard {fields['shard'] + 1}/{fields['shards']}"
        head = shard if write_s is None else f"{shard} written"
        share = fields["step"] / max(fields["total_steps"], 1)
        return (f"{head}: {fields['step']:,}/{fields['total_steps']:,} rows ({share:.0%}), "
                f"teacher ce={fields['ce']:.4f}, tok/s={fields['tokens_per_s']:,.0f}, "
                f"eta {format_seconds(max(fields['eta_s'], 0.0))}"
                + (f" (write {write_s:.1f}s)" if write_s is not None else ""))
