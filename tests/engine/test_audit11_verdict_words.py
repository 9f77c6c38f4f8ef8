"""Audit 11: the verdict names the number that went bad. A student with a NaN weight makes the
step-0 evaluation's val_loss NaN before any training step; the verdict said 'the loss became
nan at step 0', the words of a training step's `loss`, of a step that never was. It says
'val_loss became nan at step 0' now; a training step's NaN keeps 'the loss'."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, write_nan_student, write_tiny_inputs  # noqa: E402


def test_a_nan_step_zero_evaluation_is_named_val_loss(tmp_path: Path, engine_in_process) -> None:
    inputs = write_tiny_inputs(tmp_path / "in")
    inputs["student"] = write_nan_student(inputs)
    run_dir = tmp_path / "run"
    ran = engine_in_process(*tiny_run_args(inputs, run_dir, steps=2, eval_every=0,
                                           checkpoint_every=0))
    assert ran.returncode == 1
    said = engine_in_process("verdict", str(run_dir))
    assert said.returncode == 2
    assert said.stdout.strip() == "F-DISTILL-SMOKE-001 INCONCLUSIVE. val_loss became nan at step 0"
