"""R on a cancelled run's screen: the screen of the resume shows the new part, not the end of
the one before it. Once the resumed engine's run_started arrives its stages run again (the
train stage no longer says "SIGTERM received") and the "Press R" notice is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdengine.events import read_events
from kdtui.app import KDApp
from kdtui.runs import PID_FILE
from kdtui.screens.run import RunScreen

BUDGET_S = 240.0  # generous: a tiny run takes seconds


def _offers(app: KDApp) -> list[str]:
    return [str(n.message) for n in app._notifications if str(n.message).startswith("Press R")]


def _cancel_after_first_checkpoint(run_dir: Path, inputs: dict[str, str]) -> None:
    """A tiny `kdengine train` started as the dashboard starts one (its own session, its pid
    in the pid file), SIGTERMed (the dashboard's stop) once its first checkpoint is whole."""
    run_dir.mkdir()
    argv = ["train", "--teacher", inputs["teacher"], "--student", inputs["student"], "--data",
            inputs["data"], "--run-dir", str(run_dir), "--steps", "40", "--batch-size", "2",
            "--seq-len", "32", "--eval-every", "0", "--checkpoint-every", "1", "--device", "cpu"]
    with open(run_dir / "launch.log", "ab") as log:
        engine = subprocess.Popen([sys.executable, "-m", "kdengine", *argv], stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    (run_dir / PID_FILE).write_text(f"{engine.pid}\n")
    checkpoints = run_dir / "checkpoints"
    while not any(checkpoints.glob("step-*/meta.json")):
        assert engine.poll() is None, (run_dir / "launch.log").read_text()[-2000:]
        time.sleep(0.05)
    os.killpg(engine.pid, signal.SIGSTOP)  # the signal lands mid-run whatever the load
    os.killpg(engine.pid, signal.SIGTERM)
    os.killpg(engine.pid, signal.SIGCONT)
    assert engine.wait(BUDGET_S) == 128 + signal.SIGTERM  # the engine's exit when cancelled


@pytest.mark.timeout(600)
async def test_a_resumed_run_screen_shows_the_new_part_not_the_cancelled_one(
        runs_dir, tiny_run_inputs, wait_for) -> None:
    run_dir = runs_dir / "stopped"
    _cancel_after_first_checkpoint(run_dir, tiny_run_inputs)

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.open_run(str(run_dir))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        first = app.screen
        await wait_for(pilot, lambda: bool(_offers(app)), 30)
        assert first.query_one("#stages").rows["train"].detail == "SIGTERM received"
        await pilot.press("R")
        await wait_for(pilot, lambda: app.screen is not first
                       and isinstance(app.screen, RunScreen), 30)
        screen = app.screen
        tracker = screen.query_one("#stages")
        # the resumed engine's run_started applied, and its train stage started
        await wait_for(pilot, lambda: (screen.state.run_started or {}).get("resumed_from")
                       is not None and tracker.rows["train"].state != "pending", BUDGET_S)
        train = tracker.rows["train"]
        assert train.state in ("running", "done") and "SIGTERM" not in train.detail, train
        assert _offers(app) == []
        assert screen.status_text == "resumed"
        # the resume's screen took the stopped one's place: Esc went back to that one, the
        # same run again, not to where the user came from
        assert first not in app.screen_stack
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunScreen), 10)
    started = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "run_started"]
    assert started[-1]["resumed_from"] is not None
