"""A launch that fails: the stage it failed in stops its clock and shows failed, and the verdict
panel says the launch failed (never PENDING), however the launcher fails: an exception with no
stage update for it (a local run dir that cannot be made), or after its own `failed` update
(a remote stage, `kdtui.remote.stages.StageRunner`)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from kdengine.verdict import CACHE_JOB
from kdtui.app import KDApp
from kdtui.launch.base import StageUpdate
from kdtui.screens.run import RunScreen
from kdtui.widgets import run_panels
from kdtui.widgets.cache_job import CacheJobPanel
from kdtui.widgets.run_panels import StageTracker, VerdictPanel


class FailingLauncher:
    """check done, start running, then the launch raises: `failed_update` says whether the
    launcher reports the failed stage itself first (the remote stages do; a local `mkdir` that
    raises does not)."""

    stages = ("check", "start")

    def __init__(self, error: Exception, failed_update: bool = False, job: str = "") -> None:
        self.error, self.failed_update, self.job = error, failed_update, job

    async def start(self, on_stage: Callable[[StageUpdate], None]):
        on_stage(StageUpdate("check", "done", 0.4, "inputs ok"))
        on_stage(StageUpdate("start", "running", host="local"))
        if self.failed_update:
            on_stage(StageUpdate("start", "failed", 0.2, str(self.error), host="gpu-box"))
        raise self.error


@pytest.mark.parametrize("failed_update", [False, True], ids=["raises", "reports-then-raises"])
async def test_a_failed_launch_stops_the_stage_clock_and_says_so(wait_for, failed_update):
    app = KDApp()
    error = NotADirectoryError(20, "Not a directory", "/tmp/afile/z2")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.push_screen(RunScreen(launcher=FailingLauncher(error, failed_update),
                                  title="z2 on local"))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.launch_failed is not None)
        await pilot.pause(0.3)
        screen = app.screen
        tracker = screen.query_one(StageTracker)
        start = tracker.rows["start"]
        assert start.state == "failed" and start.since is None  # the clock stopped
        assert tracker.rows["check"].state == "done"
        assert not any(row.state == "running" for row in tracker.rows.values())
        panel = screen.query_one(VerdictPanel)
        assert panel.status != "pending" and panel.has_class("fail")
        assert panel.border_subtitle == "launch failed"
        shown = str(panel.render())
        assert "LAUNCH FAILED" in shown and "Not a directory" in shown
        # later ticks (no events ever come) leave it as it is
        await pilot.pause(0.5)
        assert panel.status != "pending" and "LAUNCH FAILED" in str(panel.render())


async def test_a_failed_cache_job_launch_says_so_in_its_panel(wait_for):
    app = KDApp()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        launcher = FailingLauncher(OSError("disk full"), job=CACHE_JOB)
        app.push_screen(RunScreen(launcher=launcher, title="cache on local"))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.launch_failed is not None)
        await pilot.pause(0.3)
        screen = app.screen
        assert screen.query_one(StageTracker).rows["start"].state == "failed"
        panel = screen.query_one(CacheJobPanel)
        shown = str(panel.render())
        assert "LAUNCH FAILED" in shown and "disk full" in shown
        assert "R finishes it" not in shown  # nothing was written to finish


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_of_a_failed_launch(snap_compare, monkeypatch, size):
    """The failed stage (its clock stopped) and LAUNCH FAILED with why, in the error's border."""
    monkeypatch.setattr(run_panels, "time", SimpleNamespace(monotonic=lambda: 1000.0,
                                                            time=lambda: 1_760_001_000.0))
    error = NotADirectoryError(20, "Not a directory", "/tmp/afile/z2")

    async def open_it(pilot) -> None:
        await pilot.pause()
        pilot.app.push_screen(RunScreen(launcher=FailingLauncher(error), title="z2 on local"))
        for _ in range(100):
            await pilot.pause(0.05)
            if isinstance(pilot.app.screen, RunScreen) and pilot.app.screen.launch_failed:
                break
        await pilot.pause(0.3)

    app = KDApp(theme="kdtui-dark")
    assert snap_compare(app, terminal_size=size, run_before=open_it)
