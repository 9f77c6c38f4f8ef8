"""The check stage of a teacher-cache job dispatched over real SSH: `kdengine cache-teacher
--check` answers JSON on a complete cache too (docs/teacher-cache.md), and the stage reads it
and says the cache is complete; a refusal of the job's K names it as the launch does
(`--cache-top-k`, as a local job's refusal does), not the engine's `--top-k`."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from kdengine.config import RunConfig
from kdtui.launch.cache_job import CacheOptions
from kdtui.launch.cache_remote import RemoteCacheLauncher
from kdtui.launch.remote import DispatchError

pytestmark = pytest.mark.ssh


def _job(inputs: dict[str, str], run_name: str) -> RunConfig:
    return RunConfig.from_mapping(dict(teacher=inputs["teacher"], data=inputs["data"],
                                       seq_len=32, device="cpu", dtype="float32",
                                       run_name=run_name))


def _check_update(updates: list):
    return next(u for u in updates if u.stage == "check" and u.state in ("done", "failed"))


def test_a_k_beyond_the_vocab_is_refused_at_check_naming_cache_top_k(remote_env,
                                                                     tiny_run_inputs):
    updates: list = []
    launcher = RemoteCacheLauncher(_job(tiny_run_inputs, "rcache-k"), CacheOptions(top_k=300),
                                   "kdtest")
    with pytest.raises(DispatchError):
        asyncio.run(launcher.start(updates.append))
    check = _check_update(updates)
    assert check.state == "failed"
    assert check.detail.endswith("refused the cache job: --cache-top-k: 300 is more than the "
                                 "257 ids of the vocab"), check.detail
    assert not (remote_env["work"] / "runs" / "rcache-k").exists()


def test_the_check_stage_reads_a_complete_cache_from_the_engines_json(
        remote_env, tiny_run_inputs, write_complete_cache):
    # a cache written elsewhere and copied into the job's dir on the host (its files, not the
    # writer's events): the check finds it complete
    job_dir = remote_env["work"] / "runs" / "rcache-copied"
    write_complete_cache(tiny_run_inputs, job_dir)
    updates: list = []

    async def dispatch() -> None:
        launcher = RemoteCacheLauncher(_job(tiny_run_inputs, "rcache-copied"),
                                       CacheOptions(top_k=4), "kdtest")
        try:
            handle = await launcher.start(updates.append)
        except DispatchError:
            return  # what comes after the check is not this test's
        await handle.close()

    try:
        asyncio.run(dispatch())
    finally:
        check = _check_update(updates)
        shutil.rmtree(job_dir, ignore_errors=True)
    assert check.state == "done", check.detail
    assert check.detail.startswith(f"{job_dir} holds this cache complete already ("), \
        check.detail
    assert check.detail.endswith(" bytes): nothing to score")
