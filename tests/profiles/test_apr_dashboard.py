"""An apr run in the dashboard's run screen: the stand-in's real log, followed through
AprEventsSource by the run screen's own RunFollower, fills the chart, the stages and the log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kdtui.profiles.apr.watch import AprEventsSource
from kdtui.watch import LocalRunSource

STANDIN = Path(__file__).resolve().parent / "apr_standin.py"


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app's runs dir, and a kdtui config dir of its own (nothing from the user's)."""
    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    path = Path(os.environ["KDENGINE_RUNS_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


async def wait_for(pilot: Any, condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await pilot.pause(0.1)


@dataclass
class LocalAprHandle:
    """A RunHandle for an apr run directory on this machine (its launch.log is all there is)."""

    run_dir: Path
    run_id: str = "apr-local"
    host: str = "local"
    source: Any = field(init=False)

    def __post_init__(self) -> None:
        self.source = AprEventsSource(LocalRunSource(self.run_dir))

    async def cancel(self) -> None:
        return None

    def reattach_hint(self) -> str:
        return f"kdtui watch {self.run_dir}"

    def extra(self) -> dict[str, Any]:
        return {"local_run_dir": str(self.run_dir)}


def run_standin(run_dir: Path, mode: str) -> int:
    """The stand-in apr, run for real on this machine, its output into launch.log."""
    run_dir.mkdir(parents=True)
    env = {**os.environ, "APR_STANDIN_MODE": mode, "APR_STANDIN_STEP_DELAY": "0",
           "XDG_CACHE_HOME": str(run_dir / "cache")}
    models = []
    for ref in ("hf://org/t/model.apr", "org/s"):
        out = subprocess.run([sys.executable, str(STANDIN), "pull", ref], env=env, check=True,
                             capture_output=True, text=True).stdout
        models.append(next(line.split("Path: ")[1] for line in out.splitlines()
                           if "Path: " in line).replace("\x1b[32m", "").replace("\x1b[0m", ""))
    with open(run_dir / "launch.log", "wb") as log:
        return subprocess.run([sys.executable, str(STANDIN), "distill", models[0], "--student",
                               models[1], "--epochs", "2", "--temperature", "2.0", "--alpha",
                               "0.3", "--backend", "cuda", "--output", str(run_dir / "student")],
                              env=env, stdout=log, stderr=subprocess.STDOUT).returncode


async def open_run(app_runs_dir: Path, handle: LocalAprHandle, check) -> Any:
    from kdtui.app import KDApp
    from kdtui.screens.run import RunScreen

    app = KDApp(runs_dir=app_runs_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        app.push_screen(RunScreen(handle=handle, title="apr"))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        screen = app.screen
        await wait_for(pilot, lambda: screen.state.finished is not None, 20)
        await pilot.pause(0.3)
        return check(screen)


async def test_normal_apr_run_fills_the_chart_and_passes_on_training_batch_losses(tmp_path,
                                                                                   runs_dir):
    from kdtui.widgets.loss_chart import LossChart
    from kdtui.widgets.run_panels import StageTracker, VerdictPanel

    assert run_standin(tmp_path / "ok", "normal") == 0

    def check(screen):
        assert screen.query_one(LossChart).point_count == 8
        assert screen.state.finished["status"] == "completed"
        assert screen.query_one(StageTracker).rows["train"].state == "done"
        panel = screen.query_one(VerdictPanel)
        assert panel.status == "pass"
        assert panel.verdict.loss_kind == "train_batch"
        assert "train-batch loss" in str(panel.render())
    await open_run(runs_dir, LocalAprHandle(tmp_path / "ok"), check)


async def test_panic_in_the_dashboard_is_an_error_line_and_fails_the_run(tmp_path, runs_dir):
    from kdtui.widgets.log_view import ERROR, LogView, classify
    from kdtui.widgets.run_panels import StageTracker, VerdictPanel

    assert run_standin(tmp_path / "panic", "panic") == 101

    def check(screen):
        lines = screen.query_one(LogView).lines
        panic = next(line for line in lines if "panicked at" in line)
        assert classify(panic) == ERROR
        assert screen.state.finished["status"] == "failed"
        assert screen.query_one(StageTracker).rows["train"].state == "failed"
        assert screen.query_one(VerdictPanel).status == "inconclusive"
    await open_run(runs_dir, LocalAprHandle(tmp_path / "panic"), check)
