"""Stop run on a remote run's screen when the cancel itself fails on the box (its agent or
python broken since the dispatch): the dashboard says so in a notice and keeps going."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from kdtui.cli import main as kdtui_main

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(300)]

FLAGS = dict(steps=100000, batch_size=2, seq_len=16, lr=3e-3, eval_every=0, eval_batches=1,
             log_every=1, checkpoint_every=0, temperature=2.0)


async def test_a_cancel_that_fails_on_the_box_is_a_notice_not_a_crash(
        remote_env, tiny_run_inputs, tmp_path, monkeypatch, wait_for_run, wait_for) -> None:
    from textual.widgets import Button

    from kdtui.app import KDApp
    from kdtui.screens.dialogs import ConfirmScreen
    from kdtui.screens.run import RunScreen
    from kdtui.screens.runs import RunsScreen
    from kdtui.widgets.run_panels import VerdictPanel

    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    flags = [x for k, v in FLAGS.items() for x in ("--" + k.replace("_", "-"), str(v))]
    argv = ["launch", "--headless", "--detach", "--host", "kdtest", "--run-name", "cx-err",
            "--teacher", tiny_run_inputs["teacher"], "--student", tiny_run_inputs["student"],
            "--data", tiny_run_inputs["data"], *flags]
    assert await asyncio.to_thread(kdtui_main, argv) == 0
    run_dir = remote_env["work"] / "runs" / "cx-err"
    app = KDApp(runs_dir=tmp_path / "local-runs")
    try:
        async with app.run_test(size=(150, 44)) as pilot:
            app.push_screen(RunsScreen())
            await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                           and app.screen.runs, 10)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                           and bool(app.screen.query(VerdictPanel)), 60)
            screen = app.screen
            await wait_for_run(pilot, run_dir, lambda: screen.running and
                               screen.state.last_step is not None, "steps")
            (agent,) = (remote_env["work"] / ".kdtui").glob("agent-*.py")
            saved = agent.read_bytes()
            agent.write_text("this is not python\n")  # broken on the box since the dispatch
            try:
                await pilot.press("x")
                await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10)
                app.screen.query_one("#yes", Button).press()
                await wait_for(pilot, lambda: any("cancel" in str(n.message).lower() and
                                                  n.severity == "error"
                                                  for n in app._notifications), 30)
            finally:
                agent.write_bytes(saved)
            assert app.is_running and app.screen is screen
            said = [str(n.message) for n in app._notifications]
            (line,) = [m for m in said if m.startswith("Stop run failed: ")]
            assert line == ("Stop run failed: cancel the run: NameError: name 'this' is not "
                            "defined; the run may still be going: `kdtui cancel cx-err` from a "
                            "shell"), line
            assert not any(m.startswith("SIGTERM sent") for m in said), said
    finally:
        os.killpg(int((run_dir / "engine.pid").read_text()), signal.SIGTERM)
