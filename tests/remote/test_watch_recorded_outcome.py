"""`kdtui watch` of a remote run its dispatch.json records as completed, while its host is down:
the recorded outcome (verdict, losses, last step) at once, saying the host cannot be reached for
anything newer, instead of retrying the link for ten minutes. Headless and dashboard alike."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from kdengine.verdict import Verdict
from kdtui.app import KDApp
from kdtui.remote.manifest import record_watch
from kdtui.screens.run import RunScreen
from kdtui.widgets.run_panels import VerdictPanel

pytestmark = pytest.mark.ssh

VERDICT = Verdict("pass", "val loss fell", initial_loss=5.5, final_loss=3.25, final_step=40)


@pytest.fixture
def completed_on_a_down_host(launched_on_down_host):
    """A run launched on kdtest-down, watched to its end and recorded, before the host went
    down."""
    manifest = launched_on_down_host("rec-done")
    record_watch(manifest, verdict=VERDICT.to_event(),
                 finished={"type": "run_finished", "status": "completed", "steps": 40},
                 engine_last_step=40, checkpoint_step=None, status="completed")
    return manifest


def test_headless_watch_of_a_completed_run_on_a_down_host_prints_its_recorded_outcome(
        completed_on_a_down_host) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kdtui", "watch", "rec-done", "--headless"],
                          capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60  # at once, not after the link's give-up
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines[1].startswith("kdtest-down cannot be reached (cannot reach "), lines
    assert "the run completed at step 40, as " in lines[1] and "nothing newer" in lines[1]
    assert lines[2] == f"result: {VERDICT.summary()} (exit 0)"


async def test_the_dashboard_shows_the_recorded_outcome_of_a_completed_run_on_a_down_host(
        completed_on_a_down_host, tmp_path, wait_for) -> None:
    app = KDApp(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.open_run("rec-done")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        screen = app.screen
        await wait_for(pilot, lambda: bool(screen.query(VerdictPanel))
                       and screen.query_one(VerdictPanel).verdict is not None, 30)
        panel = screen.query_one(VerdictPanel)
        assert panel.verdict == VERDICT and "completed" in screen.sub_title
        assert any("kdtest-down cannot be reached" in str(n.message) for n in app._notifications)
        assert not screen.running
