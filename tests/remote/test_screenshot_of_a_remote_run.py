"""F8 on a remote run's screen: the screenshot went to the run directory's path on the host,
made on this machine (a `kdtui/runs/RUN/` under the working directory, for a relative work
dir); it goes beside the run's dispatch.json in the evidence dir, a local directory of the run."""

from __future__ import annotations

import json

import pytest

from kdtui.app import KDApp
from kdtui.screens.run import RunScreen

pytestmark = pytest.mark.ssh


@pytest.fixture
def dispatched(launched_on_down_host):
    return launched_on_down_host("shot-remote")  # (the dispatch runs its own event loop)


async def test_f8_on_a_remote_run_saves_beside_its_dispatch_json(dispatched, remote_env,
                                                                 tmp_path, wait_for) -> None:
    manifest = dispatched
    remote_dir = json.loads(manifest.read_text())["remote_run_dir"]
    app = KDApp(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.open_run("shot-remote")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        await pilot.press("f8")
        await wait_for(pilot, lambda: any(manifest.parent.glob("kdtui-*.svg")), 10)
    made_here = list(remote_env["work"].glob("runs/shot-remote/kdtui-*.svg"))
    assert remote_dir.endswith("runs/shot-remote") and not made_here, made_here
