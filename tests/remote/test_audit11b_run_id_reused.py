"""A run cancelled part-way, then a new dispatch under its name: refused with the resume that
continues it (docs/remote.md promises it), the run's record kept; then that resume.

The run lives in a work dir with spaces, quotes and a `$` in it (a home like `/home/Jane Doe`,
a disk mounted at `/mnt/it's`): every path under it (the agent, the venv, the run dir, its
checkpoints) must reach each remote shell as one word, through launch, cancel, the refused
dispatch and resume. One run serves both, to keep the suite fast."""

from __future__ import annotations

import json
import time

import pytest

from kdtui.cli import main

from .conftest import launch_flags

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(240)]


def test_a_dispatch_under_a_cancelled_runs_name_is_refused_with_its_resume(
        remote_env, tmp_path, tiny_run_inputs, capsys):
    work = tmp_path / "it's a \"work\" dir $HOME"
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace(f'work_dir = "{remote_env["work"]}"',
                                               f"work_dir = {json.dumps(str(work))}"))
    assert main(["launch", "--headless", "--detach", "--host", "kdtest", "--run-name", "again-1",
                 *launch_flags(tiny_run_inputs, 100000, 0, "--checkpoint-every", "0")]) == 0
    events = work / "runs" / "again-1" / "events.jsonl"

    def wait_for_steps(parts: int) -> None:
        deadline = time.monotonic() + 150  # an engine's start-up on a busy 2-core machine
        while True:
            text = events.read_text() if events.exists() else ""
            if text.count('"run_started"') == parts and '"step"' in text.rsplit(
                    '"run_started"', 1)[-1]:
                return
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.1)

    def cancel() -> None:
        capsys.readouterr()
        assert main(["cancel", "again-1"]) == 0
        assert capsys.readouterr().out.startswith("again-1 on kdtest: cancelled")

    wait_for_steps(1)
    cancel()
    manifest = remote_env["evidence"] / "again-1" / "dispatch.json"
    before = json.loads(manifest.read_text())
    step = max(e["step"] for e in map(json.loads, events.read_text().splitlines())
               if e["type"] == "checkpoint")  # the cancel's own checkpoint
    code = main(["launch", "--headless", "--host", "kdtest", "--run-name", "again-1",
                 *launch_flags(tiny_run_inputs, 4, 0, "--checkpoint-every", "0")])
    out = capsys.readouterr().out
    assert code == 2, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("[preflight] failed")]
    assert line.endswith("already holds a run (cancelled): pick another --run-name, or "
                         f"continue it from its checkpoint at step {step} with `kdtui resume "
                         "again-1`, or look at it with `kdtui watch again-1`"), line
    after = json.loads(manifest.read_text())
    for key in ("run_finished", "state", "verdict", "segments", "launched", "pid"):
        assert after.get(key) == before.get(key), key

    assert main(["resume", "again-1", "--headless", "--detach"]) == 0, capsys.readouterr()
    wait_for_steps(2)
    cancel()
    parts = [e for e in map(json.loads, events.read_text().splitlines())
             if e["type"] in ("run_started", "run_finished")]
    assert [e["type"] for e in parts] == ["run_started", "run_finished"] * 2
    assert parts[2].get("resumed_from") and parts[1]["status"] == parts[3]["status"] == \
        "cancelled"
    assert (work / "envs").is_dir() and not (tmp_path / "it's a ").exists()
