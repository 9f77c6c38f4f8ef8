"""The demo teacher is trained once per machine even when two engines start at once (Start twice
in the form, two `kdengine train --demo`): the second waits for the first and uses its teacher,
and a cancel ends the wait as it ends the training."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kdengine.events import read_events

LOADING_S = 120  # a loaded machine's engine start, torch's import included

# a short recipe (the cache key holds it), and a training that waits for the test's go-ahead
_ENGINE = """
import sys, time
from pathlib import Path
import kdengine.demo as demo
demo.TEACHER_STEPS = 3
here = Path(sys.argv[1])
train = demo.train_teacher
def held(say):
    (here / "training").touch()
    while not (here / "go").exists():
        time.sleep(0.05)
    return train(say)
demo.train_teacher = held
print(demo.teacher_path(lambda line: print(line, flush=True)), flush=True)
"""


def _start(here: Path, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _ENGINE, str(here)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "KDENGINE_CACHE": str(cache)})


def _wait_for(what, timeout: float = LOADING_S) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_two_engines_starting_at_once_train_the_demo_teacher_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _start(tmp_path, cache)
    _wait_for(lambda: (tmp_path / "training").exists())
    second = _start(tmp_path, cache)
    said = second.stdout.readline()
    assert said.startswith("demo teacher: another engine on this machine is training it; "
                           "waiting for it"), said + second.stderr.read()
    (tmp_path / "go").touch()
    out1, err1 = first.communicate(timeout=LOADING_S)
    out2, err2 = second.communicate(timeout=LOADING_S)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert out1.count("demo teacher: training once") == 1
    assert "training once" not in out2
    assert out2.startswith("demo teacher: trained by another engine meanwhile, cached at ")
    assert out1.splitlines()[-1] == out2.splitlines()[-1]  # the one teacher's directory
    assert len(list((cache / "demo").glob("teacher-*"))) == 1


def test_a_cancel_while_waiting_for_another_engines_teacher_ends_the_run_at_once(
        tmp_path: Path, engine_cmd) -> None:
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    env = {**os.environ, "KDENGINE_CACHE": str(cache)}
    recipe = subprocess.run([sys.executable, "-c", "import kdengine.demo as d; "
                             "print(f'teacher-{d._recipe_id()}')"], env=env, text=True,
                            capture_output=True, check=True).stdout.strip()
    lock = cache / "demo" / f".{recipe}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as held:  # another engine training the teacher
        fcntl.flock(held, fcntl.LOCK_EX)
        engine = subprocess.Popen([*engine_cmd, "train", "--demo", "--run-dir", str(run_dir)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=env, start_new_session=True)
        try:
            log = run_dir / "launch.log"
            _wait_for(lambda: log.exists() and "waiting for it" in log.read_text())
            sent = time.monotonic()
            os.killpg(engine.pid, signal.SIGTERM)
            assert engine.wait(timeout=60) == 143
            assert time.monotonic() - sent < 20
        finally:
            if engine.poll() is None:
                os.killpg(engine.pid, signal.SIGKILL)
    events = read_events(run_dir / "events.jsonl")
    assert [e["status"] for e in events if e["type"] == "run_finished"] == ["cancelled"]
    assert not list((cache / "demo").glob("teacher-*"))
