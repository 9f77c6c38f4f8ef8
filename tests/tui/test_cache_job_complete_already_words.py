"""A teacher-cache job launched onto a cache that is complete already: the check stage says
'complete already' and the launch, seeing the engine end within its alive check, said 'pid N,
already completed' (two wordings of one fact, next to each other in the stage tracker); the
local launcher's check said nothing at all. Now both launchers' check stages say '... holds
this cache complete already (N bytes): nothing to score', and a launch that sees such a job end
says 'complete already' too (kdtui.launch.cache_job.launch_ended_note, used by the remote
launch stage)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from kdengine.config import RunConfig
from kdengine.events import read_events
from kdtui.launch.cache import LocalCacheLauncher
from kdtui.launch.cache_job import CacheOptions, launch_ended_note


def test_a_complete_cache_is_complete_already_in_every_stage(
        tiny_run_inputs, runs_dir: Path, write_complete_cache):
    job_dir = runs_dir / "cache-done"
    write_complete_cache(tiny_run_inputs, job_dir, copied=False)
    config = RunConfig.from_mapping(dict(teacher=tiny_run_inputs["teacher"],
                                         data=tiny_run_inputs["data"], seq_len=32,
                                         device="cpu", dtype="float32", run_name="cache-done"))
    updates: list = []
    launcher = LocalCacheLauncher(config, CacheOptions(top_k=4), runs_dir)
    handle = asyncio.run(launcher.start(updates.append))
    ends = {u.stage: u for u in updates if u.state in ("done", "failed", "skipped")}
    assert ends["check"].state == "done", ends["check"].detail
    assert ends["check"].detail.startswith(f"{job_dir} holds this cache complete already ("), \
        ends["check"].detail
    assert ends["check"].detail.endswith(" bytes): nothing to score")
    assert ends["start"].state == "done" and ends["start"].detail.startswith("pid ")
    deadline = time.monotonic() + 120
    while handle.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    finished = read_events(job_dir / "events.jsonl")[-1]
    assert finished["type"] == "run_finished" and finished["complete_already"] is True
    # what a launch stage says of an engine that ended within its alive check
    said = launch_ended_note(4242, finished, 1.5)
    assert said == "pid 4242: the cache is complete already, nothing to score", said
    assert launch_ended_note(4242, {**finished, "complete_already": False}, 1.5) == \
        "pid 4242, completed within 1.5s"
