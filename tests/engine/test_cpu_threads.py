"""A CPU run beside other kdengine runs takes the cores they leave (kdengine.cpu_threads): the
choice, the machine-wide note of who holds what, and a real engine that finds a busy machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdengine.cpu_threads import (
    choose_threads,
    first_start_threads,
    note,
    running_threads,
    sharing,
)


def test_a_run_takes_the_cores_the_running_ones_leave_and_at_least_one():
    assert choose_threads(8, [], explicit=False, first_start=None).threads == 8
    assert choose_threads(8, [2, 1], explicit=False, first_start=None).threads == 5
    busy = choose_threads(2, [2], explicit=False, first_start=None)
    assert busy.threads == 1
    assert busy.why == ("cpu: 1 thread of 2: 1 other kdengine run on this machine holds 2 "
                        "(runs sharing cores wait on each other at every op)")


def test_omp_num_threads_is_kept_and_a_resume_keeps_its_first_starts_count():
    assert choose_threads(2, [2, 2], explicit=True, first_start=None).threads == 2
    # the count orders the float sums: a resumed run is exact only at its first count
    resumed = choose_threads(8, [], explicit=False, first_start=3)
    assert resumed.threads == 3 and "as at the run's first start" in resumed.why
    assert choose_threads(8, [8], explicit=False, first_start=8).why == ""


def test_the_note_counts_live_engines_only_and_forgets_the_gone(tmp_path):
    # a live engine (its command line says kdengine), and a recycled pid that is something else
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kdengine"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        (tmp_path / f"{live.pid}.json").write_text(json.dumps({"threads": 3}))
        (tmp_path / f"{gone.pid}.json").write_text(json.dumps({"threads": 5}))
        (tmp_path / f"{other.pid}.json").write_text(json.dumps({"threads": 6}))
        (tmp_path / "junk.json").write_text("{")
        note(tmp_path, 7)  # this process: never counted as another run
        assert running_threads(tmp_path) == [3]
        assert not (tmp_path / f"{gone.pid}.json").exists()
        assert not (tmp_path / f"{other.pid}.json").exists()
    finally:
        for process in (live, other):
            process.kill()
            process.wait()


def test_a_starting_run_notes_itself_before_it_looks_and_leaves_no_note(tmp_path):
    mine = tmp_path / f"{os.getpid()}.json"
    with sharing(tmp_path, 4, explicit=False, first_start=None) as choice:
        assert choice.threads == 4
        assert json.loads(mine.read_text()) == {"threads": 4}
    assert not mine.exists()


def test_a_cpu_run_on_a_busy_machine_takes_one_thread_and_says_why(
        tmp_path, engine_cmd, tiny_run_inputs, tiny_args, monkeypatch):
    cache = tmp_path / "cache"  # its own note dir: no other test's engines in it
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "kdengine"])
    try:
        note_dir = cache / "cpu-threads"
        note_dir.mkdir(parents=True)
        (note_dir / f"{busy.pid}.json").write_text(json.dumps({"threads": 64}))
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        run_dir = tmp_path / "run"
        subprocess.run([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir, steps=2,
                                                eval_every=2, checkpoint_every=2,
                                                warmup_steps=1)],
                       check=True, capture_output=True, timeout=240,
                       env={**env, "KDENGINE_CACHE": str(cache)})
    finally:
        busy.kill()
        busy.wait()
    started = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
    assert started["env"]["threads"] == 1
    assert first_start_threads(run_dir) == 1  # what a resume of it takes
    log = (run_dir / "launch.log").read_text()
    said = [line for line in log.splitlines() if line.startswith("cpu: ")]
    if os.cpu_count() and os.cpu_count() > 1:
        assert said and said[0].startswith("cpu: 1 thread of "), log[-2000:]
    assert sorted(p.name for p in note_dir.iterdir()) == [f"{busy.pid}.json"]  # its own gone


@pytest.mark.parametrize("content", ["", '{"type": "run_started", "env": {}}'])
def test_a_run_without_a_recorded_count_resumes_with_a_fresh_choice(tmp_path, content):
    (tmp_path / "events.jsonl").write_text(content + ("\n" if content else ""))
    assert first_start_threads(Path(tmp_path)) is None
