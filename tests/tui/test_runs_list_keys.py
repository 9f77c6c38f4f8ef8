"""The runs list's keys as a user presses them: Home and End go to the first and the last run
(Textual's table scrolls sideways on them, which a list that fits the terminal cannot show:
the keys did nothing, and Enter after Home opened the run the cursor was still on)."""

from __future__ import annotations

import sys
from pathlib import Path

from textual.widgets import DataTable

from kdtui.app import KDApp

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from runs_list import open_runs_list  # noqa: E402


async def test_home_and_end_move_the_cursor_to_the_first_and_last_run(runs_dir, write_run,
                                                                      wait_for):
    for name in ("r1", "r2", "r3", "r4"):
        write_run(runs_dir / name, steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs_list(pilot)
        table = screen.query_one(DataTable)
        await pilot.press("down", "down")
        await pilot.pause()
        assert table.cursor_row == 2
        await pilot.press("home")
        await pilot.pause()
        assert table.cursor_row == 0
        await pilot.press("end")
        await pilot.pause()
        assert table.cursor_row == len(screen.runs) - 1
        last = screen.runs[-1].run_id
        await pilot.press("enter")
        await wait_for(pilot, lambda: last in str(app.screen.title or app.screen.sub_title), 10)
