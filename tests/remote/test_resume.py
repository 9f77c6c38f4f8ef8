"""A remote run whose engine is SIGKILLed mid-run, twice, resumed once with `kdtui resume` and
once with the dashboard's Resume, ends with the losses of the same run left alone (CPU, fp32,
the same seed) and an event stream with no gap or duplicate in `seq`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kdengine.events import read_events
from kdtui.cli import main as kdtui_main

pytestmark = pytest.mark.ssh

# a tiny step takes milliseconds: checkpoints 50 steps apart leave the kill room to land
# between the step it waits for and the next checkpoint
FLAGS = dict(steps=200, batch_size=2, seq_len=16, lr=3e-3, eval_every=50, eval_batches=1,
             log_every=1, checkpoint_every=50, temperature=2.0, dtype="float32", device="cpu")
BUDGET_S = 180.0  # per condition: generous, the runs take seconds


def flags(inputs: dict[str, str]) -> list[str]:
    out = ["--teacher", inputs["teacher"], "--student", inputs["student"], "--data",
           inputs["data"]]
    for key, value in FLAGS.items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


def steps_of(run_dir: Path, part: int = 0, kind: str = "step") -> list[int]:
    """The steps of the run's `part`-th engine (0: the dispatch's, 1: the first resume's...)
    that have a `kind` event (step, or checkpoint: whole on disk)."""
    steps, started = [], -1
    for event in read_events(run_dir / "events.jsonl"):
        started += event.get("type") == "run_started"
        if event.get("type") == kind and started == part:
            steps.append(event["step"])
    return steps


def resumed_from(run_dir: Path) -> list[int | None]:
    return [e.get("resumed_from") for e in read_events(run_dir / "events.jsonl")
            if e.get("type") == "run_started"]


async def until(condition, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + BUDGET_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(poll)


async def kill_engine_past(run_dir: Path, step: int, part: int) -> None:
    """SIGKILL the engine's process group once its `part` has logged `step` and the checkpoint
    before it is whole (checkpoints are written in the background: the event says so)."""
    every = FLAGS["checkpoint_every"]
    await until(lambda: (run_dir / "events.jsonl").exists() and
                max(steps_of(run_dir, part), default=-1) >= step and
                max(steps_of(run_dir, part, "checkpoint"), default=-1) >= step // every * every,
                f"step {step} and its checkpoint", poll=0.01)
    pid = int((run_dir / "engine.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    await until(lambda: not Path(f"/proc/{pid}").exists() or
                Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                "the engine to die")


def losses(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Step -> train loss and step -> val loss; a step run twice (redone after a resume) must
    have had the same loss both times."""
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for event in read_events(run_dir / "events.jsonl"):
        into = train if event.get("type") == "step" else val if event.get("type") == "eval" \
            else None
        if into is None:
            continue
        value = event["loss"] if into is train else event["val_loss"]
        assert into.setdefault(event["step"], value) == value, ("redone step differs", event)
    return train, val


@pytest.mark.timeout(600)
async def test_a_killed_remote_run_resumes_from_the_cli_and_the_dashboard_exactly(
        remote_env, tiny_run_inputs, tmp_path, engine_cmd, capsys, monkeypatch):
    from kdtui.app import KDApp
    from kdtui.screens.run import RunScreen
    from kdtui.screens.runs import RunsScreen
    from kdtui.widgets.link_status import LinkStatus
    from kdtui.widgets.loss_chart import LossChart
    from kdtui.widgets.run_panels import VerdictPanel

    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    # the run left alone, beside the remote one
    reference = tmp_path / "reference"
    ref_args = [a for a in flags(tiny_run_inputs)]
    alone = subprocess.Popen([*engine_cmd, "train", *ref_args, "--run-dir", str(reference)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    argv = ["launch", "--headless", "--detach", "--host", "kdtest", "--run-name", "resume-1",
            *flags(tiny_run_inputs)]
    assert await asyncio.to_thread(kdtui_main, argv) == 0
    run_dir = remote_env["work"] / "runs" / "resume-1"
    await kill_engine_past(run_dir, 55, part=0)  # past the checkpoint at step 50

    # `kdtui resume`, watched headless; its engine killed again past step 20's checkpoint: the
    # watch says the engine is gone, with its last lines and how to resume
    capsys.readouterr()
    resumed = asyncio.create_task(asyncio.to_thread(
        kdtui_main, ["resume", "resume-1", "--headless"]))
    await kill_engine_past(run_dir, 105, part=1)  # past the checkpoint at step 100
    code = await resumed
    out = capsys.readouterr().out
    first = resumed_from(run_dir)[1]
    manifest_path = remote_env["evidence"] / "resume-1" / "dispatch.json"
    second = json.loads(manifest_path.read_text())["checkpoint_step"]
    assert code == 2, out
    assert "[resume] done" in out and f"checkpoint at step {first}" in out
    assert "ERROR: the engine is gone without finishing the run" in out, out
    assert f"resume it from its checkpoint at step {second}: kdtui resume resume-1" in out, out
    manifest = json.loads(manifest_path.read_text())
    assert manifest["state"] == "stopped" and manifest["checkpoint_step"] == second
    assert manifest["engine_gone"]["log_tail"]

    # the dashboard: the runs list's R on the stopped run
    app = KDApp(runs_dir=tmp_path / "local-runs")
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(RunsScreen())
        await until(lambda: isinstance(app.screen, RunsScreen) and app.screen.runs, "the list")
        assert app.screen.runs[0].run_id == "resume-1" and app.screen.runs[0].status == "stopped"
        await pilot.press("R")
        await until(lambda: isinstance(app.screen, RunScreen)
                    and bool(app.screen.query(VerdictPanel)), "the run screen")
        screen = app.screen
        await until(lambda: screen.query_one(VerdictPanel).status != "pending", "the verdict")
        assert screen.query_one(VerdictPanel).status == "pass"
        link = screen.query_one(LinkStatus)
        assert link.display and "link to kdtest connected" in str(link.render())
        # the steps after each checkpoint were run twice: drawn once
        logged = [step for part in range(3) for step in steps_of(run_dir, part)]
        assert screen.query_one(LossChart).raw["loss"].count == len(set(logged)) < len(logged)
    assert alone.wait(BUDGET_S) == 0

    events = read_events(run_dir / "events.jsonl")
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert resumed_from(run_dir) == [None, first, second] and 50 <= first <= second
    assert losses(run_dir) == losses(reference)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["state"] == "completed" and manifest["verdict"]["status"] == "pass"
    assert manifest["engine_last_step"] == FLAGS["steps"]
    assert [s["kind"] for s in manifest["segments"]] == ["dispatch", "resume", "resume"]
    assert [a["kind"] for a in manifest["attempts"]] == ["dispatch", "resume", "resume"]
