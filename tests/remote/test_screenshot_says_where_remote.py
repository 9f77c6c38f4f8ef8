"""F8's line in the help and the palette over a remote run's screen says the screenshot goes
beside the run's dispatch.json (its evidence dir), where it goes: it said "into the run's
directory", a directory on the host."""

from __future__ import annotations

import pytest
from textual.widgets import Static

from kdtui.app import KDApp
from kdtui.palette import binding_commands
from kdtui.screens.dialogs import HelpScreen
from kdtui.screens.run import RunScreen

pytestmark = pytest.mark.ssh


@pytest.fixture
def dispatched(launched_on_down_host):
    return launched_on_down_host("shot-where")  # (the dispatch runs its own event loop)


async def test_f8_on_a_remote_run_says_it_saves_beside_its_dispatch_json(
        dispatched, tmp_path, wait_for) -> None:
    manifest = dispatched
    app = KDApp(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.open_run("shot-where")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        said = next(c.help for c in binding_commands(app.screen, app) if c.name == "Screenshot")
        assert said == "Save an SVG screenshot beside this run's dispatch.json (its evidence " \
                       "dir) (f8)"
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 10)
        text = "\n".join(str(s.render()) for s in app.screen.query(Static))
        assert "F8 saves an SVG screenshot beside this run's dispatch.json (its evidence dir)." \
            in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        await pilot.press("f8")
        await wait_for(pilot, lambda: any(manifest.parent.glob("kdtui-*.svg")), 10)
