"""A run name used again for a new dispatch while the run under it was cancelled part-way: the
refusal says it can be continued (`kdtui resume`), as docs/remote.md promises, not only
watched; and the run's record is kept as it was."""

from __future__ import annotations

import json
import time

import pytest

from kdtui.cli import main

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(240)]


def flags(inputs: dict[str, str], steps: int) -> list[str]:
    return ["--teacher", inputs["teacher"], "--student", inputs["student"], "--data",
            inputs["data"], "--steps", str(steps), "--batch-size", "2", "--seq-len", "16",
            "--eval-every", "0", "--eval-batches", "1", "--log-every", "1", "--device", "cpu",
            "--dtype", "float32", "--checkpoint-every", "0"]


def test_a_dispatch_under_a_cancelled_runs_name_is_refused_with_its_resume(
        remote_env, tiny_run_inputs, capsys):
    assert main(["launch", "--headless", "--detach", "--host", "kdtest", "--run-name",
                 "again-1", *flags(tiny_run_inputs, 100000)]) == 0
    events = remote_env["work"] / "runs" / "again-1" / "events.jsonl"
    deadline = time.monotonic() + 150  # an engine's start-up on a busy 2-core machine
    while "\"step\"" not in (events.read_text() if events.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert main(["cancel", "again-1"]) == 0
    manifest = remote_env["evidence"] / "again-1" / "dispatch.json"
    before = json.loads(manifest.read_text())
    step = max(e["step"] for e in map(json.loads, events.read_text().splitlines())
               if e["type"] == "checkpoint")
    capsys.readouterr()
    code = main(["launch", "--headless", "--host", "kdtest", "--run-name", "again-1",
                 *flags(tiny_run_inputs, 4)])
    out = capsys.readouterr().out
    assert code == 2, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("[preflight] failed")]
    assert line.endswith("already holds a run (cancelled): pick another --run-name, or "
                         f"continue it from its checkpoint at step {step} with `kdtui resume "
                         "again-1`, or look at it with `kdtui watch again-1`"), line
    after = json.loads(manifest.read_text())
    for key in ("run_finished", "state", "verdict", "segments", "launched", "pid"):
        assert after.get(key) == before.get(key), key
