"""F-DISTILL-SMOKE-001 from events, and `kdengine verdict`'s exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kdengine.events import EventWriter
from kdengine.verdict import verdict_from_events


def ev(type_: str, **kw):
    return {"type": type_, **kw}


DONE = ev("run_finished", status="completed", exit_code=0)


def test_pass_when_final_val_loss_is_below_step_zero() -> None:
    v = verdict_from_events([ev("eval", step=0, val_loss=5.0), ev("step", step=10, loss=3.0),
                             ev("eval", step=10, val_loss=4.0), DONE])
    assert (v.status, v.initial_val_loss, v.final_val_loss, v.final_step) == ("pass", 5, 4, 10)
    assert v.delta == pytest.approx(-1.0)
    assert v.exit_code == 0


def test_fail_when_it_is_not_below() -> None:
    v = verdict_from_events([ev("eval", step=0, val_loss=5.0), ev("eval", step=10, val_loss=5.0),
                             DONE])
    assert v.status == "fail" and v.exit_code == 1


@pytest.mark.parametrize(("events", "reason"), [
    ([ev("eval", step=10, val_loss=4.0), DONE], "no validation loss at step 0"),
    ([ev("eval", step=0, val_loss=5.0), DONE], "no validation loss after step 0"),
    ([ev("eval", step=0, val_loss=5.0), ev("step", step=3, loss=float("nan")),
      ev("run_finished", status="failed", exit_code=1)], "the loss became nan at step 3"),
    ([ev("eval", step=0, val_loss=5.0), ev("step", step=3, loss=2.0)],
     "the run has not finished (last step 3)"),
    ([ev("eval", step=0, val_loss=5.0), ev("step", step=3, loss=2.0),
      ev("run_finished", status="failed", exit_code=1, error="CUDA out of memory")],
     "the run failed at step 3: CUDA out of memory"),
    ([ev("eval", step=0, val_loss=5.0), ev("eval", step=5, val_loss=4.0),
      ev("run_finished", status="cancelled", exit_code=143)], "the run cancelled at step 0"),
])
def test_inconclusive_says_why(events, reason: str) -> None:
    v = verdict_from_events(events)
    assert v.status == "inconclusive" and v.exit_code == 2
    assert reason in v.reason


@pytest.mark.parametrize(("final", "code", "word"), [(4.0, 0, "PASS"), (6.0, 1, "FAIL")])
def test_verdict_command_prints_and_exits_by_status(tmp_path, engine_cmd, final, code,
                                                    word) -> None:
    with EventWriter(tmp_path) as w:
        w.emit("eval", step=0, val_loss=5.0)
        w.emit("eval", step=20, val_loss=final)
        w.emit("run_finished", status="completed", exit_code=0)
    out = subprocess.run([*engine_cmd, "verdict", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == code
    assert f"F-DISTILL-SMOKE-001 {word}" in out.stdout


def test_verdict_command_on_a_dir_without_events_is_a_usage_error(tmp_path, engine_cmd) -> None:
    out = subprocess.run([*engine_cmd, "verdict", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "not a kdengine run dir" in out.stderr


def test_an_engine_verdict_from_training_batch_losses_stands_and_says_so() -> None:
    # apr distill has no held-out eval: its profile writes a verdict marked train_batch
    engine = ev("verdict", id="F-DISTILL-SMOKE-001", loss_kind="train_batch", status="pass",
                initial_loss=9.1, final_loss=7.5, final_step=20,
                reason="the training-batch loss went down; not a held-out validation loss")
    v = verdict_from_events([ev("step", step=20, loss=7.5), engine, DONE])
    assert (v.status, v.loss_kind, v.initial_loss, v.final_loss) == ("pass", "train_batch",
                                                                     9.1, 7.5)
    assert v.initial_val_loss is None and "train-batch loss 9.1000" in v.summary()


def test_held_out_evals_outrank_an_engine_verdict() -> None:
    engine = ev("verdict", loss_kind="train_batch", status="pass", initial_loss=9.0,
                final_loss=1.0)
    v = verdict_from_events([ev("eval", step=0, val_loss=5.0), ev("eval", step=9, val_loss=6.0),
                             engine, DONE])
    assert v.status == "fail" and v.loss_kind == "val"


def test_a_teacher_cache_job_ends_with_its_own_result_not_the_smoke_verdict() -> None:
    started = {"type": "run_started", "job": "cache-teacher"}
    steps = [{"type": "step", "step": n, "loss": 2.0} for n in (10, 20)]
    done = verdict_from_events([started, *steps, {"type": "run_finished",
                                                  "status": "completed", "exit_code": 0}])
    assert (done.id, done.status, done.exit_code) == ("cache-teacher", "pass", 0)
    assert "20 rows" in done.reason and "no smoke verdict" in done.reason
    killed = verdict_from_events([started, *steps, {"type": "run_finished",
                                                    "status": "cancelled", "exit_code": 130}])
    assert (killed.id, killed.status) == ("cache-teacher", "inconclusive")
    assert verdict_from_events([started]).status == "inconclusive"


def test_a_failed_run_is_named_at_the_engines_last_step_not_the_last_logged_one() -> None:
    events = [{"type": "eval", "step": 0, "val_loss": 3.0},
              {"type": "step", "step": 145, "loss": 2.0},  # log_every 5: 149 was not logged
              {"type": "run_finished", "status": "failed", "exit_code": 1, "steps": 149,
               "error": "boom"}]
    assert "at step 149" in verdict_from_events(events).reason


EVENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def _verdict_row() -> str:
    return next(line for line in EVENTS_DOC.read_text().splitlines()
                if line.startswith("| `verdict` |"))


def _assert_documented(event: dict) -> None:
    row = _verdict_row()
    for key in event:
        assert f"`{key}`" in row, f"docs/events.md's verdict row does not name {key}"
    if event["loss_kind"] is not None:
        assert f'`loss_kind: "{event["loss_kind"]}"`' in row or \
            f'`"{event["loss_kind"]}"`' in row


def test_a_val_loss_verdict_event_names_its_losses_val_loss() -> None:
    event = verdict_from_events([ev("eval", step=0, val_loss=5.0),
                                 ev("eval", step=10, val_loss=4.0), DONE]).to_event()
    assert event["loss_kind"] == "val"
    assert (event["initial_val_loss"], event["final_val_loss"]) == (5.0, 4.0)
    assert "initial_loss" not in event and event["delta"] == pytest.approx(-1.0)
    _assert_documented(event)


def test_an_on_policy_verdict_event_names_its_losses_val_gen_kl() -> None:
    """It wrote loss_kind val_gen_kl with initial_loss/final_loss: names events.md did not
    list, and bare `loss` reads as the training loss."""
    event = verdict_from_events([ev("eval", step=0, val_loss=2.0, val_gen_kl=0.25),
                                 ev("eval", step=6, val_loss=2.1, val_gen_kl=0.2),
                                 DONE]).to_event()
    assert (event["status"], event["loss_kind"]) == ("pass", "val_gen_kl")
    assert (event["initial_val_gen_kl"], event["final_val_gen_kl"]) == (0.25, 0.2)
    assert not {"initial_loss", "final_loss", "initial_val_loss", "final_val_loss"} & set(event)
    _assert_documented(event)


def test_a_train_batch_verdict_event_names_its_losses_loss() -> None:
    engine = ev("verdict", id="F-DISTILL-SMOKE-001", loss_kind="train_batch", status="pass",
                initial_loss=9.1, final_loss=7.5, final_step=20)
    event = verdict_from_events([engine, DONE]).to_event()
    assert event["loss_kind"] == "train_batch"
    assert (event["initial_loss"], event["final_loss"]) == (9.1, 7.5)
    assert "initial_val_loss" not in event
    _assert_documented(event)


def test_a_cache_jobs_verdict_event_has_no_losses() -> None:
    event = verdict_from_events([{"type": "run_started", "job": "cache-teacher"},
                                 DONE]).to_event()
    assert (event["id"], event["loss_kind"]) == ("cache-teacher", None)
    assert not [k for k in event if k.startswith(("initial_", "final_")) and k != "final_step"]
    _assert_documented(event)
