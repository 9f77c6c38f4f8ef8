"""A remote resume the engine refuses (it exits at once: a damaged checkpoint) leaves the run's
record as it was: `kdtui runs` still lists it as it ended (not `dispatched`, its verdict
gone), and the manifest's segment for the refused resume says so, with the engine's line,
instead of staying open with no pid, as if an engine ran."""

from __future__ import annotations

import json
import sys

import pytest

from kdengine.config import demo_config
from kdtui.cli import main as kdtui_main

pytestmark = pytest.mark.ssh

REFUSAL = "kdengine train: error: --resume: checkpoint step-00000060 is damaged"


def test_a_refused_remote_resume_leaves_the_runs_record_as_it_ended(remote_env, capsys):
    run_id = "refused-resume"
    run_dir = remote_env["work"] / "runs" / run_id
    (run_dir / "checkpoints" / "step-00000060").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-00000060" / "meta.json").write_text("{}")
    finished = {"v": 1, "seq": 1, "t": 2.0, "type": "run_finished", "status": "cancelled",
                "exit_code": 143, "steps": 72}
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        {"v": 1, "seq": 0, "t": 1.0, "type": "run_started", "run_id": run_id}, finished]))
    (run_dir / "engine.pid").write_text("999999\n")  # the dispatch's engine, long gone
    # the engine command up to `train`: resumed, it refuses in one line as the engine does
    engine = [sys.executable, "-c", f"print({REFUSAL!r}); raise SystemExit(2)", "train"]
    manifest_path = remote_env["evidence"] / run_id / "dispatch.json"
    manifest_path.parent.mkdir(parents=True)
    config = demo_config().with_values(run_name=run_id, run_dir=str(run_dir))
    verdict = {"id": "F-DISTILL-SMOKE-001", "status": "inconclusive", "reason": "cancelled"}
    before = {
        "run_id": run_id, "host": "kdtest", "launched": True, "launch_confirmed": True,
        "remote_run_dir": str(run_dir), "pid": 999999, "config": config.to_dict(),
        "engine_command": engine, "attempts": [], "dispatched_at": "2026-11-24T09:30:00Z",
        "verdict": verdict, "run_finished": finished, "state": "cancelled",
        "engine_last_step": 72, "checkpoint_step": 60,
        "segments": [{"kind": "dispatch", "pid": 999999, "from_step": None,
                      "ended": "cancelled", "last_step": 72}]}
    manifest_path.write_text(json.dumps(before))

    assert kdtui_main(["resume", run_id, "--headless"]) == 2
    out = capsys.readouterr().out
    assert REFUSAL in out, out

    after = json.loads(manifest_path.read_text())
    for key in ("state", "verdict", "run_finished", "pid", "engine_last_step",
                "checkpoint_step", "launch_confirmed"):
        assert after.get(key) == before[key], (key, after)
    dispatch, refused = after["segments"]
    assert dispatch == before["segments"][0]
    assert refused["kind"] == "resume" and refused["ended"] == "refused", refused
    assert REFUSAL in refused["error"] and refused.get("ended_at"), refused
    assert [a["kind"] for a in after["attempts"]] == ["resume"]  # the attempt is kept

    assert kdtui_main(["runs", "--plain"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if run_id in line)
    assert "\tcancelled\t" in row and "dispatched" not in row, row
