"""A graceful cancel (the first SIGINT/SIGTERM) keeps what the run trained: the engine writes a
checkpoint of the last trained step before it ends `cancelled`, so `--resume` continues where it
stopped, exactly. Before, a run cancelled at step 6 with checkpoints every 8 steps lost all 6
steps and `--resume` refused ("no complete checkpoint"). A second signal during that write cuts
it short and leaves the checkpoint before it the newest, whole; a run cancelled before its first
step writes none. Through the real CLI, on the tiny CPU models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdengine.checkpoint import complete_checkpoints, latest_checkpoint
from kdengine.events import read_events

# The engine's CLI, held at a chosen moment until the cancel reaches it (no race with the
# test's signal): KD_HOLD_AT=N holds training step N once queued (0: the step-0 evaluation; -2:
# a resume's restore of its checkpoint), KD_HOLD_MARK written when it holds.
# KD_SLOW_CANCEL_SAVE=1 makes the checkpoint written on the main thread (the cancel's; the loop's
# periodic ones are written in the background) take a minute, KD_SAVE_MARK written as it starts.
HELD_CLI = r"""
import os, sys, threading, time
from pathlib import Path
import kdengine.checkpoint as C
import kdengine.trainer as T
hold_at, mark = int(os.environ.get("KD_HOLD_AT", "-1")), os.environ.get("KD_HOLD_MARK")
def hold(trainer):
    Path(mark).touch()
    deadline = time.monotonic() + 120
    while not trainer.stop.received and time.monotonic() < deadline:
        time.sleep(0.02)
queue_step, evaluate = T.KDTrainer.queue_step, T.KDTrainer.evaluate
def held_step(self, batch=None, **queue):
    step = queue_step(self, batch, **queue)
    if step.number == hold_at:
        hold(self)
    return step
def held_evaluate(self):
    if self.step == 0 and hold_at == 0:
        hold(self)
    return evaluate(self)
restore = T.KDTrainer.restore
def held_restore(self, state):
    restore(self, state)
    if hold_at == -2:
        hold(self)
T.KDTrainer.queue_step, T.KDTrainer.evaluate = held_step, held_evaluate
T.KDTrainer.restore = held_restore
if os.environ.get("KD_SLOW_CANCEL_SAVE"):
    save_file = C.save_file
    def slow_save_file(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            save_file(*args, **kwargs)  # the weights on disk, in the temporary directory
            Path(os.environ["KD_SAVE_MARK"]).touch()
            time.sleep(60)  # a big student's write; a second signal cuts it short
            return None
        return save_file(*args, **kwargs)
    C.save_file = slow_save_file
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""
WAIT_S = 180  # a loaded 2-core machine's engine start, torch's import included


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _events(run_dir: Path, kind: str | None = None) -> list[dict]:
    events = read_events(run_dir / "events.jsonl")
    return [e for e in events if kind is None or e["type"] == kind]


def _wait_for(path: Path, engine: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert engine.poll() is None and time.monotonic() < deadline, f"no {what}"
        time.sleep(0.05)


def _cancel_while_held(args: list[str], tmp_path: Path, hold_at: int, *,
                       second_signal: bool = False) -> tuple[int, float]:
    """Run the engine held at `hold_at`, SIGTERM it there (and again once the cancel's
    checkpoint is being written, with `second_signal`); (its exit code, seconds from the last
    signal to its end)."""
    hold_mark, save_mark = tmp_path / "held", tmp_path / "saving"
    env = _env(KD_HOLD_AT=str(hold_at), KD_HOLD_MARK=str(hold_mark),
               KD_SAVE_MARK=str(save_mark), **({"KD_SLOW_CANCEL_SAVE": "1"}
                                                if second_signal else {}))
    engine = subprocess.Popen([sys.executable, "-c", HELD_CLI, *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(hold_mark, engine, f"hold at step {hold_at}")
        engine.send_signal(signal.SIGTERM)
        if second_signal:
            _wait_for(save_mark, engine, "checkpoint written at the cancel")
            engine.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = engine.wait(timeout=WAIT_S)
        return code, time.monotonic() - sent
    finally:
        if engine.poll() is None:
            engine.kill()


def _train(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdengine", *args], capture_output=True,
                          text=True, timeout=600, env=_env())


def test_a_cancel_checkpoints_the_last_trained_step_and_the_resume_is_exact(
        tmp_path: Path, tiny_run_inputs: dict[str, str], tiny_args) -> None:
    options = dict(steps=12, checkpoint_every=8, eval_every=4)
    reference = tmp_path / "reference"
    out = _train(tiny_args(tiny_run_inputs, reference, **options))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    run_dir = tmp_path / "run"
    code, _ = _cancel_while_held(tiny_args(tiny_run_inputs, run_dir, **options), tmp_path, 6)
    assert code == 128 + signal.SIGTERM
    finished = _events(run_dir, "run_finished")
    assert [(e["status"], e["steps"]) for e in finished] == [("cancelled", 6)]
    saved = _events(run_dir, "checkpoint")
    assert [(e["step"], e.get("reason")) for e in saved] == [(6, "cancel")]
    assert saved[0]["path"] == str(run_dir / "checkpoints" / "step-00000006")
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step-00000006"]
    log = (run_dir / "launch.log").read_text()
    assert "checkpoint saved at the cancel, step 6: " in log

    out = _train(["train", "--resume", str(run_dir)])  # before: refused, no checkpoint
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    started = _events(run_dir, "run_started")
    assert [e["resumed_from"] for e in started] == [None, 6]
    losses = {e["step"]: e["loss"] for e in _events(run_dir, "step")}
    assert losses == {e["step"]: e["loss"] for e in _events(reference, "step")}  # exact
    assert ({e["step"]: e["val_loss"] for e in _events(run_dir, "eval")}
            == {e["step"]: e["val_loss"] for e in _events(reference, "eval")})
    a = load_file(str(run_dir / "final" / "model.safetensors"))
    b = load_file(str(reference / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_during_the_cancels_checkpoint_ends_at_once_keeping_the_one_before(
        tmp_path: Path, tiny_run_inputs: dict[str, str], tiny_args) -> None:
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_run_inputs, run_dir, steps=1000, checkpoint_every=4, eval_every=0)
    code, waited = _cancel_while_held(args, tmp_path, 6, second_signal=True)
    assert code == 128 + signal.SIGTERM  # the first signal's, as a cancel always ends
    assert waited < 20, f"the engine took {waited:.0f} s to stop (its write: 60 s)"
    # the write it cut left nothing half made; --resume picks the checkpoint before
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004"]
    assert latest_checkpoint(run_dir).name == "step-00000004"
    assert [(e["step"], e.get("reason")) for e in _events(run_dir, "checkpoint")] == [(4, None)]
    warned = [e["message"] for e in _events(run_dir, "log") if e["level"] == "warning"]
    assert ("the checkpoint of step 6 at the cancel was not written (SIGTERM came during its "
            "write); --resume continues from step-00000004") in warned
    finished = _events(run_dir, "run_finished")
    assert [(e["status"], e["exit_code"], e["steps"]) for e in finished] == [
        ("cancelled", 143, 6)]


@pytest.mark.parametrize("resumed", [False, True])
def test_a_cancel_before_a_step_trains_writes_no_checkpoint(
        tmp_path: Path, tiny_run_inputs: dict[str, str], tiny_args, resumed: bool) -> None:
    """Nothing trained, nothing to keep: a first start cancelled in its step-0 evaluation
    writes none; a resumed run cancelled before its first new step keeps the checkpoint it
    started from as the newest (no second copy of the same step)."""
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_run_inputs, run_dir, steps=50, checkpoint_every=2, eval_every=0)
    hold_at = 0  # the step-0 evaluation
    if resumed:  # a run killed at step 3, its step-2 checkpoint whole
        engine = subprocess.Popen([sys.executable, "-c", HELD_CLI, *args], env=_env(
            KD_HOLD_AT="3", KD_HOLD_MARK=str(tmp_path / "killed-here")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(run_dir / "checkpoints" / "step-00000002" / "meta.json", engine, "step 2")
            _wait_for(tmp_path / "killed-here", engine, "hold at step 3")
        finally:
            engine.kill()
            engine.wait()
        args, hold_at = ["train", "--resume", str(run_dir)], -2  # held in the restore
    before = _events(run_dir, "checkpoint") if resumed else []
    code, _ = _cancel_while_held(args, tmp_path, hold_at)
    assert code == 128 + signal.SIGTERM
    finished = _events(run_dir, "run_finished")
    assert [(e["status"], e["steps"]) for e in finished] == [("cancelled", 2 if resumed else 0)]
    assert _events(run_dir, "checkpoint") == before
    assert [p.name for p in complete_checkpoints(run_dir)] == (
        ["step-00000002"] if resumed else [])
