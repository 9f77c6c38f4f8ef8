"""A dispatched run whose directory is gone from the box (removed, or /tmp cleaned by a reboot)
is said as that, in one line, exit 2, by `kdtui watch` and `kdtui resume`: not as an engine
"gone without finishing the run" at "last step 0" (recorded in the manifest as stopped), nor
as a run with "no complete checkpoint"."""

from __future__ import annotations

import json

import pytest

from kdengine.config import demo_config
from kdtui.cli import main as kdtui_main

pytestmark = pytest.mark.ssh


def test_a_run_whose_directory_is_gone_is_said_so_by_watch_and_resume(remote_env, capsys):
    run_dir = remote_env["work"] / "runs" / "gone-dir"  # never made: as if removed
    manifest = remote_env["evidence"] / "gone-dir" / "dispatch.json"
    manifest.parent.mkdir(parents=True)
    config = demo_config().with_values(run_name="gone-dir", run_dir=str(run_dir))
    manifest.write_text(json.dumps({
        "run_id": "gone-dir", "host": "kdtest", "launched": True, "launch_confirmed": True,
        "remote_run_dir": str(run_dir), "pid": 999999, "config": config.to_dict(),
        "engine_command": ["python", "-m", "kdengine", "train"], "attempts": [],
        "segments": [{"kind": "dispatch", "pid": 999999, "from_step": None}]}))
    said = f"the run directory {run_dir} does not exist on kdtest (removed, or cleaned with " \
        "the box's /tmp at a reboot): nothing to "

    assert kdtui_main(["watch", "gone-dir", "--headless"]) == 2
    out = capsys.readouterr().out
    assert f"ERROR: {said}follow or resume" in out
    assert "gone without finishing" not in out
    assert "state" not in json.loads(manifest.read_text())  # nothing recorded as stopped

    assert kdtui_main(["resume", "gone-dir", "--headless"]) == 2
    assert f"ERROR: resume failed: {said}resume" in capsys.readouterr().out
