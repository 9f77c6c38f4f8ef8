"""R on a teacher-cache job cancelled on an SSH host (real sshd) finishes it there: RemoteResumer
runs the dispatch's own `kdengine cache-teacher` command again in the job dir, through the
agent with a launch token, and adds a resume segment to the dispatch.json; the engine keeps
what was written and completes the cache."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from kdengine.config import RunConfig
from kdengine.events import read_events
from kdengine.verdict import PASS, verdict_for_run
from kdtui.launch.cache_job import CacheOptions
from kdtui.launch.cache_remote import RemoteCacheLauncher
from kdtui.launch.resume import RemoteResumer

pytestmark = pytest.mark.ssh

BUDGET_S = 240.0  # generous: the job takes seconds


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + BUDGET_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def events_of(job_dir) -> list[dict]:
    path = job_dir / "events.jsonl"
    return read_events(path) if path.exists() else []


async def follow_to_end(handle) -> dict:
    """The agent's status once the engine has ended (a resume's engine, alive, may still show
    the earlier attempt's run_finished until it writes its run_started)."""
    try:
        while not (state := await handle.status()).get("finished") or state.get("alive"):
            await asyncio.sleep(0.1)
        return state
    finally:
        await handle.close()


@pytest.mark.timeout(600)
async def test_r_finishes_a_cancelled_remote_cache_job(remote_env, tiny_run_inputs):
    inputs = tiny_run_inputs
    job = RunConfig.from_mapping(dict(teacher=inputs["teacher"], data=inputs["data"], seq_len=32,
                                      device="cpu", dtype="float32", run_name="rcache-r"))
    handle = await RemoteCacheLauncher(job, CacheOptions(top_k=4), "kdtest").start(
        lambda update: None)
    job_dir = remote_env["work"] / "runs" / "rcache-r"
    # cancelled while it scores: paused first, so the SIGTERM lands before its end on any load
    await until(lambda: any(e["type"] == "stage" and e["stage"] == "score"
                            for e in events_of(job_dir)), "the score stage")
    pid = int((job_dir / "engine.pid").read_text())
    for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGCONT):
        os.killpg(pid, sig)
    state = await follow_to_end(handle)
    assert state["finished"]["status"] == "cancelled", state
    assert not json.loads((job_dir / "manifest.json").read_text())["complete"]

    manifest_path = remote_env["evidence"] / "rcache-r" / "dispatch.json"
    resumer = RemoteResumer(manifest_path)
    dispatched = json.loads(manifest_path.read_text())["engine_command"]
    assert resumer.resume_argv() == dispatched  # the job's own command: it finishes in place
    updates: list = []
    state = await follow_to_end(await resumer.start(updates.append))
    assert state["finished"]["status"] == "completed", state
    ended = [(u.stage, u.state) for u in updates if u.state not in ("running", "pending")]
    assert ended == [("connect", "done"), ("sync", "skipped"), ("resume", "done"),
                     ("manifest", "done")]  # sync: the job's venv is there
    connect = next(u for u in updates if u.stage == "connect" and u.state == "done")
    # the update names the host (connect.host); the detail does not repeat it ("box: box: ...")
    assert connect.detail == "cancelled, the job's finished shards kept"

    cache = json.loads((job_dir / "manifest.json").read_text())
    assert cache["complete"]
    assert len(list(job_dir.glob("shard-*.done"))) == cache["shards"]
    assert verdict_for_run(str(job_dir)).status == PASS
    started = [e for e in read_events(job_dir / "events.jsonl") if e["type"] == "run_started"]
    assert [e["resumed_from"] for e in started] == [None, 0]  # a continued job, no shard yet
    dispatch = json.loads(manifest_path.read_text())
    assert [s["kind"] for s in dispatch["segments"]] == ["dispatch", "resume"]
    assert dispatch["segments"][-1]["token"].startswith("rcache-r-resume-")
    assert [a["kind"] for a in dispatch["attempts"]] == ["dispatch", "resume"]
