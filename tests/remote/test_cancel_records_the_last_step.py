"""A remote run cancelled with `kdtui cancel` showed `-` for its step in the runs list (`kdtui
runs --plain` too): only a watch recorded the engine's last step in the dispatch.json. The
cancel now records it too, from the run_finished it waits for (its `steps`), and the runs list
reads that run_finished's step where a manifest recorded none (a cancel before this change).

The run is a stand-in for the engine on the test sshd: a process that, on SIGTERM, ends its
events as the engine's cancel does (run_finished cancelled, exit code 143, steps), so the real
agent, link and cancel path run without an engine's minute of start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdtui.cli import main as kdtui_main
from kdtui.runs import all_runs

pytestmark = pytest.mark.ssh

STAND_IN = r"""
import json, signal, sys, time
events = sys.argv[1]
def stop(*_):
    with open(events, "a") as fh:
        fh.write(json.dumps({"v": 1, "seq": 99, "t": time.time(), "type": "run_finished",
                             "status": "cancelled", "exit_code": 143, "steps": 12}) + "\n")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def running_on_kdtest(launched_on_down_host):
    """A dispatch.json for a run on kdtest, its engine (the stand-in) at step 12 of 40."""
    manifest = launched_on_down_host("cx-steps")
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "host": "kdtest"}))
    run_dir = Path(data["remote_run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    events = run_dir / "events.jsonl"
    lines = [{"type": "run_started", "run_id": "cx-steps", "config": {"steps": 40}}]
    lines += [{"type": "step", "step": s, "loss": 3.0, "total_steps": 40} for s in (1, 6, 12)]
    events.write_text("".join(json.dumps({"v": 1, "seq": i, "t": time.time(), **e}) + "\n"
                              for i, e in enumerate(lines)))
    # (the agent takes a pid for the run's only where its command line names kdengine)
    engine = subprocess.Popen([sys.executable, "-c", STAND_IN, str(events), "kdengine-stand-in"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert engine.stdout.readline().strip() == "ready"
    (run_dir / "engine.pid").write_text(f"{engine.pid}\n")
    yield manifest
    if engine.poll() is None:
        engine.kill()
    engine.wait()


def test_a_cancelled_remote_run_lists_the_step_it_stopped_at(running_on_kdtest, capsys):
    assert kdtui_main(["cancel", "cx-steps", "--timeout", "30"]) == 0, capsys.readouterr()
    assert capsys.readouterr().out.splitlines() == ["cx-steps on kdtest: cancelled (exit code "
                                                    "143)"]
    data = json.loads(running_on_kdtest.read_text())
    assert data["run_finished"]["steps"] == 12 and data["engine_last_step"] == 12
    entry = next(e for e in all_runs(Path(os.environ["KDENGINE_RUNS_DIR"]))
                 if e.run_id == "cx-steps")
    assert (entry.status, entry.step, entry.total_steps) == ("cancelled", 12, 40)
    assert kdtui_main(["runs", "--plain"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cx-steps\t"))
    assert line.split("\t")[2:4] == ["cancelled", "12/40"], line


def test_a_run_cancelled_before_the_step_was_recorded_lists_its_run_finished_step(
        launched_on_down_host):
    # what a cancel wrote before: run_finished (with its steps), no engine_last_step
    manifest = launched_on_down_host("cx-before")
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "run_finished": {
        "type": "run_finished", "status": "cancelled", "exit_code": 143, "steps": 7}}))
    entry = next(e for e in all_runs(Path(os.environ["KDENGINE_RUNS_DIR"]))
                 if e.run_id == "cx-before")
    assert (entry.status, entry.step) == ("cancelled", 7)
