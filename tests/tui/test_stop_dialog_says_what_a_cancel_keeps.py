"""The run screen's Stop (x) dialog said the engine 'saves nothing more' when stopped; a cancel of a
one-process run now saves a checkpoint of its last trained step (docs/dashboard.md), so the
dialog says what is kept, for a resume to continue from."""

from __future__ import annotations

import os

from textual.widgets import Static

from kdtui.app import KDApp
from kdtui.screens.dialogs import ConfirmScreen
from kdtui.screens.run import RunScreen


async def test_the_stop_dialog_says_the_cancel_saves_a_checkpoint(runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "going", steps=200, upto=50, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.running)
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10)
        body = str(app.screen.query_one(".dialog-body", Static).render())
        assert "saves nothing more" not in body
        assert "checkpoint" in body and "cancelled" in body, body
        await pilot.press("escape")  # (never the yes: the 'engine' here is this test's process)
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)


async def test_the_quit_dialog_says_stopping_keeps_a_checkpoint() -> None:
    # ctrl+q with a run going offers 'Stop it': it said only that the run is recorded cancelled
    from textual.app import App

    from kdtui.screens.dialogs import QuitScreen

    app = App()
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(QuitScreen(["kd-1"]))
        await pilot.pause(0.1)
        body = str(app.screen.query_one(".dialog-body", Static).render())
        assert "checkpoint" in body and "kdtui resume" in body and "cancelled" in body, body
