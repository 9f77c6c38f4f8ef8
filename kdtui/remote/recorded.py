"""A remote run's outcome as its dispatch.json recorded it, for a watch whose host is down.

A watch records the end it saw into the manifest (kdtui.remote.manifest.record_watch). A run
recorded as ended (completed, failed or cancelled) has nothing newer to say, so `kdtui watch`
of it, dashboard or headless, tries its host once: when the host cannot be reached it shows
this record at once, and says so, instead of retrying the link for minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdengine.verdict import INCONCLUSIVE, LOSS_FIELDS, VERDICT_ID, Verdict

ENDED = ("completed", "failed", "cancelled")  # a run in any of these writes nothing more


@dataclass(frozen=True)
class RecordedOutcome:
    """What the manifest holds of an ended run's end."""

    manifest: Path
    status: str  # one of ENDED
    verdict: Verdict
    last_step: int | None
    recorded_at: str | None

    def unreachable_line(self, host: str, reason: str) -> str:
        """What a watch says in place of following the run."""
        when = f" at {self.recorded_at}" if self.recorded_at else ""
        step = f" at step {self.last_step}" if self.last_step is not None else ""
        return (f"{host} cannot be reached ({reason}): the run {self.status}{step}, as "
                f"{self.manifest} recorded{when}; nothing newer can be read until the host "
                "is back")


def recorded_outcome(manifest: Path, data: dict[str, Any]) -> RecordedOutcome | None:
    """The recorded end of an ended run (None: the manifest records none, or a run that may
    still write: stopped, or not watched to its end)."""
    status, verdict = data.get("state"), data.get("verdict")
    if status not in ENDED or not isinstance(verdict, dict):
        return None
    step = data.get("engine_last_step")
    return RecordedOutcome(Path(manifest), str(status), verdict_from_record(verdict),
                           step if isinstance(step, int) else None,
                           data.get("verdict_recorded_at"))


def verdict_from_record(event: dict[str, Any]) -> Verdict:
    """The Verdict a `verdict` payload (Verdict.to_event) was written from."""
    kind = event.get("loss_kind")
    field = LOSS_FIELDS.get(kind) if isinstance(kind, str) else None
    return Verdict(str(event.get("status") or INCONCLUSIVE), str(event.get("reason") or ""),
                   initial_loss=event.get(f"initial_{field}") if field else None,
                   final_loss=event.get(f"final_{field}") if field else None,
                   final_step=event.get("final_step"), id=str(event.get("id") or VERDICT_ID),
                   loss_kind=kind)
