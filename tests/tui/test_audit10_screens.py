"""Audit 10 of the dashboard's screens, as a person sees them: the run screen's ETA counts the
evaluations and checkpoints still to come (the step rate leaves their pauses out)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from kdtui.app import KDApp
from kdtui.screens.run import RunScreen
from kdtui.widgets.run_panels import RunProgress

T0 = 1_760_000_000.0


async def wait_until(pilot, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await pilot.pause(0.05)


def _stream(*, steps: int = 100, upto: int = 50, eval_every: int = 20, eval_s: float = 10.0,
            log_every: int = 10, checkpoint_every: int = 0, stall_s: float = 0.0,
            write_s: float = 0.0, eval0_s: float | None = None) -> list[dict[str, Any]]:
    """The events a run at 1 step/s writes up to step `upto`: a step event every `log_every`
    steps (and step 1), an evaluation of `eval_s` seconds after every `eval_every`th step, a
    checkpoint holding the loop `stall_s` after every `checkpoint_every`th (its event written a
    step later, once written), as kdengine's trainer writes them."""
    events: list[dict[str, Any]] = []
    t = T0

    def emit(type_: str, **payload: Any) -> None:
        events.append({"v": 1, "seq": len(events), "t": round(t, 3), "type": type_, **payload})

    emit("run_started", run_id="r", config={"steps": steps, "eval_every": eval_every,
                                            "checkpoint_every": checkpoint_every,
                                            "log_every": log_every})
    emit("eval", step=0, val_loss=3.0)
    pending_checkpoint: int | None = None
    for step in range(1, upto + 1):
        t += 1.0
        if step % log_every == 0 or step == 1:
            extra = {"eval0_s": eval0_s} if step == 1 and eval0_s is not None else {}
            emit("step", step=step, total_steps=steps, loss=2.0, tokens_per_s=512.0, **extra)
        if pending_checkpoint is not None:
            emit("checkpoint", step=pending_checkpoint, path="x", stall_s=stall_s,
                 write_s=write_s)
            pending_checkpoint = None
        if eval_every and step % eval_every == 0 and step < steps:
            t += eval_s
            emit("eval", step=step, val_loss=2.0)
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            t += stall_s
            pending_checkpoint = step
    return events


def _eta(events: list[dict[str, Any]]) -> float:
    """The ETA a run screen's progress panel shows after these events (as run.py feeds it)."""
    progress = RunProgress()
    for event in events:
        kind = event["type"]
        if kind == "run_started":
            progress.total = event["config"]["steps"]
            progress.expect_schedule(event["config"])
        elif kind == "step":
            progress.add_step(event)
        elif kind == "eval":
            progress.add_eval(event)
        elif kind == "checkpoint":
            progress.add_checkpoint(event)
    progress.refresh_view()
    assert progress.eta is not None
    return progress.eta


def test_eta_counts_the_evaluations_still_to_come() -> None:
    """A run at 1 step/s with a 10 s eval every 20 steps was told, at step 50 of 100, that it
    ends in 50 s: the step rate leaves the evals out. The three evals to come (60, 80 and the
    final one) take 30 s more."""
    assert abs(_eta(_stream()) - (50 + 3 * 10)) < 1.0
    # at an eval's step, its step event seen and the eval not yet ended: it is still to come
    assert abs(_eta(_stream(upto=60)[:-1]) - (40 + 3 * 10)) < 1.0
    # ended: not counted again
    assert abs(_eta(_stream(upto=60)) - (40 + 2 * 10)) < 1.0


def test_eta_measures_an_eval_at_a_step_with_no_step_event() -> None:
    """--eval-every 25 with --log-every 10: no step event at 25 marks the eval's start; where
    the step rate puts step 25 does."""
    events = _stream(eval_every=25, eval_s=6.0)
    assert abs(_eta(events) - (50 + 2 * 6)) < 1.0  # 75 and the final eval


def test_eta_uses_the_step_zero_eval_until_a_later_one_is_measured() -> None:
    events = _stream(upto=10, eval0_s=4.0, eval_s=4.0)
    assert abs(_eta(events) - (90 + 5 * 4)) < 1.0  # 20, 40, 60, 80, final


def test_eta_counts_the_checkpoint_pauses_still_to_come() -> None:
    """A checkpoint holding the loop 5 s every 20 steps, and the final one the run waits for
    (its hold and its write)."""
    events = _stream(eval_every=0, checkpoint_every=20, stall_s=5.0, write_s=2.0)
    # still to come: 60, 80 (5 s each), the final (5 + 2 s); the final eval unmeasured here
    assert abs(_eta(events) - (50 + 2 * 5 + 7)) < 1.0


async def test_run_screen_eta_counts_the_evaluations_to_come(runs_dir, wait_for) -> None:
    """The same through the run screen reading a run directory."""
    run = runs_dir / "evals"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in _stream()))
    (run / "launch.log").write_text("")
    (run / "engine.pid").write_text(f"{os.getpid()}\n")  # a run still going
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.query_one(RunProgress).step >= 50)
        await pilot.pause(0.2)
        progress = app.screen.query_one(RunProgress)
        assert progress.eta is not None and abs(progress.eta - 80) < 1.0, progress.eta


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_demo_presets_toast_leaves_the_cache_dialog_whole(runs_dir, size) -> None:
    """F2 then F4: the demo preset's toast sat over the cache dialog's bottom border (and, at
    80x24, its buttons' row). The dialog now opens clear of any toast."""
    from textual.widgets._toast import Toast

    from kdtui.screens.cache_teacher import CacheTeacherDialog

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=size, notifications=True) as pilot:  # toasts drawn
        await wait_until(pilot, lambda: getattr(app.screen, "form_ready", False))
        await pilot.press("f2")
        await pilot.pause(0.2)
        assert app.screen.query(Toast), "the demo preset's toast"
        await pilot.press("f4")
        await wait_until(pilot, lambda: isinstance(app.screen, CacheTeacherDialog))
        await pilot.pause(0.3)
        dialog = app.screen.query_one("#cache-dialog").region
        covered = [t.region for t in app.screen.query(Toast) if t.region.overlaps(dialog)]
        assert not covered, (dialog, covered)
