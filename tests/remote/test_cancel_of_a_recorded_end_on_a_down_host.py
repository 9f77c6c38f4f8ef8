"""`kdtui cancel RUN` of a remote run whose dispatch.json records its end (a watch saw it
complete), with its host down: it said 'cannot reach HOST ... not cancelled' and exited 1, as if
the run might still be going. It now says the run already ended, as the manifest recorded it,
and exits 0, as the cancel of a finished run does (docs/dashboard.md); a run with no end on
record still says the host cannot be reached, exit 1."""

from __future__ import annotations

import json

import pytest

from kdtui.cli import main as kdtui_main
from kdtui.remote.manifest import record_watch

pytestmark = pytest.mark.ssh


@pytest.fixture
def ended_on_down_host(launched_on_down_host):
    manifest = launched_on_down_host("cx-ended")  # (the dispatch runs its own event loop)
    record_watch(manifest, verdict={"type": "verdict", "id": "F-DISTILL-SMOKE-001",
                                    "status": "pass", "reason": "val loss fell"},
                 finished={"type": "run_finished", "status": "completed", "exit_code": 0},
                 engine_last_step=40, checkpoint_step=40, status="completed")
    return manifest


def test_cancel_of_a_run_recorded_completed_on_a_down_host_says_it_ended(
        ended_on_down_host, capsys) -> None:
    before = ended_on_down_host.read_text()
    assert kdtui_main(["cancel", "cx-ended", "--timeout", "30"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("cx-ended on kdtest-down: already finished: completed at step "
                               "40 (exit code 0), as ")
    assert str(ended_on_down_host) in lines[0] and "cannot reach kdtest-down" in lines[0]
    assert lines[0].endswith("nothing to cancel"), lines[0]
    assert json.loads(ended_on_down_host.read_text()) == json.loads(before)  # left as it was


def test_cancel_of_a_run_with_no_end_on_record_on_a_down_host_still_fails(
        launched_on_down_host, capsys) -> None:
    launched_on_down_host("cx-unknown")
    assert kdtui_main(["cancel", "cx-unknown", "--timeout", "30"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach kdtest-down" in err and "not cancelled" in err
