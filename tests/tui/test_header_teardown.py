"""A screen's title that changes while its header is torn down (a run screen's worker updating
the step in its sub-title as the app quits or the screen goes) must not crash the app: Textual's
Header looks its title up in a watcher and raised NoMatches once the title was gone (a flaky
runs-list test under load showed it)."""

from __future__ import annotations

import sys
from pathlib import Path

from textual.widgets import Header
from textual.widgets._header import HeaderTitle

from kdtui.app import KDApp

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from runs_list import open_runs_list  # noqa: E402


async def test_a_title_set_while_the_header_is_torn_down_does_not_crash(
        runs_dir, write_run) -> None:
    write_run(runs_dir / "run-a", steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_runs_list(pilot)
        header = screen.query_one(Header)
        await header.query_one(HeaderTitle).remove()  # the teardown's first half
        screen.sub_title = "runs (changed as it goes)"
        await pilot.pause(0.1)
    assert app.return_code in (0, None)
