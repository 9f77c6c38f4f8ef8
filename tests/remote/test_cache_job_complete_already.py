"""A teacher-cache job dispatched over real SSH onto a cache that is complete already: the check
stage says so ('nothing to score') and the launch then started an engine that printed 'nothing
to do', exited 0 and wrote no event, so the launch stage failed ('the engine exited within
...'). Now the engine records the job's part as completed (complete_already), the launch sees
it finished and the dashboard follows a job that reads COMPLETE."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from kdengine.config import RunConfig
from kdengine.events import read_events
from kdengine.verdict import CACHE_JOB, verdict_from_events
from kdtui.launch.cache_job import CacheOptions
from kdtui.launch.cache_remote import RemoteCacheLauncher

pytestmark = pytest.mark.ssh


def test_a_dispatch_onto_a_complete_cache_ends_as_a_complete_job(
        remote_env, tiny_run_inputs, write_complete_cache) -> None:
    job_dir = remote_env["work"] / "runs" / "rcache-done"
    shards = write_complete_cache(tiny_run_inputs, job_dir)  # copied in: its files, no events
    updates: list = []

    async def dispatch() -> None:
        config = RunConfig.from_mapping(dict(teacher=tiny_run_inputs["teacher"],
                                             data=tiny_run_inputs["data"], seq_len=32,
                                             device="cpu", dtype="float32",
                                             run_name="rcache-done"))
        handle = await RemoteCacheLauncher(config, CacheOptions(top_k=4),
                                           "kdtest").start(updates.append)
        await handle.close()

    try:
        asyncio.run(dispatch())  # before: DispatchError, the launch stage failed
        deadline = time.monotonic() + 120  # the engine may still start (a loaded machine)
        events: list = []
        while not any(e["type"] == "run_finished" for e in events):
            assert time.monotonic() < deadline, events
            time.sleep(0.2)
            path = job_dir / "events.jsonl"
            events = read_events(path) if path.exists() else []
        shards_after = sorted(p.name for p in job_dir.glob("shard-*"))
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    ends = {u.stage: u for u in updates if u.state in ("done", "failed", "skipped")}
    assert ends["check"].state == "done" and "complete already" in ends["check"].detail
    assert ends["launch"].state == "done", ends["launch"].detail
    # it ended before the alive check (else alive then, its end in its events)
    detail = ends["launch"].detail
    assert detail.endswith(": the cache is complete already, nothing to score") or \
        " alive after " in detail, detail
    assert shards_after == shards  # nothing scored again
    assert events[0]["type"] == "run_started" and events[0]["job"] == CACHE_JOB
    assert events[0]["complete_already"] is True
    finished = events[-1]
    assert (finished["type"], finished["status"], finished["exit_code"]) == \
        ("run_finished", "completed", 0)
    assert finished["complete_already"] is True and finished["bytes"] > 0
    assert {(e["stage"], e["state"]) for e in events if e["type"] == "stage"} == {
        (s, "skipped") for s in ("prepare", "load_teacher", "data", "score")}
    assert verdict_from_events(events).status == "pass"  # the panel's COMPLETE
