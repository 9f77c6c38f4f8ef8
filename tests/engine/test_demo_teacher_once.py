"""The demo teacher is trained once per machine even when two engines start at once (Start twice
in the form, two `kdengine train --demo`): the second waits for the first and uses its teacher,
and a cancel ends the wait as it ends the training."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
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
def held(say, progress):
    (here / "training").touch()
    while not (here / "go").exists():
        time.sleep(0.05)
    return train(say, progress)
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
    # (the other engine's progress, said while waiting, may come first)
    own = [line for line in out2.splitlines() if "another engine's training is at" not in line]
    assert own[0].startswith("demo teacher: trained by another engine meanwhile, cached at ")
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


def test_an_engine_waiting_for_the_teacher_says_how_far_the_others_training_is(
        tmp_path: Path, monkeypatch) -> None:
    """A second Start with the demo waited a minute or more in silence ('waiting for it'): it
    now says the training engine's step lines as they come."""
    from kdengine import demo

    monkeypatch.setattr(demo, "WAIT_POLL_S", 0.02)
    lock, said = tmp_path / ".teacher.lock", []
    holding, release = threading.Event(), threading.Event()

    def train_elsewhere() -> None:
        with demo._training_lock(lock, lambda line: None) as progress:
            progress("step 50/400 ce=2.1000 (3s)")
            holding.set()
            release.wait(30)

    def wait_for_it() -> None:
        with demo._training_lock(lock, said.append):
            said.append("got it")

    trainer = threading.Thread(target=train_elsewhere)
    trainer.start()
    assert holding.wait(10)
    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    try:
        _wait_for(lambda: len(said) >= 2, timeout=10)
    finally:
        release.set()
        trainer.join(10)
        waiter.join(10)
    assert said[0].startswith("demo teacher: another engine on this machine is training it")
    assert said[1] == "demo teacher: another engine's training is at step 50/400 ce=2.1000 (3s)"
    assert said[-1] == "got it" and said.count(said[1]) == 1  # each line once
