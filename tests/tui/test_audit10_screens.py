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


def test_eta_does_not_count_the_step_zero_evals_time_for_the_later_ones() -> None:
    """The step-0 eval also scores the teacher's val CE and warms up: a demo run's took 26.7 s
    and its step-100 eval 2.0 s. Counted for the five evals to come, it put 2m13s into an ETA
    of 6m29s where the evals took some 10 s. Until a later eval is measured, the evals to come
    count nothing; then at the measured time."""
    assert abs(_eta(_stream(upto=10, eval0_s=27.0, eval_s=2.0)) - 90) < 1.0
    assert abs(_eta(_stream(upto=30, eval0_s=27.0, eval_s=2.0)) - (70 + 4 * 2)) < 1.0


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


STAND_IN = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


class SlowStartLauncher:
    """The local launcher's start as a user meets it: the engine process spawned (a stand-in
    that waits for SIGTERM), then the early-exit window (kdtui.launch.local waits ~1 s to see
    whether the engine refuses its arguments) before the handle comes back."""

    stages = ("check", "start")

    def __init__(self, run_dir) -> None:
        self.run_dir = run_dir
        self.process = None
        self.started = False  # start() has returned its handle

    async def start(self, on_stage):
        import asyncio
        import subprocess
        import sys

        from kdtui.launch.base import StageUpdate
        from kdtui.launch.local import LocalRunHandle

        on_stage(StageUpdate("check", "done", 0.1, "inputs ok"))
        self.process = subprocess.Popen([sys.executable, "-c", STAND_IN],
                                        stdout=subprocess.PIPE, start_new_session=True)
        (self.run_dir / "engine.pid").write_text(f"{self.process.pid}\n")
        await asyncio.sleep(0.8)
        on_stage(StageUpdate("start", "done", 0.8, f"pid {self.process.pid}"))
        self.started = True
        return LocalRunHandle(run_id=self.run_dir.name, run_dir=str(self.run_dir),
                              process=self.process)


async def test_a_run_left_at_once_after_start_is_still_the_dashboards(runs_dir, write_run):
    """Start, then Esc at once (back to the form before the engine's start was confirmed): the
    engine ran on, but the dashboard had lost it: Ctrl+Q quit without the Quit dialog and left
    the run going unasked. The run is now the dashboard's as soon as its start completes,
    whichever screen shows: Ctrl+Q asks about it, and its Stop ends it."""
    from kdtui.screens.dialogs import QuitScreen

    run = write_run(runs_dir / "left", steps=200, upto=0, finished=False)
    launcher = SlowStartLauncher(run)
    app = KDApp(runs_dir=runs_dir)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: getattr(app.screen, "form_ready", False))
            app.show_run(launcher=launcher, title="left on local")
            await wait_until(pilot, lambda: launcher.process is not None)
            await pilot.press("escape")  # back to the form while the start is confirmed
            await wait_until(pilot, lambda: not isinstance(app.screen, RunScreen))
            await wait_until(pilot, lambda: launcher.started)  # the start's window has passed
            await pilot.pause(0.2)  # the dashboard takes the handle start() returned
            assert [h.run_id for h in app.running_owned()] == ["left"]
            await pilot.press("ctrl+q")
            await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen))
            await pilot.click("#stop")
            await pilot.pause()
        assert launcher.process.wait(timeout=20) == 0
    finally:
        if launcher.process is not None and launcher.process.poll() is None:
            launcher.process.kill()
