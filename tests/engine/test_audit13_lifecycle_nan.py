"""Audit 13, a run's life: how a run whose numbers turn NaN ends. (a) A NaN validation loss at
an evaluation after step 0 let training go on: the step's weights, NaN, were checkpointed (the
checkpoint a --resume would continue from), and at the last step the run COMPLETED with a NaN
final student. It now ends at that evaluation, failed, as a NaN training loss does, before
those weights are saved, naming the step, the likely fix and the last checkpoint, kept. (b) A
NaN (at step 0, at a step, at an evaluation) wrote a Python traceback into launch.log and the
error event (the dashboard's log pane), behind a 'loss:' prefix: it is one line now, the
event's message that line, no traceback.

The NaN is real: one weight of the student set to NaN in this process at a chosen point, as a
diverged update leaves it; the evaluation or the step then computes NaN from it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, write_nan_student, write_tiny_inputs  # noqa: E402

from kdengine.events import read_events  # noqa: E402

DIVERGED = "the training diverged: start again with a lower --lr (or more --warmup-steps)"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("nan"))


def poison(trainer) -> None:
    """One NaN in the student's weights, as an update that diverged leaves them."""
    import torch

    with torch.no_grad():
        next(trainer.student.module.parameters()).view(-1)[0] = float("nan")


def nan_before_evaluation_of(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    import kdengine.trainer as trainer

    evaluate = trainer.KDTrainer.evaluate

    def diverged(self):
        if self.step == step:
            poison(self)
        return evaluate(self)

    monkeypatch.setattr(trainer.KDTrainer, "evaluate", diverged)


def nan_before_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    import kdengine.trainer as trainer

    queue = trainer.KDTrainer.queue_step

    def diverged(self, *args, **kwargs):
        if self.step + 1 == step:
            poison(self)
        return queue(self, *args, **kwargs)

    monkeypatch.setattr(trainer.KDTrainer, "queue_step", diverged)


def assert_said_in_one_line(run_dir: Path, stderr: str, error: str) -> None:
    """The failure's line: run_finished's error, the error event's message, launch.log's ERROR
    line and the terminal's, and no traceback anywhere."""
    events = read_events(run_dir / "events.jsonl")
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "failed"
    assert finished["error"] == error
    (logged,) = [e for e in events if e["type"] == "log" and e["level"] == "error"]
    assert logged["message"] == error and "traceback" not in logged
    log = (run_dir / "launch.log").read_text()
    assert "Traceback" not in log and "loss: " not in log
    assert f"ERROR: {error}\n" in log
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"kdengine train: error: [{finished['stage']}] failed: {error} (log in "
        f"{run_dir / 'launch.log'})")


def test_a_nan_evaluation_after_step_0_ends_the_run_there_keeping_the_last_good_checkpoint(
        inputs, tmp_path: Path, engine_in_process, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    nan_before_evaluation_of(monkeypatch, 2)
    done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=4, eval_every=2,
                                            checkpoint_every=1))
    assert done.returncode == 1
    events = read_events(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2]  # no step 3
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [1]  # not step 2's NaN
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001"]
    finished = events[-1]
    assert finished["steps"] == 2 and finished["stage"] == "train"
    kept = run_dir / "checkpoints" / "step-00000001"
    assert_said_in_one_line(run_dir, done.stderr, (
        "val loss is nan at the evaluation of step 2 (val CE nan, val KD nan): "
        f"{DIVERGED}; the last checkpoint, {kept}, is kept"))


def test_a_nan_final_evaluation_fails_the_run_and_writes_no_final_student(
        inputs, tmp_path: Path, engine_in_process, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    nan_before_evaluation_of(monkeypatch, 3)
    done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=3, eval_every=2,
                                            checkpoint_every=2))
    assert done.returncode == 1
    assert not (run_dir / "final").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002"]
    events = read_events(run_dir / "events.jsonl")
    assert not [e for e in events if e["type"] == "verdict"]
    assert events[-1]["stage"] == "final_eval" and events[-1]["steps"] == 3
    kept = run_dir / "checkpoints" / "step-00000002"
    assert_said_in_one_line(run_dir, done.stderr, (
        "val loss is nan at the evaluation of step 3 (val CE nan, val KD nan): "
        f"{DIVERGED}; the last checkpoint, {kept}, is kept"))


def test_a_nan_training_loss_says_the_same_in_one_line(inputs, tmp_path: Path,
                                                       engine_in_process, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    nan_before_step(monkeypatch, 3)
    done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=4, eval_every=10,
                                            checkpoint_every=2))
    assert done.returncode == 1
    kept = run_dir / "checkpoints" / "step-00000002"
    assert_said_in_one_line(run_dir, done.stderr, (
        "loss is nan at step 3 (ce=nan, kd=nan); the update was not applied: "
        f"{DIVERGED}; the last checkpoint, {kept}, is kept"))


def test_a_nan_at_step_0_is_one_line_with_no_traceback(inputs, tmp_path: Path,
                                                       engine_in_process) -> None:
    run_dir = tmp_path / "run"
    broken = {**inputs, "student": write_nan_student(inputs)}
    done = engine_in_process(*tiny_run_args(broken, run_dir, steps=2))
    assert done.returncode == 1
    assert_said_in_one_line(run_dir, done.stderr, (
        "val loss is nan at step 0, before any training (val CE nan, val KD nan): the "
        "student's own loss is not finite: check its weights; no step was trained"))
