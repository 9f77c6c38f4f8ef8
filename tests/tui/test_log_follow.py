"""The log follows the run across every resize: a pane that shrinks (the band above it grows
after the lines arrived, as a reopened finished run's does) stays at its end while it follows,
and a user who scrolled up keeps the line they read."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Static

from kdtui.app import KDApp
from kdtui.screens.run import RunScreen
from kdtui.screens.runs import RunsScreen
from kdtui.widgets.log_view import LogView
from kdtui.widgets.run_panels import VerdictPanel


class Pane(App):
    """A band above the log, as on the run screen: its height is what the test changes."""

    def compose(self) -> ComposeResult:
        yield Static("band", id="band")
        yield LogView(id="log")

    def on_mount(self) -> None:
        self.query_one("#band").styles.height = 2


def _at_end(log: LogView) -> bool:
    return log.scroll_offset.y == log.max_scroll_y and log.visible_lines()[-1] == log.lines[-1]


async def test_following_stays_at_the_end_when_the_pane_gets_shorter():
    app = Pane()
    async with app.run_test(size=(60, 30)) as pilot:
        log = app.query_one(LogView)
        log.append_lines([f"line {i}" for i in range(100)])
        await pilot.pause()
        assert log.following and _at_end(log)
        app.query_one("#band").styles.height = 15  # the log pane loses 13 rows
        await pilot.pause()
        await pilot.pause()
        assert log.following and _at_end(log), (log.scroll_offset.y, log.max_scroll_y)
        app.query_one("#band").styles.height = 5  # and back taller
        await pilot.pause()
        await pilot.pause()
        assert log.following and _at_end(log)


async def test_a_user_who_scrolled_up_keeps_the_line_across_a_resize():
    app = Pane()
    async with app.run_test(size=(60, 30)) as pilot:
        log = app.query_one(LogView)
        log.append_lines([f"line {i}" for i in range(100)])
        await pilot.pause()
        log.scroll_to(y=30, animate=False, immediate=True)
        await pilot.pause()
        assert not log.following
        app.query_one("#band").styles.height = 15
        await pilot.pause()
        await pilot.pause()
        assert not log.following and log.scroll_offset.y == 30
        assert log.visible_lines()[0] == "line 30"


def _verdict_shown(app: KDApp) -> bool:
    return isinstance(app.screen, RunScreen) and bool(app.screen.query(VerdictPanel)) and \
        app.screen.query_one(VerdictPanel).status != "pending"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_a_reopened_finished_run_shows_its_last_log_line(
        runs_dir, wait_for, write_run, size):
    run = write_run(runs_dir / "done", steps=300, log_extra=["[verdict] done (0.0s): pass"])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: _verdict_shown(app))
        await pilot.pause(0.3)
        log = app.screen.query_one(LogView)
        assert log.following and _at_end(log), log.visible_lines()[-3:]


async def test_a_finished_run_opened_from_the_runs_list_shows_its_last_log_line(
        runs_dir, wait_for, write_run):
    write_run(runs_dir / "done", steps=300)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "form_ready", False))
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: _verdict_shown(app))
        await pilot.pause(0.3)
        log = app.screen.query_one(LogView)
        assert log.following and _at_end(log), log.visible_lines()[-3:]
