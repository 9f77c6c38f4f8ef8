"""R on a stopped teacher-cache job finishes it: a tiny real `kdengine cache-teacher` (many small
shards) cancelled after its first shards, opened on the run screen, R runs the job's own command
again in its directory; the run screen follows the new attempt (not the first attempt's end) to
a complete cache, every shard present and the shards written before the cancel untouched. The
complete job offers Train from cache, not Resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdengine.events import read_events
from kdtui.app import KDApp
from kdtui.launch.cache_resume import LocalCacheResumer
from kdtui.launch.resume import ResumeRefused
from kdtui.launch.resumers import resumer_for
from kdtui.palette import bindings_for
from kdtui.runs import PID_FILE, run_info
from kdtui.screens.run import RunScreen
from kdtui.widgets.cache_job import CacheJobPanel

SHARD_ROWS = 16  # ~60 shards of the tiny data: the cancel lands with most of them left
BUDGET_S = 240.0  # generous: the job takes seconds


def until(condition, what: str) -> None:
    deadline = time.monotonic() + BUDGET_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def job_flags(inputs: dict[str, str], *extra: str) -> list[str]:
    """`kdengine cache-teacher`'s flags for a tiny job of many small shards."""
    return ["--teacher", inputs["teacher"], "--data", inputs["data"], "--seq-len", "32",
            "--device", "cpu", "--dtype", "float32", "--top-k", "4", "--shard-rows",
            str(SHARD_ROWS), *extra]


def start_job(run_dir: Path, flags: list[str]) -> subprocess.Popen[bytes]:
    """The job started in `run_dir` as LocalCacheLauncher starts it: its own session, output in
    launch.log, its pid in the pid file."""
    run_dir.mkdir()
    command = [sys.executable, "-m", "kdengine", "cache-teacher", *flags, "--out", str(run_dir)]
    with open(run_dir / "launch.log", "ab") as log:
        engine = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (run_dir / PID_FILE).write_text(f"{engine.pid}\n")
    return engine


def cancel_after_first_shard(run_dir: Path, process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the dashboard's stop) once a shard is written: the engine is paused first, so
    the signal lands with shards left whatever the machine's load."""
    until(lambda: (run_dir / "events.jsonl").exists() and any(
        e["type"] == "step" and "write_s" in e for e in read_events(run_dir / "events.jsonl")),
        "the first shard")
    os.killpg(process.pid, signal.SIGSTOP)
    os.killpg(process.pid, signal.SIGTERM)
    os.killpg(process.pid, signal.SIGCONT)
    assert process.wait(BUDGET_S) == 143  # 128 + SIGTERM, as a train run's


@pytest.mark.timeout(600)
async def test_r_finishes_a_cancelled_cache_job_keeping_its_finished_shards(
        runs_dir, tiny_run_inputs, wait_for, wait_for_run):
    run_dir = runs_dir / "cjob"
    engine = start_job(run_dir, job_flags(tiny_run_inputs))
    cancel_after_first_shard(run_dir, engine)
    assert run_info(run_dir).status == "cancelled"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    done = sorted(run_dir.glob("shard-*.done"))
    assert 1 <= len(done) < manifest["shards"] and not manifest["complete"]
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.glob("shard-*")
            if p.with_suffix(".done").exists()}

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.open_run(str(run_dir))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        first = app.screen
        assert first.cache_job
        await wait_for(pilot, lambda: first.watched.status == "cancelled", 30)
        await pilot.press("R")
        await wait_for(pilot, lambda: app.screen is not first
                       and isinstance(app.screen, RunScreen), 30)
        screen = app.screen
        assert isinstance(screen.launcher, LocalCacheResumer) and screen.cache_job
        # the first attempt's run_finished (cancelled) does not end it: the new attempt's does
        await wait_for_run(pilot, run_dir, lambda: (screen.state.finished or {}).get(
            "status") == "completed" and screen.query_one(CacheJobPanel).verdict is not None,
            "the resumed job's end")
        assert screen.query_one(CacheJobPanel).verdict.status == "pass"
        tracker = screen.query_one("#stages")
        assert tracker.rows["check"].state == "done" and tracker.rows["resume"].state == "done"
        assert f"{len(done)} of {manifest['shards']} shards written" in \
            tracker.rows["check"].detail

        # the complete job offers no Resume (footer, F1 help, palette), but Train from cache
        await wait_for(pilot, lambda: screen.check_action("train_from_cache", ()), 10)
        keys = {binding.action for _, binding in bindings_for(screen, app)}
        assert "resume" not in keys and "train_from_cache" in keys, keys

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["complete"]
    assert len(list(run_dir.glob("shard-*.done"))) == manifest["shards"]
    for path, (mtime, data) in kept.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, path
    events = read_events(run_dir / "events.jsonl")
    started = [e for e in events if e["type"] == "run_started"]
    # the engine marks the continued attempt with the rows its finished shards hold
    assert [e["resumed_from"] for e in started] == [None, SHARD_ROWS * len(done)]
    assert [e["seq"] for e in events] == list(range(len(events)))
    with pytest.raises(ResumeRefused, match="^cjob is complete: train with --teacher-cache "):
        resumer_for(str(run_dir), runs_dir)


@pytest.mark.timeout(600)
async def test_r_finishes_a_sampled_job_to_the_bytes_of_an_uninterrupted_one(
        runs_dir, tiny_run_inputs):
    """A sampled job's draws depend on its seed and rows per batch: R runs the job again with
    both as first asked (its run_started records them), so the finished cache is byte for byte
    the cache of the same command run without a stop."""
    flags = job_flags(tiny_run_inputs, "--cache-targets", "sampled", "--seed", "7",
                      "--rows-per-batch", "3")
    whole = runs_dir / "whole"
    subprocess.run([sys.executable, "-m", "kdengine", "cache-teacher", *flags, "--out",
                    str(whole)], check=True, capture_output=True, timeout=BUDGET_S)
    run_dir = runs_dir / "stopped"
    engine = start_job(run_dir, flags)
    cancel_after_first_shard(run_dir, engine)

    resumer = resumer_for(str(run_dir), runs_dir)
    assert isinstance(resumer, LocalCacheResumer)
    command = resumer.command()
    for flag, value in (("--seed", "7"), ("--rows-per-batch", "3"),
                        ("--cache-targets", "sampled")):
        assert command[command.index(flag) + 1] == value, command
    handle = await resumer.start(lambda update: None)
    assert handle.process.wait(BUDGET_S) == 0
    assert json.loads((run_dir / "manifest.json").read_text())["complete"]
    shards = sorted(p.name for p in whole.glob("shard-*"))
    assert shards == sorted(p.name for p in run_dir.glob("shard-*")) and shards
    for name in shards:
        assert (run_dir / name).read_bytes() == (whole / name).read_bytes(), name


@pytest.mark.timeout(600)
async def test_a_killed_cache_job_on_its_run_screen_says_r_finishes_it(
        runs_dir, tiny_run_inputs, wait_for):
    """A cache job's engine killed (no run_finished, no checkpoint: a job has none): the run
    screen says the engine is gone and that R finishes the job."""
    run_dir = runs_dir / "killed"
    engine = start_job(run_dir, job_flags(tiny_run_inputs))
    until(lambda: (run_dir / "events.jsonl").exists() and any(
        e["type"] == "step" and "write_s" in e for e in read_events(run_dir / "events.jsonl")),
        "the first shard")
    os.killpg(engine.pid, signal.SIGSTOP)  # alive and quiet while the screen opens

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.open_run(str(run_dir))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        assert app.screen.cache_job
        os.killpg(engine.pid, signal.SIGKILL)
        engine.wait(BUDGET_S)
        await wait_for(pilot, lambda: any("R to finish the job" in str(n.message)
                                          for n in app._notifications), 60)
        assert [n.message for n in app._notifications if n.title == "The engine is gone"] == \
            ["Press R to finish the job (its finished shards are kept)"]


@pytest.mark.timeout(600)
def test_a_killed_cache_job_watched_headless_says_how_to_finish_it_and_that_command_does(
        runs_dir, tiny_run_inputs):
    """`kdtui watch --headless` of a cache job whose engine was killed (no checkpoint: a job
    has none) ends with the command that finishes it, and that command, run headless, does."""
    run_dir = runs_dir / "killed"
    engine = start_job(run_dir, job_flags(tiny_run_inputs))
    until(lambda: (run_dir / "events.jsonl").exists() and any(
        e["type"] == "step" and "write_s" in e for e in read_events(run_dir / "events.jsonl")),
        "the first shard")
    os.killpg(engine.pid, signal.SIGKILL)
    engine.wait(BUDGET_S)
    kdtui = [sys.executable, "-m", "kdtui", "--runs-dir", str(runs_dir)]
    watched = subprocess.run([*kdtui, "watch", str(run_dir), "--headless"], capture_output=True,
                             text=True, timeout=BUDGET_S)
    assert "ERROR: the engine is gone without finishing the run" in watched.stdout, watched.stdout
    hint = [line for line in watched.stdout.splitlines() if line.startswith("finish it")]
    assert hint == ["finish it (its finished shards are kept): kdtui resume killed"]
    finished = subprocess.run([*kdtui, *hint[0].split(": ", 1)[1].split()[1:], "--headless"],
                              capture_output=True, text=True, timeout=BUDGET_S)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    ended = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "run_finished"]
    assert ended and ended[-1]["status"] == "completed"
