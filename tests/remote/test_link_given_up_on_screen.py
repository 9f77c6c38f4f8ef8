"""The run screen of a remote run whose host stays down past the link's give-up: the screen
says it stopped following (the run may still be going) and the dashboard goes on. Before, the
follow worker's RemoteError was unhandled, and Textual ends the app on a worker's error: the
dashboard died with a traceback after ten minutes of a dropped link."""

from __future__ import annotations

import functools

import pytest

import kdtui.launch.remote as remote_launch
from kdtui.app import KDApp
from kdtui.remote.source import SSHRunSource
from kdtui.screens.run import RunScreen

pytestmark = pytest.mark.ssh


@pytest.fixture
def live_on_a_down_host(launched_on_down_host):
    return launched_on_down_host("live-down")  # (the dispatch runs its own event loop)


async def test_a_link_given_up_is_said_on_the_run_screen_and_the_dashboard_goes_on(
        live_on_a_down_host, tmp_path, monkeypatch, wait_for) -> None:
    # the real source and real connects to the down host, giving up after 1 s, not 600
    monkeypatch.setattr(remote_launch, "SSHRunSource",
                        functools.partial(SSHRunSource, give_up_after=1.0, max_backoff=0.2))
    app = KDApp(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.open_run("live-down")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        screen = app.screen
        await wait_for(pilot, lambda: any("Stopped following" in str(n.title)
                                          for n in app._notifications), 60)
        notice = next(n for n in app._notifications if "Stopped following" in str(n.title))
        assert "lost kdtest-down for over 1s" in str(notice.message)
        assert "the run may still be going" in str(notice.message)
        await pilot.pause(0.5)
        assert app.is_running and app.screen is screen  # the dashboard goes on
        await pilot.press("escape")  # and the user can go elsewhere
        await wait_for(pilot, lambda: app.screen is not screen, 10)
