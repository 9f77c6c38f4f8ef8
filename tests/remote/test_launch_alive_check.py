"""The launch's alive check judges the engine it just started: in a run directory whose events
already end with a `run_finished` (a stopped run being resumed), an engine that refuses and
exits at once (a damaged checkpoint: `kdengine train --resume` exits 2 with one line) fails the
stage with that line, instead of passing as `already cancelled` on the earlier part's end."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace

import pytest

from kdengine.config import RunConfig
from kdtui.remote.agent import PID_FILE
from kdtui.remote.connect import open_connection
from kdtui.remote.hosts import get_host
from kdtui.remote.stages import RemotePlan, StageFailed, StageRunner, agent_source, put_bytes
from kdtui.remote.wheel import build_wheel

pytestmark = pytest.mark.ssh

REFUSAL = "kdengine train: error: --resume: checkpoint step-00000060 is damaged"


def test_an_engine_that_exits_at_once_fails_the_launch_though_an_earlier_part_ended(
        remote_env) -> None:
    host = replace(get_host("kdtest"), alive_check_s=0.5)  # the refusal takes ~0.1 s
    plan = RemotePlan.make(host, RunConfig(run_name="stale-end"), build_wheel())
    run_dir = remote_env["work"] / "runs" / "stale-end"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        {"v": 1, "seq": 0, "t": 1.0, "type": "run_started", "run_id": "stale-end"},
        {"v": 1, "seq": 1, "t": 2.0, "type": "run_finished", "status": "cancelled",
         "exit_code": 143, "steps": 72}]))
    (run_dir / PID_FILE).write_text("999999\n")  # the earlier part's engine, long gone
    refusing_engine = [sys.executable, "-c", f"print({REFUSAL!r}); raise SystemExit(2)"]

    async def resume() -> str:
        runner = StageRunner(plan, lambda update: None, kind="resume")
        runner.conn = await open_connection(host)
        try:
            async with runner.conn.start_sftp_client() as sftp:
                await sftp.makedirs(host.agent_dir, exist_ok=True)
                await put_bytes(sftp, agent_source(), plan.agent_path)
            with pytest.raises(StageFailed) as failed:
                await runner.launch("stale-end-resume-1", refusing_engine, name="resume")
            return str(failed.value)
        finally:
            await runner.close()

    said = asyncio.run(resume())
    assert said == f"the engine exited within {host.alive_check_s:g}s: {REFUSAL}"
