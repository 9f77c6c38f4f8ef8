"""`kdtui runs` gives the step a run stopped at, not its last logged one: a run logged every
1,000 steps and cancelled at step 40 or so was listed as `1/2000` (its step-1 event), though its
run_finished says where it ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kdengine.events import read_events

TIMEOUT_S = 120


def test_a_cancelled_runs_step_is_where_it_stopped(tmp_path: Path, tiny_run_inputs,
                                                   tiny_args, engine_cmd) -> None:
    runs = Path(os.environ["KDENGINE_RUNS_DIR"])
    run_dir = runs / "stopped-early"
    args = tiny_args(tiny_run_inputs, run_dir, steps=2000, log_every=1000, eval_every=0,
                     checkpoint_every=0)
    engine = subprocess.Popen([*engine_cmd, *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e["type"] == "step" for e in read_events(run_dir / "events.jsonl")):
            assert engine.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.0)  # a few more steps, none of them logged
        os.killpg(engine.pid, signal.SIGTERM)
        assert engine.wait(timeout=TIMEOUT_S) == 143
    finally:
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)
    events = read_events(run_dir / "events.jsonl")
    stopped_at = next(e["steps"] for e in events if e["type"] == "run_finished")
    assert stopped_at > 1 and [e["step"] for e in events if e["type"] == "step"] == [1]
    listed = subprocess.run([sys.executable, "-m", "kdtui", "runs", "--plain"],
                            capture_output=True, text=True, timeout=60)
    line = next(row for row in listed.stdout.splitlines() if row.startswith("stopped-early\t"))
    assert line.split("\t")[2:4] == ["cancelled", f"{stopped_at}/2000"], line
