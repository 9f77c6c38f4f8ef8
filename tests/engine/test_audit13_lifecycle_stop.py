"""Audit 13, a run's life: a SIGTERM (kdtui cancel, a batch scheduler's preemption) during an
evaluation waited for the whole evaluation to end (36 s of a 400-batch step-0 evaluation on a
tiny model; minutes on a big one, past a scheduler's grace before its SIGKILL). The evaluation
now stops between its batches: the run ends cancelled there, and a later --resume continues."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, write_tiny_inputs  # noqa: E402

from kdengine.events import read_events  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("stop"))


def sigterm_in_evaluation(monkeypatch: pytest.MonkeyPatch, at_step: int) -> list[int]:
    """A real SIGTERM to this process at the first evaluation batch of step `at_step`; returns
    the list the evaluation batches computed after it are counted into."""
    import kdengine.trainer as trainer

    loss, after = trainer.KDTrainer._loss, []

    def counted(self, *args, **kwargs):
        if not self.student.module.training and self.step == at_step:  # an evaluation batch
            if self.stop.received:
                after.append(self.step)
            else:
                os.kill(os.getpid(), signal.SIGTERM)
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(trainer.KDTrainer, "_loss", counted)
    return after


@pytest.mark.parametrize("at_step", [0, 2, 4])  # 4: the final evaluation
def test_a_sigterm_during_an_evaluation_ends_the_run_without_waiting_for_its_end(
        inputs, tmp_path: Path, engine_in_process, monkeypatch, at_step: int) -> None:
    run_dir = tmp_path / "run"
    after = sigterm_in_evaluation(monkeypatch, at_step)
    done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=4, eval_every=2,
                                            eval_batches=30, checkpoint_every=0))
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert after == []  # not one more batch once the signal came
    events = read_events(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "eval"] == [s for s in (0, 2) if s < at_step]
    finished = events[-1]
    assert finished["status"] == "cancelled" and finished["steps"] == at_step
    if at_step:  # the checkpoint of the last trained step, which --resume continues from
        assert (run_dir / "checkpoints" / f"step-{at_step:08d}" / "meta.json").exists()
        monkeypatch.undo()
        out = engine_in_process("train", "--resume", str(run_dir))
        assert out.returncode == 0, out.stderr[-2000:]
