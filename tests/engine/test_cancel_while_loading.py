"""A cancel while the engine loads its models stops it at once, not after the load: the demo
teacher's first training (minutes on a loaded small CPU), a model's hub download. Before, the
engine noted the signal and went on training the demo teacher to its end (`kdtui cancel` gave up
after 60 s on a loaded 2-core machine, with the teacher at step 100 of 400)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from kdengine.events import read_events

LOADING_S = 120  # a loaded machine's engine start, torch's import included


def cancel_while_the_demo_teacher_trains(argv: list[str], watched: Path,
                                         cache: Path) -> tuple[int, float]:
    """Start `argv` with no demo teacher cached, SIGTERM it once `watched`/launch.log says the
    teacher trains; (its exit code, seconds from the signal to its end)."""
    env = {**os.environ, "KDENGINE_CACHE": str(cache)}
    engine = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=env, start_new_session=True)
    try:
        log = watched / "launch.log"
        deadline = time.monotonic() + LOADING_S
        while not (log.exists() and "demo teacher: training once" in log.read_text()):
            assert engine.poll() is None and time.monotonic() < deadline, "no teacher training"
            time.sleep(0.1)
        sent = time.monotonic()
        os.killpg(engine.pid, signal.SIGTERM)
        code = engine.wait(timeout=60)
        return code, time.monotonic() - sent
    finally:
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)


def test_sigterm_while_the_demo_teacher_trains_ends_the_run_cancelled_at_once(
        tmp_path: Path, engine_cmd) -> None:
    run_dir = tmp_path / "run"
    code, waited = cancel_while_the_demo_teacher_trains(
        [*engine_cmd, "train", "--demo", "--run-dir", str(run_dir)], run_dir, tmp_path / "cache")
    assert code == 143  # as a cancel at any step ends it
    assert waited < 20, f"the engine took {waited:.0f} s to stop"  # the training: 35 s+ idle
    events = read_events(run_dir / "events.jsonl")
    assert [e["status"] for e in events if e["type"] == "run_finished"] == ["cancelled"]
    stages = [(e["stage"], e["state"]) for e in events if e["type"] == "stage"]
    assert stages[-2:] == [("load_teacher", "running"), ("load_teacher", "cancelled")]
    assert not list((tmp_path / "cache").glob("demo/teacher-*"))  # no half-trained teacher kept


def test_sigterm_while_cache_teacher_trains_the_demo_teacher_ends_it_at_once(
        tmp_path: Path, engine_cmd) -> None:
    out = tmp_path / "cache-job"
    code, waited = cancel_while_the_demo_teacher_trains(
        [*engine_cmd, "cache-teacher", "--teacher", "demo://teacher", "--data",
         "demo://python-stdlib", "--seq-len", "128", "--out", str(out)], out, tmp_path / "cache")
    assert code == 143 and waited < 20, (code, waited)
    events = read_events(out / "events.jsonl")
    assert [e["status"] for e in events if e["type"] == "run_finished"] == ["cancelled"]
