"""The models stage: hub models already in the remote cache are a no-op; a missing or private
repo is one clear error naming the field (no network: the host runs with HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kdengine.config import RunConfig
from kdtui.launch.remote import DispatchError, RemoteLauncher

pytestmark = pytest.mark.ssh


def test_cached_hub_models_are_a_no_op_and_the_run_uses_them(remote_env, tiny_run_inputs,
                                                             hub_cache_layout):
    hub_cache_layout(remote_env["hf_home"] / "hub", "kdtest-org/tiny-teacher",
                     Path(tiny_run_inputs["teacher"]))
    config = RunConfig.from_mapping(dict(
        teacher="kdtest-org/tiny-teacher", student=tiny_run_inputs["student"],
        data=tiny_run_inputs["data"], steps=3, batch_size=2, seq_len=16, eval_every=0,
        eval_batches=1, checkpoint_every=0, run_name="hub-1"))
    updates = []

    async def go():
        handle = await RemoteLauncher(config, "kdtest").start(updates.append)
        await handle.close()
    asyncio.run(go())
    models = [u for u in updates if u.stage == "models" and u.state != "running"]
    assert models[-1].state == "skipped"
    assert "already in the hub cache: kdtest-org/tiny-teacher" in models[-1].detail


def test_missing_hub_repo_is_a_clear_models_error(remote_env, tiny_run_inputs):
    config = RunConfig.from_mapping(dict(
        teacher="kdtest-org/does-not-exist", student=tiny_run_inputs["student"],
        data=tiny_run_inputs["data"], steps=3, run_name="hub-2"))
    updates = []
    with pytest.raises(DispatchError, match="teacher"):
        asyncio.run(RemoteLauncher(config, "kdtest").start(updates.append))
    failed = [u for u in updates if u.state == "failed"]
    # offline, the engine's own --check already knows the repo is not cached; online, the
    # models stage would fail on the hub's 404 with the same field named
    assert [u.stage for u in failed] in (["check"], ["models"])
    assert "kdtest-org/does-not-exist" in failed[0].detail
    assert "not in the local hub cache" in failed[0].detail
    assert not (remote_env["work"] / "runs" / "hub-2").exists()
