"""A teacher-cache job dispatched over real SSH (the dashboard's F4 with a host on the form): the
run's stages with `kdengine cache-teacher` as the engine, to a complete cache in the remote job
dir; then the user's next step (`t` fills teacher_cache, the form dispatches to the same host): a
remote run that trains on that cache. A second dispatch of the same job is refused at preflight
(its dir holds a finished job, as for any run id) and rescores nothing: the remote check meets
the engine's "complete" answer only on a cache copied into the job's dir
(test_cache_job_check.py); R, which
finishes a stopped job (test_cache_job_resume.py), says this one is complete."""

from __future__ import annotations

import asyncio
import json

import pytest

from kdengine.config import RunConfig
from kdengine.events import read_events
from kdengine.verdict import CACHE_JOB, PASS, verdict_for_run
from kdtui.launch.cache_job import CacheOptions
from kdtui.launch.cache_remote import RemoteCacheLauncher
from kdtui.launch.remote import DispatchError, RemoteLauncher
from kdtui.launch.resume import RemoteResumer, ResumeRefused

pytestmark = pytest.mark.ssh

STAGES = ["preflight", "sync", "check", "models", "launch", "manifest"]


async def follow_to_end(launcher, updates: list) -> dict:
    """Dispatch, then follow the handle until the engine's run_finished (generous budget)."""
    handle = await launcher.start(updates.append)
    try:
        for _ in range(1200):
            state = await handle.status()
            if state.get("finished"):
                return state
            await asyncio.sleep(0.1)
        raise AssertionError(f"{launcher.run_id} did not finish: {state}")
    finally:
        await handle.close()


def ended(updates: list) -> list:
    return [u for u in updates if u.state not in ("running", "pending")]


def test_remote_cache_job_writes_a_complete_cache_a_remote_run_trains_on(remote_env,
                                                                         tiny_run_inputs):
    inputs = tiny_run_inputs
    job = RunConfig.from_mapping(dict(teacher=inputs["teacher"], data=inputs["data"], seq_len=32,
                                      device="cpu", dtype="float32", run_name="rcache"))
    updates: list = []
    state = asyncio.run(follow_to_end(
        RemoteCacheLauncher(job, CacheOptions(top_k=4), "kdtest"), updates))
    assert state["finished"]["status"] == "completed", state
    assert [u.stage for u in ended(updates)] == STAGES
    assert all(u.state in ("done", "skipped") for u in ended(updates))
    check = next(u for u in ended(updates) if u.stage == "check")
    assert check.detail == "arguments accepted; the job's config matches"

    cache_dir = remote_env["work"] / "runs" / "rcache"
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["k"] == 4 and manifest["targets"] == "topk"
    events = read_events(cache_dir / "events.jsonl")
    assert events[0]["job"] == CACHE_JOB
    verdict = verdict_for_run(str(cache_dir))
    assert verdict.status == PASS and verdict.id == CACHE_JOB
    dispatch = json.loads((remote_env["evidence"] / "rcache" / "dispatch.json").read_text())
    assert dispatch["run_id"] == "rcache" and dispatch["host"] == "kdtest"
    assert dispatch["remote_run_dir"] == str(cache_dir)
    assert dispatch["engine_command"][1:4] == ["-m", "kdengine", "cache-teacher"]
    assert [s["stage"] for s in dispatch["attempts"][-1]["stages"]] == STAGES

    # the form, filled by `t`, dispatched to the same host: a run on the remote cache
    run = RunConfig.from_mapping(dict(
        teacher=inputs["teacher"], student=inputs["student"], data=inputs["data"],
        teacher_cache=str(cache_dir), seq_len=32, device="cpu", dtype="float32", steps=4,
        batch_size=2, eval_every=2, eval_batches=1, checkpoint_every=0, log_every=1,
        run_name="on-rcache"))
    run_updates: list = []
    state = asyncio.run(follow_to_end(RemoteLauncher(run, "kdtest"), run_updates))
    assert state["finished"]["status"] == "completed", state
    started = read_events(remote_env["work"] / "runs" / "on-rcache" / "events.jsonl")[0]
    assert started["teacher_cache"]["dir"] == str(cache_dir)
    assert started["teacher_cache"]["k"] == 4
    assert started["teacher_cache"]["key"] == manifest["key"]

    # the same job again: its dir holds a finished job, so preflight refuses; nothing rescored
    again: list = []
    with pytest.raises(DispatchError, match="already holds a run"):
        asyncio.run(RemoteCacheLauncher(job, CacheOptions(top_k=4), "kdtest").start(
            again.append))
    assert [u.stage for u in again if u.state == "failed"] == ["preflight"]
    assert read_events(cache_dir / "events.jsonl") == events
    # R on it (the way to finish a stopped job) says it is complete and what to do with it
    resumed: list = []
    with pytest.raises(ResumeRefused, match=f"^rcache is complete: train with --teacher-cache "
                       f"{cache_dir}$"):
        asyncio.run(RemoteResumer(remote_env["evidence"] / "rcache" / "dispatch.json").start(
            resumed.append))
    assert [u.stage for u in resumed if u.state == "failed"] == ["connect"]
    assert read_events(cache_dir / "events.jsonl") == events
