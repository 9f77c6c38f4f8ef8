"""Snapshot tests (pytest-textual-snapshot) at a fixed terminal size: the launch form, the run
screen mid-run and finished, and the finished run in each shipped theme.

Update after an intended change of the look: pytest tests/tui/test_snapshots.py --snapshot-update
(then look at the report's pictures before committing them).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from kdtui.app import KDApp, load_themes
from kdtui.widgets import run_panels
from kdtui.widgets.run_panels import RunProgress, VerdictPanel

SIZE = (150, 44)


@pytest.fixture(autouse=True)
def frozen_stage_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # a running stage's clock ticks; a picture must not depend on when it was taken
    # (and counts from its event's unix time: write_run's clock starts at 1_760_000_000)
    monkeypatch.setattr(run_panels, "time", SimpleNamespace(monotonic=lambda: 1000.0,
                                                            time=lambda: 1_760_001_000.0))


def test_launch_form(snap_compare, runs_dir):
    async def demo_preset(pilot):
        while not pilot.app.screen.form_ready:
            await pilot.pause(0.05)
        await pilot.press("f2")
        await pilot.pause()
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(KDApp(runs_dir=runs_dir), terminal_size=SIZE, run_before=demo_preset)


def test_launch_form_with_an_invalid_value(snap_compare, runs_dir):
    async def type_bad_steps(pilot):
        while not pilot.app.screen.form_ready:
            await pilot.pause(0.05)
        pilot.app.screen.query_one("#field-steps").value = "-3"
        await pilot.pause()

    assert snap_compare(KDApp(runs_dir=runs_dir), terminal_size=SIZE, run_before=type_bad_steps)


def _settled(until):
    async def run_before(pilot):
        for _ in range(100):
            await pilot.pause(0.05)
            if until(pilot.app):
                break
        await pilot.pause(0.4)  # one chart redraw after the last update
    return run_before


def test_run_screen_mid_run(snap_compare, runs_dir, write_run):
    write_run(runs_dir / "midrun", steps=400, upto=130, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="midrun")

    def ready(app) -> bool:
        return bool(app.screen.query(RunProgress)) and app.screen.query_one(RunProgress).step == 130

    assert snap_compare(app, terminal_size=SIZE, run_before=_settled(ready))


def _finished(app) -> bool:
    return bool(app.screen.query(VerdictPanel)) and \
        app.screen.query_one(VerdictPanel).status == "pass"


def test_run_screen_finished(snap_compare, runs_dir, write_run):
    write_run(runs_dir / "finished", steps=300)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="finished")
    assert snap_compare(app, terminal_size=SIZE, run_before=_settled(_finished))


@pytest.mark.parametrize("theme", sorted(load_themes()))
def test_each_theme(snap_compare, runs_dir, write_run, theme):
    write_run(runs_dir / "themed", steps=300, log_extra=["RuntimeError: planted for the colours"])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="themed", theme=theme)
    assert snap_compare(app, terminal_size=SIZE, run_before=_settled(_finished))
