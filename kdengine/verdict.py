"""The smoke verdict F-DISTILL-SMOKE-001, computed from a run's events.

Pass: the held-out validation loss at the end is below the one at step 0. Fail: it is not.
Inconclusive, with the reason: an eval is missing, the run crashed or was cancelled, or a loss was
NaN/inf. The engine writes it as its last-but-one event; `kdengine verdict RUN_DIR` and the
dashboard recompute it from the same events, so all three always agree. Imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from kdengine import events as ev

VERDICT_ID = "F-DISTILL-SMOKE-001"
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
EXIT_CODES = {PASS: 0, FAIL: 1, INCONCLUSIVE: 2}


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    initial_val_loss: float | None = None
    final_val_loss: float | None = None
    final_step: int | None = None
    id: str = VERDICT_ID

    @property
    def delta(self) -> float | None:
        if self.initial_val_loss is None or self.final_val_loss is None:
            return None
        return self.final_val_loss - self.initial_val_loss

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_event(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta}

    def summary(self) -> str:
        head = f"{self.id} {self.status.upper()}"
        if self.initial_val_loss is not None and self.final_val_loss is not None:
            head += (f": val loss {self.initial_val_loss:.4f} (step 0) -> "
                     f"{self.final_val_loss:.4f} (step {self.final_step}), "
                     f"delta {self.delta:+.4f}")
        return f"{head}. {self.reason}"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def verdict_from_events(events: Iterable[dict[str, Any]]) -> Verdict:
    evals: list[dict[str, Any]] = []
    finished: dict[str, Any] | None = None
    bad_loss: dict[str, Any] | None = None
    last_step = 0
    for event in events:
        kind = event.get("type")
        if kind == ev.STEP:
            last_step = max(last_step, int(event.get("step", 0)))
            if bad_loss is None and not _finite(event.get("loss")):
                bad_loss = event
        elif kind == ev.EVAL:
            evals.append(event)
            if bad_loss is None and not _finite(event.get("val_loss")):
                bad_loss = event
        elif kind == ev.RUN_FINISHED:
            finished = event

    initial = next((e for e in evals if e.get("step") == 0), None)
    later = [e for e in evals if e.get("step", 0) > 0]
    final = later[-1] if later else None
    init_loss = initial.get("val_loss") if initial else None
    final_loss = final.get("val_loss") if final else None
    known = dict(
        initial_val_loss=init_loss if _finite(init_loss) else None,
        final_val_loss=final_loss if _finite(final_loss) else None,
        final_step=final.get("step") if final else None,
    )

    if bad_loss is not None:
        value = bad_loss.get("loss", bad_loss.get("val_loss"))
        return Verdict(INCONCLUSIVE, f"the loss became {value} at step {bad_loss.get('step')}",
                       **known)
    if finished is None:
        return Verdict(INCONCLUSIVE, f"the run has not finished (last step {last_step})", **known)
    status = finished.get("status")
    if status != "completed":
        why = finished.get("error") or f"exit code {finished.get('exit_code')}"
        return Verdict(INCONCLUSIVE, f"the run {status} at step {last_step}: {why}", **known)
    if initial is None:
        return Verdict(INCONCLUSIVE, "no validation loss at step 0", **known)
    if final is None:
        return Verdict(INCONCLUSIVE, "no validation loss after step 0", **known)
    if final_loss < init_loss:
        return Verdict(PASS, "the held-out validation loss went down", **known)
    return Verdict(FAIL, "the held-out validation loss did not go below its step-0 value",
                   **known)


def verdict_for_run(run_dir: str) -> Verdict:
    return verdict_from_events(ev.iter_run_events(run_dir))
