"""Audit 11: the verdict names the number that went bad. A student with a NaN weight makes the
step-0 evaluation's val_loss NaN before any training step; the verdict said 'the loss became
nan at step 0', the words of a training step's `loss`, of a step that never was. It says
'val_loss became nan at step 0' now; a training step's NaN keeps 'the loss'."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
    assert said.stdout.strip() == "F-DISTILL-SMOKE-001 INCONCLUSIVE. val loss became nan at step 0"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_val_gen_kl_makes_an_on_policy_verdict_inconclusive(bad: float) -> None:
    """An on-policy run is judged by val_gen_kl (docs/events.md); a NaN or inf there, with a
    finite val_loss, gave FAIL ('did not go below step 0'), where the docs promise INCONCLUSIVE
    for a non-finite loss."""
    from kdengine.verdict import verdict_from_events

    for at in (0, 1):
        kls = [1.0, 0.5]
        kls[at] = bad
        events = [{"type": "eval", "step": 10 * i, "val_loss": 2.0 - i, "val_ce": 3.0,
                   "val_kd": 0.1, "val_gen_kl": kl, "val_gen_teacher_logp": -1.0,
                   "val_gen_len": 8.0} for i, kl in enumerate(kls)]
        events.append({"type": "run_finished", "status": "completed", "exit_code": 0,
                       "steps": 10})
        verdict = verdict_from_events(events)
        assert (verdict.status, verdict.reason) == (
            "inconclusive", f"val gen KL became {bad} at step {10 * at}")
