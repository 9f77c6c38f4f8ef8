"""apr distill's log lines -> kdengine-protocol events: steps, epochs, checkpoints, the
training-batch verdict, panics and CUDA errors, whatever the case, indentation or colour."""

from __future__ import annotations

import math

from kdtui.profiles.apr.parser import AprLogParser, parse_log


def of(events, type_):
    return [e for e in events if e["type"] == type_]


NORMAL = """\x1b[1;36m=== APR Distill ===\x1b[0m
  Teacher   /m/teacher.apr
  Student   /m/student.apr
\x1b[33m▶ Distilling\x1b[0m
  Step 1/3: loss: 5.1234
  Step 2/3: loss: 4.8000
  Step 3/3: loss: 4.6000
Epoch 1/2: loss: 4.8411
checkpoint saved at step 3: /r/student/ckpt-step-000003.apr
  Step 1/3: loss: 4.4000
  Step 2/3: loss: 4.3000
  Step 3/3: loss: 4.2000
Epoch 2/2: loss: 4.3000
✓ Distillation complete: initial_loss=5.1234 → final_loss=4.2000 (6 steps, 1.5s)
  Output: /r/student
"""


def test_normal_run_gives_steps_epochs_checkpoint_and_a_training_batch_pass():
    events = parse_log(NORMAL, epochs=2)
    steps = of(events, "step")
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]  # per-epoch counts made global
    assert steps[0]["loss"] == 5.1234 and steps[-1]["loss"] == 4.2
    assert steps[-1]["total_steps"] == 6
    assert [(e["epoch"], e["loss"]) for e in of(events, "epoch")] == [(1, 4.8411), (2, 4.3)]
    assert of(events, "checkpoint") == [{**of(events, "checkpoint")[0], "step": 3,
                                          "path": "/r/student/ckpt-step-000003.apr"}]
    (verdict,) = of(events, "verdict")
    assert verdict["status"] == "pass" and verdict["loss_kind"] == "train_batch"
    assert verdict["initial_loss"] == 5.1234 and verdict["final_loss"] == 4.2
    assert verdict["initial_val_loss"] is None and verdict["final_val_loss"] is None
    assert "TRAINING-BATCH" in verdict["reason"]
    assert verdict["final_step"] == 6
    (finished,) = of(events, "run_finished")
    assert finished["status"] == "completed" and events[-1] is finished
    assert not of(events, "log")
    assert [e["seq"] for e in events] == list(range(len(events)))


def test_step_lines_are_matched_whatever_the_case_and_indentation():
    events = parse_log("step 1/4: loss: 3.0\n\t  STEP 2/4 - Loss=2.5\n[t=3s] Step 3/4: LOSS: 2.0\n")
    assert [(s["step"], s["loss"]) for s in of(events, "step")] == [(1, 3.0), (2, 2.5), (3, 2.0)]


def test_global_step_numbering_is_kept_as_it_is():
    events = parse_log("".join(f"  Step {i}/6: loss: {6 - i}.0\n" for i in range(1, 7)))
    assert [s["step"] for s in of(events, "step")] == [1, 2, 3, 4, 5, 6]
    assert all(s["total_steps"] == 6 for s in of(events, "step"))


def test_nan_loss_is_a_step_with_nan_and_the_verdict_is_not_a_pass():
    events = parse_log("  Step 1/2: loss: 4.0\n  Step 2/2: loss: NaN\n"
                       "✓ Distillation complete: initial_loss=4.0000 → final_loss=NaN "
                       "(2 steps, 0.1s)\n")
    assert math.isnan(of(events, "step")[1]["loss"])
    assert of(events, "verdict")[0]["status"] == "inconclusive"


def test_loss_going_up_is_a_fail_on_training_batch_losses():
    events = parse_log("✓ Distillation complete: initial_loss=2.0 -> final_loss=2.5 (5 steps, 1s)")
    (verdict,) = of(events, "verdict")
    assert verdict["status"] == "fail" and "did not go down" in verdict["reason"]


def test_smoke_line_gives_the_verdict_and_a_later_complete_line_does_not_repeat_it():
    events = parse_log("[SMOKE] 10 steps in 3.2s: initial_loss=6.5, final_loss=6.1, "
                       "throughput=3.1 step/s\n"
                       "✓ Distillation complete: initial_loss=6.5 → final_loss=6.1 "
                       "(10 steps, 3.2s)\n")
    (verdict,) = of(events, "verdict")
    assert verdict["status"] == "pass" and verdict["throughput"] == 3.1
    assert verdict["final_step"] == 10 and len(of(events, "run_finished")) == 1


def test_json_summary_gives_the_verdict():
    line = ('{"backend":"cuda","initial_loss":5.0,"final_loss":4.0,"best_loss":3.9,'
            '"steps_completed":62,"duration_seconds":9.5,"status":"completed"}')
    events = parse_log("  Step 1/31: loss: 5.0\n" + line + "\n")
    (verdict,) = of(events, "verdict")
    assert verdict["status"] == "pass" and verdict["final_step"] == 62
    assert verdict["best_loss"] == 3.9 and verdict["source"] == "--json summary"
    assert of(events, "run_finished")[0]["status"] == "completed"


def test_panic_mid_run_is_an_error_with_its_message_and_ends_the_run():
    log = ("  Step 1/10: loss: 5.0\n  Step 2/10: loss: 4.9\n"
           "thread 'main' panicked at crates/aprender-train/src/cuda_trainer.rs:1290:14:\n"
           "called `Option::unwrap()` on a `None` value\n"
           "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n")
    events = parse_log(log)
    (panic,) = of(events, "log")
    assert panic["level"] == "error" and panic["kind"] == "panic"
    assert "called `Option::unwrap()` on a `None` value" in panic["message"]
    assert "cuda_trainer.rs:1290:14" in panic["message"]
    assert "RUST_BACKTRACE" in panic["traceback"] and panic["step"] == 2
    (finished,) = of(events, "run_finished")
    assert finished["status"] == "failed" and finished["exit_code"] == 101
    assert of(events, "verdict")[0]["status"] == "inconclusive"


def test_old_style_panic_and_a_backtrace_are_one_event():
    log = ("thread 'main' panicked at 'index out of bounds', src/main.rs:4:5\n"
           "stack backtrace:\n   0: rust_begin_unwind\n             at /rustc/x/panicking.rs:5\n"
           "   1: apr::main\n")
    events = parse_log(log)
    (panic,) = of(events, "log")
    assert "index out of bounds" in panic["message"] and "src/main.rs:4:5" in panic["message"]
    assert panic["traceback"].count("\n") == 4


def test_panic_held_for_its_message_is_flushed_when_the_stream_pauses():
    parser = AprLogParser()
    assert parser.feed("thread 'main' panicked at src/lib.rs:1:1:") == []
    events = parser.flush()
    assert of(events, "log")[0]["kind"] == "panic"
    assert of(events, "run_finished")[0]["status"] == "failed"


def test_worker_thread_panic_is_highlighted_but_the_process_decides_the_end():
    parser = AprLogParser()
    events = []
    for line in ("thread 'loader' panicked at src/io.rs:3:3:", "disk full",
                 "  Step 5/10: loss: 3.0"):
        events += parser.feed(line)
    assert of(events, "log")[0]["kind"] == "panic" and not of(events, "run_finished")
    assert of(events, "step")[0]["step"] == 5


def test_cuda_errors_and_error_lines_are_errors_in_any_case():
    log = ("CUDA_ERROR_OUT_OF_MEMORY at Block 0 upload\n"
           "cuda driver error: an illegal memory access was encountered\n"
           "ERROR trueno: JIT compile of backward kernel failed\n"
           "Error: cuda pipeline.execute failed: vocab mismatch\n"
           "[2026-05-18T16:00:00Z error] disk\n"
           "metrics: error_rate=0.1 fine\n"
           "  Step 1/2: loss: 3.0\n")
    events = parse_log(log)
    kinds = [(e["kind"], e["message"].split()[0]) for e in of(events, "log")]
    assert kinds == [("cuda", "CUDA_ERROR_OUT_OF_MEMORY"), ("cuda", "cuda"),
                     ("error", "ERROR"), ("error", "Error:"), ("error", "[2026-05-18T16:00:00Z")]
    assert all(e["level"] == "error" for e in of(events, "log"))


def test_early_exit_without_a_summary_ends_as_failed_with_the_last_step():
    events = parse_log("  Step 1/10: loss: 5.0\n  Step 2/10: loss: 4.9\n", ended=True,
                       exit_code=1)
    (finished,) = of(events, "run_finished")
    assert finished["status"] == "failed" and finished["exit_code"] == 1
    assert "without its completion line" in finished["error"]
    verdict = of(events, "verdict")[0]
    assert verdict["status"] == "inconclusive" and verdict["final_step"] == 2


def test_clean_exit_without_a_summary_uses_the_step_losses():
    events = parse_log("  Step 1/2: loss: 5.0\n  Step 2/2: loss: 4.0\n", ended=True, exit_code=0)
    verdict = of(events, "verdict")[0]
    assert verdict["status"] == "pass" and "step lines" in verdict["source"]


def test_epoch_lines_alone_still_chart_a_point_per_epoch():
    events = parse_log("Epoch 1/3: loss: 5.0\nEpoch 2/3: loss: 4.0\nEpoch 3/3: loss: 3.5\n")
    assert [(s["step"], s["loss"]) for s in of(events, "step")] == [(1, 5.0), (2, 4.0), (3, 3.5)]
    assert len(of(events, "epoch")) == 3


def test_lines_after_the_end_are_only_checked_for_errors():
    parser = AprLogParser()
    events = []
    for line in NORMAL.splitlines() + ["  Step 9/9: loss: 1.0", "CUDA_ERROR_DEINITIALIZED"]:
        events += parser.feed(line)
    assert of(events, "step")[-1]["step"] == 6
    assert of(events, "log")[-1]["kind"] == "cuda"
    assert parser.finish(exit_code=0) == []
