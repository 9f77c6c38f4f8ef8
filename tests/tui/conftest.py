"""Dashboard test setup: on top of tests/conftest.py's isolation from the user's state (runs,
evidence, config dir, XDG dirs), each test gets an ssh config naming one host, `gpu-box` (the
launch form's host list), and no cursor blink."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input


@pytest.fixture(autouse=True)
def isolated_kdtui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   isolated_engine_dirs: None) -> Path:
    config = Path(os.environ["KDTUI_CONFIG_DIR"])  # the test's own (tests/conftest.py)
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host gpu-box\n  HostName 127.0.0.1\nHost *\n  ServerAliveInterval 5\n")
    monkeypatch.setenv("KDTUI_SSH_CONFIG", str(ssh_config))
    # a blinking cursor makes screenshots depend on the moment they are taken
    monkeypatch.setattr(Input, "cursor_blink", False)
    return config


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = Path(os.environ["KDENGINE_RUNS_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


T0 = 1_760_000_000.0  # a fixed clock for fixture runs: screenshots must not depend on "now"


def write_run(run_dir: Path, *, steps: int = 200, upto: int | None = None, finished: bool = True,
              log_extra: list[str] | None = None, pid: int | None = None) -> Path:
    """A run directory as the engine leaves it (events.jsonl, launch.log, config.json), with
    fixed times and a loss that goes down; `upto` < steps makes it a run still in progress."""
    run_dir.mkdir(parents=True, exist_ok=True)
    upto = steps if upto is None else upto
    events: list[dict[str, Any]] = []
    log: list[str] = []

    def emit(type_: str, t: float, **payload: Any) -> None:
        events.append({"v": 1, "seq": len(events), "t": round(T0 + t, 3), "type": type_,
                       **payload})

    config = {"steps": steps, "run_name": run_dir.name, "teacher": "demo://teacher",
              "student": "demo://student", "data": "demo://python-stdlib"}
    emit("run_started", 0, run_id=run_dir.name, run_dir=run_dir.name, config=config,
         device="cpu", dtype="float32")
    log.append(f"run {run_dir.name} on cpu (float32)")
    for i, stage in enumerate(("prepare", "load_teacher", "load_student", "data")):
        emit("stage", 0.1 * i, stage=stage, state="running", elapsed=0.0)
        emit("stage", 0.1 * i + 0.1, stage=stage, state="done", elapsed=0.1)
        log.append(f"[{stage}] done (0.1s)")
    emit("stage", 1.0, stage="train", state="running", elapsed=0.0)
    log.append("[train] running")

    def val(step: int) -> float:
        return 3.0 * (0.5 + 0.5 / (1 + step / 40))

    emit("eval", 1.0, step=0, val_loss=val(0), val_ce=val(0) + 0.5, val_kd=0.4)
    log.append(f"eval step 0 val_loss={val(0):.4f} (initial_loss)")
    for step in range(1, upto + 1):
        loss = 3.0 * (0.45 + 0.55 / (1 + step / 30)) + 0.05 * ((step * 7919) % 13 - 6) / 6
        kd, ce = loss * 0.6, loss * 1.3
        emit("step", 1.0 + step * 0.05, step=step, loss=loss, kd=kd, ce=ce, lr=1e-3,
             grad_norm=0.5, tokens_per_s=2048.0, total_steps=steps)
        log.append(f"step {step}/{steps} loss={loss:.4f} kd={kd:.4f} ce={ce:.4f}")
        if step % 50 == 0 and step < steps:
            emit("eval", 1.0 + step * 0.05, step=step, val_loss=val(step))
            log.append(f"eval step {step} val_loss={val(step):.4f}")
    log.extend(log_extra or [])
    if finished and upto == steps:
        end = 1.0 + steps * 0.05
        emit("stage", end, stage="train", state="done", elapsed=steps * 0.05)
        emit("stage", end, stage="final_eval", state="running", elapsed=0.0)
        emit("eval", end + 0.5, step=steps, val_loss=val(steps))
        emit("stage", end + 0.5, stage="final_eval", state="done", elapsed=0.5)
        emit("stage", end + 0.5, stage="verdict", state="running", elapsed=0.0)
        delta = val(steps) - val(0)
        emit("verdict", end + 0.5, id="F-DISTILL-SMOKE-001", status="pass",
             reason="the held-out validation loss went down", initial_val_loss=val(0),
             final_val_loss=val(steps), final_step=steps, delta=delta)
        emit("stage", end + 0.5, stage="verdict", state="done", elapsed=0.0, detail="pass")
        emit("run_finished", end + 0.5, status="completed", exit_code=0, steps=steps)
        log.append(f"eval step {steps} val_loss={val(steps):.4f} (final_loss)")
        log.append(f"verdict F-DISTILL-SMOKE-001 PASS: delta {delta:+.4f}")
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "launch.log").write_text("\n".join(log) + "\n")
    (run_dir / "config.json").write_text(json.dumps(config))
    if pid is not None:
        (run_dir / "engine.pid").write_text(f"{pid}\n")
    return run_dir


def end_run(run: Path, status: str, checkpoint: int | None) -> Path:
    """A run in progress as one that ended `status` (run_finished; "stopped": the engine died
    without one), with its newest complete checkpoint at step `checkpoint` (meta.json last, as
    the engine writes it)."""
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    last_step = max((e["step"] for e in events if e["type"] == "step"), default=0)
    if checkpoint is not None:
        events.append({"v": 1, "seq": len(events), "t": events[-1]["t"], "type": "checkpoint",
                       "step": checkpoint, "path": f"checkpoints/step-{checkpoint}"})
        (run / "checkpoints" / f"step-{checkpoint}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{checkpoint}" / "meta.json").write_text("{}")
    if status != "stopped":
        events.append({"v": 1, "seq": len(events), "t": events[-1]["t"], "type": "run_finished",
                       "status": status, "exit_code": 1, "steps": last_step})
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


@pytest.fixture(name="write_run")
def write_run_fixture() -> Callable[..., Path]:
    return write_run


@pytest.fixture(name="end_run")
def end_run_fixture() -> Callable[..., Path]:
    return end_run


ON_POLICY_FIXTURE = Path(__file__).parent / "fixtures" / "on-policy"


@pytest.fixture
def on_policy_run(runs_dir: Path) -> Path:
    """The recorded on-policy run (tests/tui/fixtures/on-policy) copied into the runs dir."""
    import shutil

    return Path(shutil.copytree(ON_POLICY_FIXTURE, runs_dir / "on-policy"))


def verdict_shown(app: Any) -> bool:
    """Whether `app` shows a run screen whose verdict panel has its verdict."""
    from kdtui.screens.run import RunScreen
    from kdtui.widgets.run_panels import VerdictPanel

    return isinstance(app.screen, RunScreen) and bool(app.screen.query(VerdictPanel)) and \
        app.screen.query_one(VerdictPanel).status != "pending"
