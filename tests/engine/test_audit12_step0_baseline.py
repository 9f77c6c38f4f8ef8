"""Audit 12: the step-0 evaluation is the verdict's baseline. (a) A NaN or inf there (a student
whose weights hold NaN) made the verdict INCONCLUSIVE already, yet the run went on to train one
step (and, on a GPU, to compile it) before failing on that step's loss; it ends at step 0 now,
no step trained, no checkpoint, naming the value and where to look. (b) The step-0 eval line
was tagged '(initial_loss)' for on-policy runs too, whose verdict compares val_gen_kl; the tag
names val_gen_kl there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, write_nan_student, write_tiny_inputs  # noqa: E402

from kdengine.events import read_events  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("step0"))


def test_a_nan_step_zero_evaluation_ends_the_run_before_any_training_step(
        inputs, tmp_path: Path, engine_in_process) -> None:
    run_dir = tmp_path / "run"
    broken = {**inputs, "student": write_nan_student(inputs)}
    done = engine_in_process(*tiny_run_args(broken, run_dir, steps=4, eval_every=2,
                                            checkpoint_every=1))
    assert done.returncode == 1
    events = read_events(run_dir / "events.jsonl")
    assert [e["type"] for e in events if e["type"] in ("step", "checkpoint")] == []
    assert not (run_dir / "checkpoints").exists()
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "failed"
    assert finished["steps"] == 0 and finished["stage"] == "train"
    assert finished["error"] == ("val loss is nan at step 0, before any training (val CE nan, "
                                 "val KD nan): the student's own loss is not finite: check its "
                                 "weights; no step was trained")
    assert done.stderr.strip().splitlines()[-1].startswith(
        "kdengine train: error: [train] failed: val loss is nan at step 0"), done.stderr
    log = (run_dir / "launch.log").read_text()
    assert "eval step 0 val_loss=nan" in log and log.count("(initial_loss)") == 1
    said = engine_in_process("verdict", str(run_dir))
    assert said.returncode == 2
    assert said.stdout.strip() == "F-DISTILL-SMOKE-001 INCONCLUSIVE. val loss became nan at step 0"


def test_an_inf_teacher_at_step_zero_names_the_kd_term_and_the_teacher(
        inputs, tmp_path: Path, engine_in_process) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    teacher = tmp_path / "teacher-inf"
    shutil.copytree(inputs["teacher"], teacher)
    weights = load_file(str(teacher / "model.safetensors"))
    weights["model.norm.weight"][0] = float("inf")
    save_file(weights, str(teacher / "model.safetensors"))
    run_dir = tmp_path / "run"
    done = engine_in_process(*tiny_run_args({**inputs, "teacher": str(teacher)}, run_dir,
                                            steps=2))
    assert done.returncode == 1
    finished = read_events(run_dir / "events.jsonl")[-1]
    assert finished["steps"] == 0
    assert finished["error"].startswith("val loss is nan at step 0, before any training"), \
        finished["error"]
    assert finished["error"].endswith("the KD term is not finite: check the teacher's weights "
                                      "(or its cache); no step was trained"), finished["error"]


def test_an_on_policy_runs_step_zero_line_names_val_gen_kl(tmp_path: Path,
                                                           engine_in_process) -> None:
    inputs = write_tiny_inputs(tmp_path / "in")  # a student and teacher; prompt/completion data
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q: {i} times 3?\nA:",
                                        "completion": f" {i * 3}."}) + "\n" for i in range(40)))
    run_dir = tmp_path / "run"
    done = engine_in_process(*tiny_run_args({**inputs, "data": str(data)}, run_dir, steps=1,
                                            seq_len=64, eval_every=0, checkpoint_every=0,
                                            lmbda=1.0, max_new_tokens=4, eval_prompts=2))
    assert done.returncode == 0, done.stderr[-2000:]
    step0 = [line for line in (run_dir / "launch.log").read_text().splitlines()
             if line.startswith("eval step 0 ")]
    assert len(step0) == 1 and step0[0].endswith(" (initial_loss: val_gen_kl)"), step0
    assert "val_gen_kl=" in step0[0]
    verdict = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "verdict"][-1]
    assert verdict["loss_kind"] == "val_gen_kl"
