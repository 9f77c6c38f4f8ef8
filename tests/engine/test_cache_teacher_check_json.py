"""`kdengine cache-teacher --check` prints the job as JSON (docs/teacher-cache.md) on a complete
cache too, saying it is complete: it printed a text line there ('... is complete already ...;
nothing to do'), which a reader of the promised JSON could not parse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_check_on_a_complete_cache_prints_the_job_as_json_saying_complete(
        tiny_run_inputs, tmp_path, engine_in_process) -> None:
    out = tmp_path / "cache"
    argv = [sys.executable, "-m", "kdengine", "cache-teacher", "--teacher",
            tiny_run_inputs["teacher"], "--data", tiny_run_inputs["data"], "--seq-len", "32",
            "--top-k", "4", "--device", "cpu", "--out", str(out)]
    # the checks through kdengine.cli.main in this process (no torch import to pay again); the
    # job itself as a user runs it
    first = engine_in_process(*argv[3:], "--check")
    assert first.returncode == 0, first.stderr
    todo = json.loads(first.stdout)
    assert todo["ok"] and not todo["complete"]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=300).returncode == 0
    files = sorted(p.name for p in Path(out).iterdir())

    done = engine_in_process(*argv[3:], "--check")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] and answer["complete"] and answer["run_dir"] == str(out)
    assert answer["config"] == todo["config"] and answer["cache"]["key"] == todo["cache"]["key"]
    assert answer["cache"]["bytes"] > 0
    assert sorted(p.name for p in Path(out).iterdir()) == files  # nothing written
