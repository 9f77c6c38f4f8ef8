"""A remote run in the dashboard: dispatched over real SSH and detached, then found in the runs
list beside local runs and reopened, its events followed over SSH to the verdict."""

from __future__ import annotations

import asyncio

import pytest

from kdtui.cli import main as kdtui_main

pytestmark = pytest.mark.ssh

FLAGS = dict(steps=20, batch_size=4, seq_len=32, lr=3e-3, eval_every=10, eval_batches=2,
             log_every=1, checkpoint_every=10, temperature=2.0)


async def test_a_detached_remote_run_reopens_from_the_runs_list_to_its_verdict(
        remote_env, tiny_run_inputs, tmp_path, monkeypatch, wait_for_run, wait_for) -> None:
    from textual.widgets import DataTable

    from kdtui.app import KDApp
    from kdtui.screens.run import RunScreen
    from kdtui.screens.runs import RunsScreen
    from kdtui.widgets.run_panels import VerdictPanel

    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    flags = [x for k, v in FLAGS.items() for x in ("--" + k.replace("_", "-"), str(v))]
    argv = ["launch", "--headless", "--detach", "--host", "kdtest", "--run-name", "tui-remote-1",
            "--teacher", tiny_run_inputs["teacher"], "--student", tiny_run_inputs["student"],
            "--data", tiny_run_inputs["data"], *flags]
    code = await asyncio.to_thread(kdtui_main, argv)  # headless runs its own event loop
    assert code == 0

    app = KDApp(runs_dir=tmp_path / "local-runs")
    async with app.run_test(size=(150, 44)) as pilot:
        app.push_screen(RunsScreen())
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.runs, 10)
        table = app.screen.query_one(DataTable)
        row = [str(cell) for cell in table.get_row_at(0)]
        assert row[:2] == ["tui-remote-1", "kdtest"]
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and bool(app.screen.query(VerdictPanel)), 60)
        screen = app.screen
        await wait_for_run(pilot, remote_env["work"] / "runs" / "tui-remote-1",
                           lambda: screen.query_one(VerdictPanel).status != "pending",
                           "the verdict")
        panel = screen.query_one(VerdictPanel)
        assert panel.status == "pass", panel.verdict
        assert "tui-remote-1 on kdtest" in screen.sub_title


@pytest.mark.timeout(600)
async def test_a_remote_run_launched_from_the_dashboard_shows_its_dispatch_stages(
        remote_env, tiny_run_inputs, tmp_path, monkeypatch, wait_for_run, wait_for) -> None:
    from kdtui.app import KDApp
    from kdtui.screens.run import RunScreen
    from kdtui.widgets.run_panels import StageTracker, VerdictPanel

    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    prefill = {**{k: str(v) for k, v in FLAGS.items()}, **tiny_run_inputs,
               "run_name": "tui-remote-2", "host": "kdtest"}
    app = KDApp(runs_dir=tmp_path / "local-runs", command="launch", prefill=prefill)
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and bool(app.screen.query(VerdictPanel)), 60)
        screen = app.screen
        panel = screen.query_one(VerdictPanel)
        # the dispatch before the run (the sync builds the per-version venv once a session)
        # writes nothing into the run dir: QUIET_S (300s) covers it
        await wait_for_run(pilot, remote_env["work"] / "runs" / "tui-remote-2",
                           lambda: panel.status != "pending", "the verdict")
        assert panel.status == "pass", panel.verdict
        rows = screen.query_one(StageTracker).rows
        for stage in ("preflight", "sync", "check", "launch", "manifest", "train", "verdict"):
            assert rows[stage].state in ("done", "skipped"), (stage, rows[stage].state)
        assert rows["preflight"].state == "done" and rows["train"].state == "done"
    assert (remote_env["evidence"] / "tui-remote-2" / "dispatch.json").exists()
