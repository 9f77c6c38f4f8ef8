"""Audit 14: the engine's words in the event stream. A failed stage's `detail` is short (the
stage tracker's one row), the whole error in run_finished's `error` and the error event; a NaN
evaluation is named as the screens name it ('val loss', 'val CE'), its event fields unchanged;
`kdengine verdict --json` prints the verdict object an apr stream holds, as docs/events.md
says."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, write_nan_student, write_tiny_inputs  # noqa: E402

from kdengine.events import ENVELOPE, read_events  # noqa: E402
from kdengine.runlog import DETAIL_MAX  # noqa: E402

NAN = math.nan


def test_a_failed_stage_s_detail_is_short_and_the_whole_error_is_run_finished_s(
        tmp_path: Path, engine_in_process) -> None:
    """The detail was the whole error (two clauses and a fix, 150 characters), where the
    protocol says it is short: the stage tracker's row. A real run of a student holding a NaN
    weight, which ends at its step-0 evaluation."""
    inputs = write_tiny_inputs(tmp_path / "in")
    run_dir = tmp_path / "run"
    broken = {**inputs, "student": write_nan_student(inputs)}
    done = engine_in_process(*tiny_run_args(broken, run_dir, steps=2, eval_every=2))
    assert done.returncode == 1, done.stderr
    events = read_events(run_dir / "events.jsonl")
    (failed,) = [e for e in events if e["type"] == "stage" and e["state"] == "failed"]
    finished = events[-1]
    error = ("val loss is nan at step 0, before any training (val CE nan, val KD nan): the "
             "student's own loss is not finite: check its weights; no step was trained")
    assert finished["type"] == "run_finished" and finished["error"] == error
    (logged,) = [e for e in events if e["type"] == "log" and e["level"] == "error"]
    assert logged["message"] == error
    assert failed["detail"] == "val loss is nan at step 0, before any training (val CE nan, " \
        "val KD nan)"
    assert len(failed["detail"]) <= DETAIL_MAX
    # launch.log and the terminal keep the whole line
    assert f"ERROR: {error}\n" in (run_dir / "launch.log").read_text()
    assert f"[train] failed: {error} (log in" in done.stderr


@pytest.mark.parametrize("reason, detail", [
    ("disk full: /r/checkpoints needs 104 kB, its file system has 20.8 MB free; delete files",
     "disk full: /r/checkpoints needs 104 kB, its file system has 20.8 MB free"),
    ("boom", "boom"),
    ("first line\nTraceback (most recent call last):", "first line"),
    ("student: " + "x" * 100 + " holds the same weights as the teacher",
     "student: " + "x" * 70 + "…"),
    ("a " * 60, ("a " * 39).strip() + "…"),
])
def test_a_failed_stage_s_detail_is_the_error_s_first_clause_within_its_limit(reason, detail):
    from kdengine.runlog import short_detail

    assert short_detail(reason) == detail
    assert len(short_detail(reason)) <= DETAIL_MAX


@pytest.mark.parametrize("result, said", [
    ({"step": 2, "val_loss": NAN, "val_ce": NAN, "val_kd": 0.5},
     "val loss is nan at the evaluation of step 2 (val CE nan, val KD 0.5): the training "
     "diverged"),
    ({"step": 0, "val_loss": NAN, "val_ce": 3.0, "val_kd": NAN},
     "val loss is nan at step 0, before any training (val CE 3.0, val KD nan): the KD term"),
    ({"step": 4, "val_loss": 2.0, "val_gen_kl": math.inf, "val_ce": 2.0, "val_kd": 0.1},
     "val gen KL is inf at the evaluation of step 4 (val CE 2.0, val KD 0.1): the training"),
])
def test_a_nan_evaluation_is_named_as_the_screens_name_it(result, said) -> None:
    """'val_loss is nan at the evaluation of step 2 (val_ce=nan, val_kd=nan)': the event
    fields, where the verdict, the run screen and compare say 'val loss', 'val CE'."""
    from kdengine.trainer import refuse_a_non_finite_evaluation

    with pytest.raises(Exception) as stopped:
        refuse_a_non_finite_evaluation(result)
    assert str(stopped.value).startswith(said), str(stopped.value)


APR_LOG = """=== APR Distill ===
  Step 1/3: loss: 5.1234
  Step 2/3: loss: 4.8000
  Step 3/3: loss: 4.6000
✓ Distillation complete: initial_loss=5.1234 → final_loss=4.6000 (3 steps, 1.5s)
"""
APR_JSON = APR_LOG.replace("✓ Distillation complete", "no summary") + json.dumps(
    {"status": "completed", "steps_completed": 3, "initial_loss": 5.1234, "final_loss": 4.6,
     "best_loss": 4.5, "duration_seconds": 1.5}) + "\n"
APR_KILLED = APR_LOG.split("✓")[0]


@pytest.mark.parametrize("log", [APR_LOG, APR_JSON, APR_KILLED], ids=["done", "json", "killed"])
def test_kdengine_verdict_json_prints_the_verdict_object_an_apr_stream_holds(
        log, tmp_path: Path, engine_in_process) -> None:
    """It left out initial_val_loss and final_val_loss (null in the stream: apr has no held-out
    evaluation), the verdict's source and the summary's own numbers."""
    from kdtui.profiles.apr.parser import parse_log

    # killed: apr gone without a summary, so its watcher ends the stream
    events = parse_log(log, epochs=1, exit_code=137 if log is APR_KILLED else None,
                       ended=log is APR_KILLED)
    (streamed,) = [e for e in events if e["type"] == "verdict"]
    run_dir = tmp_path / "apr-run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    done = engine_in_process("verdict", "--json", str(run_dir))
    printed = json.loads(done.stdout)
    assert printed == {k: v for k, v in streamed.items() if k not in ENVELOPE}
    assert printed["initial_val_loss"] is None and printed["final_val_loss"] is None
