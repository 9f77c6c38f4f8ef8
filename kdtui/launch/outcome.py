"""What a watch saw of a run, reduced to what its evidence keeps: the one code path by which the
dashboard and headless watch alike record a run's end (verdict, run_finished, the engine's last
step, its newest checkpoint, or that the engine died without a word) into a remote run's
dispatch.json, and decide whether it can be resumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdengine.events import CHECKPOINT, RUN_FINISHED, RUN_STARTED, STEP

RESUMABLE = ("failed", "cancelled", "stopped")  # ended without completing


@dataclass
class WatchedRun:
    """Fed every event a watch reads (in order, each once); a resumed run's later parts reset
    what its earlier part's end said."""

    finished: dict[str, Any] | None = None
    last_step: int | None = None  # the newest step event's step
    checkpoint_step: int | None = None  # the newest checkpoint's step
    resumed_from: list[int] = field(default_factory=list)
    gone: bool = False  # the engine died without run_finished
    log_tail: list[str] = field(default_factory=list)  # its last log lines, when it died so

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        step = event.get("step")
        if kind == STEP and isinstance(step, int):
            self.last_step = step if self.last_step is None else max(self.last_step, step)
        elif kind == CHECKPOINT and isinstance(step, int):
            self.checkpoint_step = step
        elif kind == RUN_FINISHED:
            self.finished = event
        elif kind == RUN_STARTED:
            self.finished = None
            self.gone = False
            if event.get("resumed_from") is not None:
                self.resumed_from.append(int(event["resumed_from"]))

    @property
    def engine_last_step(self) -> int | None:
        """The engine's own last step: run_finished's `steps` (a run logging every 5 steps
        that ends at 149 logged 145 last), else the newest step event."""
        steps = (self.finished or {}).get("steps")
        return steps if isinstance(steps, int) else self.last_step

    @property
    def status(self) -> str | None:
        """completed | failed | cancelled | stopped (died without a word) | None (going)."""
        if self.finished is not None:
            return str(self.finished.get("status") or "completed")
        return "stopped" if self.gone else None

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE and self.checkpoint_step is not None

    def verdict_events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`events` for kdengine.verdict, whose 'the run cancelled at step N' names the newest
        step event: the last one again at the engine's own last step, so N is that step.
        (kdengine.verdict could read run_finished's `steps` itself: then this goes.)"""
        last = self.engine_last_step
        if self.finished is None or last is None or self.last_step is None or \
                last <= self.last_step:
            return events
        step_event = next((e for e in reversed(events) if e.get("type") == STEP), None)
        return [*events, {**step_event, "step": last}] if step_event else events

    def record(self, manifest: Any, verdict: dict[str, Any]) -> None:
        """Into the run's dispatch.json, when it has one (a local run's evidence is its dir)."""
        if manifest is None:
            return
        from kdtui.remote.manifest import record_watch

        record_watch(manifest, verdict=verdict, finished=self.finished,
                     engine_last_step=self.engine_last_step,
                     checkpoint_step=self.checkpoint_step, status=self.status,
                     log_tail=self.log_tail)


class EngineLiveness:
    """Whether the engine a quiet run belongs to is gone without a word (killed, OOM, the box
    rebooted): a local handle's pid is asked at once, a remote one's through the agent once
    every REMOTE_CHECK_S of quiet (an SSH exec each), so a dead remote engine is noticed within
    seconds, not left looking like a stalled run."""

    LOCAL_QUIET_S = 1.0
    REMOTE_CHECK_S = 5.0

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._last_check = 0.0

    async def gone(self, quiet_for: float) -> bool:
        import time

        is_alive = getattr(self.handle, "is_alive", None)
        if is_alive is not None:
            return quiet_for > self.LOCAL_QUIET_S and not is_alive()
        engine_alive = getattr(self.handle, "engine_alive", None)
        now = time.monotonic()
        if engine_alive is None or quiet_for < self.REMOTE_CHECK_S or \
                now - self._last_check < self.REMOTE_CHECK_S:
            return False
        self._last_check = now
        try:
            return not await engine_alive()
        except Exception:  # the link is down: the link state says so; the engine may live
            return False

    async def last_lines(self, n: int = 8) -> list[str]:
        """The log's last non-empty lines (what the engine said before it died)."""
        tail = getattr(self.handle, "log_tail", None)
        if tail is not None:
            try:
                lines = await tail(n * 2)
            except Exception:
                lines = []
        else:
            from pathlib import Path

            from kdengine.events import LOG_FILE

            run_dir = getattr(getattr(self.handle, "source", None), "run_dir", None)
            try:
                lines = Path(run_dir, LOG_FILE).read_text(errors="replace").splitlines()
            except (OSError, TypeError):
                lines = []
        return [line for line in lines if line.strip()][-n:]
