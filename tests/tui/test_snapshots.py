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
        steps = pilot.app.screen.query_one("#field-steps")
        steps.value = "-3"
        steps.focus()  # as a user who typed it: the row and its error in view, not off-screen
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


# -- the form, its errors and the help at the sizes people have: 80x24 and 120x40 ----------------
SMALL, LARGE = (80, 24), (120, 40)


def _form_ready(then=None):
    async def run_before(pilot):
        while not pilot.app.screen.form_ready:
            await pilot.pause(0.05)
        await pilot.pause()
        if then is not None:
            await then(pilot)
        pilot.app.clear_notifications()
        await pilot.pause()
    return run_before


async def _demo(pilot):
    await pilot.press("f2")
    await pilot.pause()


async def _start_empty(pilot):
    await pilot.press("ctrl+r")  # every required field empty: each one marked
    await pilot.pause()


async def _help(pilot):
    await pilot.press("f1")
    await pilot.pause()


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_launch_form_at_common_sizes(snap_compare, runs_dir, size):
    assert snap_compare(KDApp(runs_dir=runs_dir), terminal_size=size,
                        run_before=_form_ready(_demo))


@pytest.mark.parametrize("theme", ["kdtui-light", "kdtui-high-contrast"])
def test_launch_form_errors_at_80x24(snap_compare, runs_dir, theme):
    assert snap_compare(KDApp(runs_dir=runs_dir, theme=theme), terminal_size=SMALL,
                        run_before=_form_ready(_start_empty))


def test_help_over_the_form_at_120x40(snap_compare, runs_dir):
    assert snap_compare(KDApp(runs_dir=runs_dir), terminal_size=LARGE,
                        run_before=_form_ready(_help))


@pytest.mark.parametrize("theme", ["kdtui-dark", "kdtui-light", "kdtui-high-contrast"])
def test_help_over_a_run_at_80x24(snap_compare, runs_dir, write_run, theme):
    # at 80x24 the help covers the screen: the run beneath does not show through
    write_run(runs_dir / "helped", steps=60)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="helped", theme=theme)

    async def run_before(pilot):
        await _settled(_finished)(pilot)
        await _help(pilot)

    assert snap_compare(app, terminal_size=SMALL, run_before=run_before)
