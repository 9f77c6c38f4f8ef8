"""The runs list: Enter typed ahead opens the row the keys before it moved to (it opened the row
the cursor was on when the burst came)."""

from __future__ import annotations

import time

import pytest
from textual import events
from textual.widgets import DataTable

from kdtui.app import KDApp
from kdtui.screens.run import RunScreen
from kdtui.screens.runs import RunsScreen

T0 = 1_760_000_000.0  # tests/tui/conftest.py's clock


@pytest.fixture
def cet(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "CET-1")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def _runs_list(pilot) -> RunsScreen:
    pilot.app.action_runs()
    for _ in range(100):
        if isinstance(pilot.app.screen, RunsScreen) and pilot.app.screen.runs:
            break
        await pilot.pause(0.05)
    return pilot.app.screen


async def test_enter_typed_ahead_opens_the_row_the_keys_before_it_moved_to(
        runs_dir, write_run, wait_for):
    for name in ("run-a", "run-b", "run-c"):
        write_run(runs_dir / name, steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await _runs_list(pilot)
        assert screen.query_one(DataTable).cursor_row == 0
        wanted = screen.runs[1].run_id
        # one burst, as a terminal delivers typed-ahead keys: nothing runs between them
        for key, char in (("down", None), ("enter", "\r")):
            app.post_message(events.Key(key, char))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 30)
        assert app.screen.handle.run_id == wanted, (app.screen.handle.run_id, wanted)
