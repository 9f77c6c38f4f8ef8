"""Space on the runs list selects the run under the cursor and moves down, so "space, space"
selects two runs; on the last row there is no row below: the second Space unselected the run
the first had just selected. Now it keeps it selected and says how to unselect it (a Space
more), and the runs above it select as before."""

from __future__ import annotations

import sys
from pathlib import Path

from textual.widgets import DataTable

from kdtui.app import KDApp

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from runs_list import open_runs_list  # noqa: E402


async def test_space_space_on_the_last_row_keeps_the_last_run_selected(runs_dir, write_run):
    for name in ("r1", "r2", "r3"):
        write_run(runs_dir / name, steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs_list(pilot)
        table = screen.query_one(DataTable)
        last = len(screen.runs) - 1
        await pilot.press("end", "space", "space")
        await pilot.pause()
        assert table.cursor_row == last
        assert len(screen.selected) == 1 and str(screen.runs[last].info.run_dir) in \
            screen.selected
        assert any("space again unselects" in str(n.message) for n in app._notifications)
        await pilot.press("space")  # a third: the person means it
        await pilot.pause()
        assert screen.selected == []
        # from the row above the last: space, space selects both
        await pilot.press("up", "space", "space")
        await pilot.pause()
        assert len(screen.selected) == 2 and table.cursor_row == last
        # moved away and back: a Space on the selected last run unselects it, as on any row
        await pilot.press("up", "down", "space")
        await pilot.pause()
        assert len(screen.selected) == 1


async def test_space_space_from_the_top_selects_two_runs(runs_dir, write_run):
    for name in ("r1", "r2", "r3"):
        write_run(runs_dir / name, steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs_list(pilot)
        await pilot.press("space", "space")
        await pilot.pause()
        assert len(screen.selected) == 2
        assert screen.query_one(DataTable).cursor_row == 2
