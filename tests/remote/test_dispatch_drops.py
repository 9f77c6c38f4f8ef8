"""A dispatch whose SSH session is killed in the middle of a stage never orphans its run.

The session is cut for real (the sshd processes serving it SIGKILLed) while sync, check, models
or launch runs: the stage reconnects and finishes (the launch finds the engine it started by its
token, never a second one), or, when the link stays down, the dispatch fails in one line, and
the engine it may have started has a manifest that `kdtui runs`, `watch` and `cancel` find.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from kdengine.config import RunConfig
from kdtui.cli import main as kdtui_main
from kdtui.launch.remote import RemoteLauncher

pytestmark = pytest.mark.ssh

LONG = dict(steps=100000, batch_size=2, seq_len=16, eval_every=0, eval_batches=1,
            checkpoint_every=0, log_every=50)
def cut_when(sshd, stages: dict[str, str]):
    """An on_stage callback that kills the session once per stage in `stages`, at its first
    output line starting with the text given; `cut` lists the stages it was cut in."""
    cut: list[str] = []

    def on_stage(update) -> None:
        start = stages.get(update.stage)
        if start is not None and update.stage not in cut and \
                any(line.startswith(start) for line in update.output):
            assert sshd.kill_connections() > 0
            cut.append(update.stage)
    return on_stage, cut


def test_a_session_killed_during_sync_check_and_models_reconnects_and_finishes_each(
        remote_env, sshd, tiny_run_inputs, tmp_path, capsys, hub_cache_layout):
    """One dispatch, cut once in each of the three stages as it sends its command: each stage
    reconnects and finishes, and the run starts once, with its manifest."""
    # a hub id in the host's cache: the models stage runs the agent's pull
    hub_cache_layout(remote_env["hf_home"] / "hub", "kdtest-org/drop-teacher",
                     Path(tiny_run_inputs["teacher"]))
    # a work dir of its own: no venv there yet, so the sync stage builds one
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace(str(remote_env["work"]),
                                               str(tmp_path / "fresh-work"), 1))
    config = RunConfig.from_mapping(dict(LONG, teacher="kdtest-org/drop-teacher",
                                         student=tiny_run_inputs["student"],
                                         data=tiny_run_inputs["data"], run_name="drop-1"))
    on_stage, cut = cut_when(sshd, {"sync": "$ ", "check": "$ ", "models": "$ "})
    updates = []

    def both(update) -> None:
        updates.append(update)
        on_stage(update)

    async def dispatch():
        handle = await RemoteLauncher(config, "kdtest").start(both)
        await handle.close()
        return handle
    handle = asyncio.run(dispatch())
    assert cut == ["sync", "check", "models"]
    for stage in cut:
        output = [line for u in updates if u.stage == stage for line in u.output]
        assert any("reconnecting to finish " + stage in line for line in output), output
        assert [u.state for u in updates if u.stage == stage][-1] in ("done", "skipped")
    manifest = json.loads(handle.manifest.read_text())
    assert manifest["launched"] and manifest["launch_confirmed"]
    assert manifest["pid"] == handle.pid
    capsys.readouterr()
    assert kdtui_main(["runs", "--plain"]) == 0
    assert any(line.startswith("drop-1\tkdtest\t")
               for line in capsys.readouterr().out.splitlines())
    os.killpg(handle.pid, signal.SIGKILL)  # cancelling is the launch case's business


def test_a_session_killed_while_launch_checks_the_engine_leaves_a_run_that_is_found(
        remote_env, sshd, tiny_run_inputs, capsys, monkeypatch):
    """The issue's case: the link dies as the launch stage checks the engine it started is
    alive. With the link back, the launch finds its engine by token (no second one); with it
    gone for good, one line and exit 2, and the manifest written before the start lets `kdtui
    runs`/`cancel` find the engine."""
    import kdtui.remote.stages as stages

    monkeypatch.setattr(stages, "STAGE_RETRIES", 0)  # the link does not come back in time
    flags = [x for k, v in LONG.items() for x in ("--" + k.replace("_", "-"), str(v))]
    argv = ["launch", "--headless", "--host", "kdtest", "--run-name", "drop-launch",
            "--teacher", tiny_run_inputs["teacher"], "--student", tiny_run_inputs["student"],
            "--data", tiny_run_inputs["data"], *flags]
    on_stage, cut = cut_when(sshd, {"launch": "engine pid"})
    from kdtui.headless import StagePrinter

    class CuttingPrinter(StagePrinter):
        def __call__(self, update) -> None:
            super().__call__(update)
            on_stage(update)
    monkeypatch.setattr("kdtui.headless.StagePrinter", CuttingPrinter)
    code = kdtui_main(argv)
    captured = capsys.readouterr()
    assert cut, captured.out
    assert code == 2, captured.out
    assert "Traceback" not in captured.out + captured.err
    error = [line for line in captured.out.splitlines() if line.startswith("ERROR:")]
    assert len(error) == 1 and "the engine may have started" in error[0], captured.out
    assert "kdtui cancel drop-launch" in error[0]
    manifest = json.loads((remote_env["evidence"] / "drop-launch" / "dispatch.json").read_text())
    assert manifest["launched"] and not manifest["launch_confirmed"]
    capsys.readouterr()
    assert kdtui_main(["runs", "--plain"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("drop-launch\t"))
    code = kdtui_main(["cancel", "drop-launch", "--timeout", "120"])
    said = capsys.readouterr().out
    assert "\tunconfirmed\t" in listed, listed
    assert code == 0 and "cancelled" in said, said

    # the same launch sent again (its token) answers the engine it started, never a second one
    from kdtui.remote.hosts import get_host
    from kdtui.remote.stages import RemotePlan
    from kdtui.remote.wheel import build_wheel

    plan = RemotePlan.make(get_host("kdtest"), RunConfig.from_mapping(manifest["config"]),
                           build_wheel())
    again = subprocess.run(["bash", "-c", plan.launch(manifest["launch_token"]).text],
                           capture_output=True, text=True, check=True)
    answer = json.loads(again.stdout.strip().splitlines()[-1])
    started = int((remote_env["work"] / "runs" / "drop-launch" / "engine.pid").read_text())
    assert answer["already_started"] and answer["pid"] == started
