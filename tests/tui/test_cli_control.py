"""`kdtui cancel` and `kdtui runs --plain` as a script runs them: real kdtui processes, a real
detached engine run they cancel, its real events.jsonl afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kdengine.events import read_events

KDTUI = [sys.executable, "-m", "kdtui"]


def kdtui(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*KDTUI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def long_run_flags(inputs: dict[str, str], run_name: str) -> list[str]:
    """A run that would take far longer than the test: only a cancel ends it."""
    values = dict(steps=100000, batch_size=4, seq_len=32, lr=3e-3, eval_every=0,
                  eval_batches=2, log_every=1, checkpoint_every=0, temperature=2.0)
    flags = ["--teacher", inputs["teacher"], "--student", inputs["student"],
             "--data", inputs["data"], "--run-name", run_name]
    for key, value in values.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def start_detached(runs_dir: Path, inputs: dict[str, str], run_name: str) -> Path:
    """`kdtui launch --headless --detach`, then wait until the engine trains (its SIGTERM
    handler is in place once steps are written)."""
    started = kdtui("--runs-dir", str(runs_dir), "launch", "--headless", "--detach",
                    *long_run_flags(inputs, run_name))
    assert started.returncode == 0, started.stdout + started.stderr
    run_dir = runs_dir / run_name
    deadline = time.monotonic() + 150  # an engine's start-up on a busy 2-core machine (QUIET_S)
    while not any(e.get("type") == "step" for e in read_events(run_dir / "events.jsonl")):
        assert time.monotonic() < deadline, (run_dir / "launch.log").read_text()
        time.sleep(0.1)
    return run_dir


def engine_pid(run_dir: Path) -> int:
    return int((run_dir / "engine.pid").read_text())


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def test_cancel_ends_a_running_local_run_as_cancelled_then_has_nothing_to_cancel(
        runs_dir, tiny_run_inputs):
    run_dir = start_detached(runs_dir, tiny_run_inputs, "c-local")
    pid = engine_pid(run_dir)
    try:
        done = kdtui("--runs-dir", str(runs_dir), "cancel", "c-local", "--timeout", "30")
    finally:
        if not process_gone(pid, 0):
            os.killpg(pid, 9)  # never leave an engine behind a failed test
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["c-local on local: cancelled (exit code 143)"]
    finished = read_events(run_dir / "events.jsonl")[-1]
    assert finished["type"] == "run_finished"
    assert finished["status"] == "cancelled" and finished["exit_code"] == 143
    assert process_gone(pid), "the engine outlived its cancellation"

    # the runs list says so too, in the dashboard's terms
    listed = kdtui("--runs-dir", str(runs_dir), "runs", "--plain")
    assert listed.returncode == 0, listed.stderr
    run_id, where, status, steps, verdict, started = listed.stdout.splitlines()[0].split("\t")
    # no verdict event (it ended before its verdict stage): inconclusive, as the run screen and
    # `kdengine verdict` say (kdengine.verdict)
    assert (run_id, where, status, verdict) == ("c-local", "local", "cancelled", "inconclusive")
    step, total = steps.split("/")
    assert int(step) >= 1 and total == "100000"
    assert started.endswith("Z") and started[:4].isdigit()

    # a second cancel, by run directory this time: nothing to cancel, said as such
    again = kdtui("--runs-dir", str(runs_dir), "cancel", str(run_dir), "--timeout", "5")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "c-local on local: already finished: cancelled (exit code 143): nothing to cancel"]


def test_a_second_cancel_right_after_the_first_says_already_finished(runs_dir, tiny_run_inputs):
    """The first cancel returns once run_finished is written, while the engine may still be
    exiting: a second one at once must say the run already finished, not cancel it again."""
    run_dir = start_detached(runs_dir, tiny_run_inputs, "c-twice")
    pid = engine_pid(run_dir)
    try:
        first = kdtui("--runs-dir", str(runs_dir), "cancel", "c-twice", "--timeout", "30")
        second = kdtui("--runs-dir", str(runs_dir), "cancel", "c-twice", "--timeout", "30")
    finally:
        if not process_gone(pid, 0):
            os.killpg(pid, 9)
    assert first.stdout.splitlines() == ["c-twice on local: cancelled (exit code 143)"], \
        first.stdout + first.stderr
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "c-twice on local: already finished: cancelled (exit code 143): nothing to cancel"]
    assert [e["type"] for e in read_events(run_dir / "events.jsonl")].count("run_finished") == 1


def test_cancel_of_a_run_that_recorded_its_end_while_its_engine_exits_signals_nothing(
        runs_dir, write_run):
    """run_finished is on record but the engine's process is still there (CUDA teardown takes
    seconds on a GPU box): the run is finished, and the process is left to exit on its own."""
    run_dir = write_run(runs_dir / "exiting", steps=40, upto=10, finished=False)
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"v": 1, "seq": 999, "t": 1_760_000_100.0, "type": "run_finished",
                             "status": "cancelled", "exit_code": 143, "steps": 10}) + "\n")
    # a process named like the engine stands for one that has not exited yet
    exiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                "kdengine"], start_new_session=True)
    (run_dir / "engine.pid").write_text(f"{exiting.pid}\n")
    try:
        again = kdtui("--runs-dir", str(runs_dir), "cancel", "exiting", "--timeout", "5")
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == [
            "exiting on local: already finished: cancelled (exit code 143): nothing to cancel"]
        assert exiting.poll() is None, "a finished run's exiting engine was signalled again"
    finally:
        exiting.kill()
        exiting.wait()


def test_cancel_of_an_unknown_run_is_one_line_naming_it_and_the_fix(runs_dir):
    done = kdtui("--runs-dir", str(runs_dir), "cancel", "xyz")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"kdtui cancel: error: no run 'xyz' under {runs_dir}")
    assert "`kdtui runs --plain` lists them" in lines[0]


def test_cancel_refuses_a_timeout_that_is_not_positive(runs_dir):
    done = kdtui("--runs-dir", str(runs_dir), "cancel", "xyz", "--timeout", "0")
    assert done.returncode == 2
    assert "--timeout must be a number of seconds > 0" in done.stderr


def test_runs_plain_lists_newest_first_and_prints_nothing_without_runs(runs_dir, write_run,
                                                                       monkeypatch):
    empty = kdtui("--runs-dir", str(runs_dir), "runs", "--plain")
    assert (empty.returncode, empty.stdout) == (0, "")
    older = write_run(runs_dir / "older", steps=50)  # finished, as the engine leaves it
    events = older / "events.jsonl"
    # started an hour before the other one (the list orders by when a run started)
    events.write_text("".join(json.dumps({**e, "t": e["t"] - 3600}) + "\n"
                              for e in read_events(events)))
    write_run(runs_dir / "newer", steps=40, upto=10, finished=False)  # its engine is gone
    listed = kdtui("--runs-dir", str(runs_dir), "runs", "--plain")
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t") for line in listed.stdout.splitlines()] == [
        ["newer", "local", "stopped", "10/40", "inconclusive", "2025-10-09T08:53:20Z"],
        ["older", "local", "completed", "50/50", "pass", "2025-10-09T07:53:20Z"],
    ]
    # the same runs, in the same order, for people: padded columns and how to come back, on a
    # terminal wide enough for every column whatever this machine's temp paths (narrower ones:
    # tests/tui/test_runs_command_width.py)
    monkeypatch.setenv("COLUMNS", "400")
    table = kdtui("--runs-dir", str(runs_dir), "runs")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "HOST", "STATE"]
    assert [row.split()[:4] for row in rows] == [["newer", "local", "stopped", "inconclusive"],
                                                 ["older", "local", "completed", "pass"]]
    assert rows[1].endswith(f"kdtui watch {runs_dir / 'older'}")


def test_cancel_of_a_run_kdtui_did_not_start_says_it_cannot_and_exits_1(runs_dir, write_run):
    # a run dir with events but no engine.pid: its engine, if any, is not ours to find
    write_run(runs_dir / "by-hand", steps=40, upto=10, finished=False)
    done = kdtui("--runs-dir", str(runs_dir), "cancel", "by-hand")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"by-hand on local: {runs_dir / 'by-hand'} has no engine.pid (a run kdtui did not "
        "start) and no run_finished: if its engine still runs, stop it with `kill -TERM PID`; "
        "nothing cancelled"]
