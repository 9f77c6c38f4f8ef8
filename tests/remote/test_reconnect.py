"""The watch over SSH survives dropped connections: every event and log line exactly once.

The connection is cut for real, by SIGKILLing the sshd processes that serve it (as a network
cut or a server-side drop would), twice while the run is writing."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from kdengine.config import RunConfig
from kdengine.events import read_events
from kdtui.headless import follow_to_verdict
from kdtui.launch.remote import RemoteLauncher

pytestmark = pytest.mark.ssh


def test_watch_survives_two_killed_connections_without_loss_or_duplicates(
        remote_env, sshd, tiny_run_inputs):
    config = RunConfig.from_mapping(dict(
        teacher=tiny_run_inputs["teacher"], student=tiny_run_inputs["student"],
        data=tiny_run_inputs["data"], steps=100000, batch_size=4, seq_len=32, lr=3e-3,
        eval_every=25, eval_batches=2, log_every=1, checkpoint_every=0, temperature=2.0,
        run_name="cut-1"))
    run_dir = remote_env["work"] / "runs" / "cut-1"
    statuses: list[str] = []

    def steps_written() -> int:
        return sum(1 for e in read_events(run_dir / "events.jsonl") if e.get("type") == "step")

    async def scenario():
        handle = await RemoteLauncher(config, "kdtest", on_status=statuses.append).start(
            lambda u: None)
        out = io.StringIO()

        async def alive() -> bool:
            return bool((await handle.status()).get("alive"))

        async def saboteur() -> list[int]:
            killed = []
            for threshold in (15, 60):
                while steps_written() < threshold:
                    await asyncio.sleep(0.05)
                before = handle.source.reconnects
                killed.append(sshd.kill_connections())
                while handle.source.reconnects == before:  # the watch came back by itself
                    await asyncio.sleep(0.05)
            while steps_written() < 90:
                await asyncio.sleep(0.05)
            await handle.cancel()  # over the re-established link
            return killed

        try:
            watch = asyncio.create_task(follow_to_verdict(handle.source, out=out,
                                                          is_alive=alive,
                                                          asked=handle.asked_config,
                                                          interval=0.05))
            killed = await asyncio.wait_for(saboteur(), 120)
            result = await asyncio.wait_for(watch, 120)
            return result, out.getvalue(), killed, handle.source.reconnects
        finally:
            await handle.close()

    result, printed, killed, reconnects = asyncio.run(scenario())
    assert all(k > 0 for k in killed), killed
    assert reconnects >= 2
    assert any("lost" in s for s in statuses) and any("reconnected" in s for s in statuses)
    # every event of the file, in order, exactly once
    on_disk = read_events(run_dir / "events.jsonl")
    assert [e["seq"] for e in result.events] == [e["seq"] for e in on_disk]
    assert [e["seq"] for e in result.events] == list(range(len(on_disk)))
    assert result.finished is not None and result.finished["status"] == "cancelled"
    assert result.code == 2  # cancelled: inconclusive
    # every log line, in order, exactly once
    log_lines = (run_dir / "launch.log").read_text().splitlines()
    printed_lines = printed.splitlines()
    start = printed_lines.index(log_lines[0])
    assert printed_lines[start:start + len(log_lines)] == log_lines
    assert result.log_lines == len(log_lines)
    assert not result.config_errors
    assert json.dumps(result.events)  # plain data
