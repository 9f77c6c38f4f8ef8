"""A remote launch that the engine's check stage refuses (here: data that is not on the box)
does not remember its values as the host's, as a refused local launch does not
(tests/tui/test_audit4_noticed_refused_launch_settings.py): the form opens next time with the
values of the last launch that got past the check."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ssh


async def test_a_remote_launch_refused_by_the_check_stage_does_not_remember_its_values(
        remote_env, tiny_run_inputs, tmp_path, wait_for) -> None:
    from kdtui.app import KDApp
    from kdtui.screens.run import RunScreen
    from kdtui.settings import Settings
    from kdtui.widgets.run_panels import StageTracker

    good = {**tiny_run_inputs, "steps": "123", "profile": "kdengine"}
    Settings.load().remember("kdtest", good)
    missing = str(tmp_path / "no-such-corpus.txt")
    prefill = {**tiny_run_inputs, "data": missing, "steps": "7", "run_name": "refused-remote",
               "host": "kdtest"}
    app = KDApp(runs_dir=tmp_path / "local-runs", command="launch", prefill=prefill)
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 60)
        screen = app.screen
        await wait_for(pilot, lambda: screen.launch_failed is not None, 120)
        assert screen.query_one(StageTracker).rows["check"].state == "failed"
        assert "no-such-corpus" in screen.launch_failed
    remembered = Settings.load().values_for("kdtest")
    assert remembered["data"] == tiny_run_inputs["data"], remembered
    assert remembered["steps"] == "123", remembered


async def test_a_remote_launch_past_the_check_stage_remembers_its_values(
        remote_env, tiny_run_inputs, tmp_path, wait_for) -> None:
    from kdtui.app import KDApp
    from kdtui.screens.run import RunScreen
    from kdtui.settings import Settings
    from kdtui.widgets.run_panels import StageTracker

    Settings.load().remember("kdtest", {**tiny_run_inputs, "steps": "123"})
    prefill = {**tiny_run_inputs, "steps": "3", "eval_every": "3", "run_name": "accepted-remote",
               "host": "kdtest"}
    app = KDApp(runs_dir=tmp_path / "local-runs", command="launch", prefill=prefill)
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 60)
        rows = app.screen.query_one(StageTracker).rows
        await wait_for(pilot, lambda: rows["check"].state in ("done", "failed"), 120)
        assert rows["check"].state == "done"
        remembered = Settings.load().values_for("kdtest")
        assert remembered["steps"] == "3", remembered
        await wait_for(pilot, lambda: app.screen.handle is not None
                       or app.screen.launch_failed is not None, 120)
