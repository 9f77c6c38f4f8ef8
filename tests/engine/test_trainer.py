"""The train loop: every row trains, determinism, NaN stops, signals cancel, events tell all."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from kdengine.config import RunConfig
from kdengine.data import TokenSplits
from kdengine.events import read_events
from kdengine.providers import BigramStudent, BigramTeacher
from kdengine.runlog import RunLog
from kdengine.stop import RunCancelled
from kdengine.trainer import KDTrainer, LossNotFinite, lr_factor


def bigram_trainer(tmp_path: Path, **overrides) -> KDTrainer:
    values = dict(teacher="t", student="s", data="d", steps=10, batch_size=4, seq_len=8,
                  lr=0.05, eval_batches=1, temperature=2.0, alpha=0.3)
    values.update(overrides)
    config = RunConfig.from_mapping(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    stream = torch.arange(400) % 32
    splits = TokenSplits(train=stream, val=stream.flip(0), eos_id=0)
    log = RunLog(tmp_path)
    return KDTrainer(config, BigramTeacher(), BigramStudent(), splits, log,
                     torch.device("cpu"), torch.float32)


def test_every_row_of_a_batch_trains(tmp_path: Path) -> None:
    trainer = bigram_trainer(tmp_path)
    # four rows over disjoint token sets: row r only uses tokens 8r .. 8r+7
    rows = torch.stack([torch.arange(8) + 8 * r for r in range(4)])
    input_ids, labels = rows[:, :-1], rows[:, 1:]
    before = trainer.student.module.embed.detach().clone()
    trainer.train_step((input_ids, labels))
    changed = (trainer.student.module.embed.detach() - before).abs().sum(-1) > 0
    for r in range(4):
        assert changed[input_ids[r]].all(), f"row {r} did not train"
    untouched = torch.ones(32, dtype=torch.bool)
    untouched[input_ids.flatten()] = False
    assert not changed[untouched].any()


def test_training_is_deterministic_on_cpu(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        trainer = bigram_trainer(tmp_path / str(i))
        runs.append([trainer.train_step()["loss"] for _ in range(5)])
    assert runs[0] == runs[1]


def test_schedule_warms_up_then_decays_to_a_tenth() -> None:
    cfg = RunConfig(steps=100, warmup_steps=10, lr_schedule="cosine")
    assert lr_factor(5, cfg) == pytest.approx(0.5)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    factors = [lr_factor(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))


def _record_calls(trainer: KDTrainer) -> list[tuple[str, int]]:
    """("queue", n) when the loop starts queueing step n, ("read", n) when it reads its numbers."""
    calls: list[tuple[str, int]] = []
    queue, finish = trainer.queue_step, trainer._finish

    def queue_step(batch=None, **kwargs):
        calls.append(("queue", trainer.step + 1))
        return queue(batch, **kwargs)

    def read(step):
        calls.append(("read", step.number))
        return finish(step)

    trainer.queue_step, trainer._finish = queue_step, read
    return calls


def _step_events(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]


def test_the_loop_reads_a_step_after_queueing_the_next_and_trains_as_step_by_step(
        tmp_path: Path) -> None:
    settings = dict(steps=12, eval_every=5, checkpoint_every=8, log_every=1)
    trainer = bigram_trainer(tmp_path / "loop", **settings)
    calls = _record_calls(trainer)
    trainer.run()

    def before(a, b):
        return calls.index(a) < calls.index(b)

    # the host reads step n's loss while step n + 1 is queued (on a GPU, still running) ...
    for n in (2, 3, 4, 6, 7, 9, 11):
        assert before(("queue", n + 1), ("read", n)), calls
    # ... except for the first step (its start-up time), a step an evaluation or a checkpoint
    # follows (they see the weights of that step), and the last
    for n in (1, 5, 8, 10):
        assert before(("read", n), ("queue", n + 1)), calls
    assert calls[-1] == ("read", 12)
    events = _step_events(tmp_path / "loop")
    assert [e["step"] for e in events] == list(range(1, 13))
    assert all(e["tokens_per_s"] > 0 for e in events)
    # the same numbers and weights as one finished step after another
    reference = bigram_trainer(tmp_path / "steps", **settings)
    expected = [reference.train_step() for _ in range(12)]
    assert [(e["loss"], e["grad_norm"], e["lr"]) for e in events] == \
        [(m["loss"], m["grad_norm"], m["lr"]) for m in expected]
    assert torch.equal(trainer.student.module.embed, reference.student.module.embed)


def test_each_steps_time_is_its_own_across_overlapped_and_evaluated_steps(
        tmp_path: Path) -> None:
    """tokens_per_s of every step counts that step's work once: never only part of it (the step
    an evaluation follows, finished right after the step before it was read), never two steps'
    (the first overlapped one after it): the steps' times fit inside the loop's wall time."""
    trainer = bigram_trainer(tmp_path, steps=12, eval_every=5, log_every=1)
    loss = trainer._loss

    def slow_forward(*args, **kwargs):
        time.sleep(0.02)  # the step's forward dominates its time
        return loss(*args, **kwargs)

    trainer._loss = slow_forward
    started = time.perf_counter()
    trainer.run()
    wall = time.perf_counter() - started
    tokens = 4 * 8  # the batch's input ids: batch_size 4 x seq_len 8
    seconds = [tokens / e["tokens_per_s"] for e in _step_events(tmp_path)]
    assert len(seconds) == 12 and min(seconds) >= 0.02, seconds
    assert sum(seconds) <= wall


def test_a_nan_loss_in_an_overlapped_step_fails_there_and_no_update_follows_it(
        tmp_path: Path) -> None:
    trainer = bigram_trainer(tmp_path / "nan", steps=12, log_every=1)
    loss = trainer._loss

    def nan_at_step_6(*args, **kwargs):
        parts = loss(*args, **kwargs)
        if trainer.step == 6:
            parts.loss = parts.loss * float("nan")
        return parts

    trainer._loss = nan_at_step_6
    calls = _record_calls(trainer)
    with pytest.raises(LossNotFinite, match="loss is nan at step 6"):
        trainer.run()
    # step 7 was queued before step 6 was read, but its update never was
    assert ("queue", 7) in calls and trainer.step == 6
    assert [e["step"] for e in _step_events(tmp_path / "nan")] == [1, 2, 3, 4, 5]
    reference = bigram_trainer(tmp_path / "five", steps=12)
    for _ in range(5):
        reference.train_step()
    assert torch.equal(trainer.student.module.embed, reference.student.module.embed)


def test_a_stop_while_a_step_is_queued_reports_that_step_before_the_cancel(
        tmp_path: Path) -> None:
    trainer = bigram_trainer(tmp_path, steps=50, log_every=1)
    queue = trainer.queue_step

    def signal_during_step_7(batch=None, **kwargs):
        step = queue(batch, **kwargs)
        if step.number == 7:
            trainer.stop.received = "SIGTERM"
        return step

    trainer.queue_step = signal_during_step_7
    with pytest.raises(RunCancelled):
        trainer.run()
    assert trainer.step == 7
    assert [e["step"] for e in _step_events(tmp_path)] == list(range(1, 8))


def _events(run_dir: Path) -> list[dict]:
    return read_events(run_dir / "events.jsonl")


def test_a_real_tiny_run_writes_events_log_checkpoints_and_a_passing_verdict(
        tmp_path, tiny_run_inputs, tiny_args, engine_cmd) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir, steps=30)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    events = _events(run_dir)
    assert events[0]["type"] == "run_started"
    assert events[0]["config"]["batch_size"] == 4 and events[0]["config"]["lr"] == 3e-3
    assert [e["seq"] for e in events] == list(range(len(events)))
    stages = [(e["stage"], e["state"]) for e in events if e["type"] == "stage"]
    assert ("train", "done") in stages and ("verdict", "done") in stages
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps == list(range(1, 31))
    assert [e["step"] for e in events if e["type"] == "eval"] == [0, 10, 20, 30]
    verdict = next(e for e in events if e["type"] == "verdict")
    assert verdict["status"] == "pass" and verdict["id"] == "F-DISTILL-SMOKE-001"
    assert events[-1] == {**events[-1], "type": "run_finished", "status": "completed"}
    log = (run_dir / "launch.log").read_text()
    assert "step 30/30 loss=" in log and "verdict F-DISTILL-SMOKE-001 PASS" in log
    assert (run_dir / "final" / "model.safetensors").exists()
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 30


def test_nan_loss_stops_the_run_with_an_error_and_applies_no_update(
        tmp_path, tiny_run_inputs, tiny_args, engine_cmd, engine_in_process) -> None:
    from safetensors.torch import load_file, save_file

    weights = Path(tiny_run_inputs["teacher"]) / "model.safetensors"
    state = load_file(str(weights))
    state["model.norm.weight"][0] = float("nan")
    save_file(state, str(weights))
    run_dir = tmp_path / "run"
    # in this process (a failing run's real process: test_failures.py)
    out = engine_in_process(*tiny_args(tiny_run_inputs, run_dir))
    assert out.returncode == 1
    events = _events(run_dir)
    errors = [e for e in events if e["type"] == "log" and e["level"] == "error"]
    # (a NaN teacher: the step-0 evaluation's KD term is NaN, so the run ends before step 1;
    # a training step's NaN: test_a_nan_loss_in_an_overlapped_step_fails_there_...)
    assert errors and "val loss is nan at step 0" in errors[0]["message"]
    assert not [e for e in events if e["type"] == "step"]
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "failed"
    assert not (run_dir / "checkpoints").exists()
    verdict = subprocess.run([*engine_cmd, "verdict", str(run_dir)], capture_output=True,
                             text=True)
    assert verdict.returncode == 2 and "nan" in verdict.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_cleanly_as_cancelled(tmp_path, tiny_run_inputs, tiny_args,
                                                     engine_cmd, sig) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir, steps=100000,
                                                     checkpoint_every=0, eval_every=0)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(e["type"] == "step" for e in _events(run_dir)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    events = _events(run_dir)
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "cancelled"
    assert "Traceback" not in proc.stderr.read()


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (the SigCgt mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_a_cancel_while_the_engine_starts_ends_the_run_as_cancelled(
        tmp_path, tiny_run_inputs, tiny_args, engine_cmd) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _catches(proc.pid, signal.SIGTERM):  # the engine's first moments, torch unloaded
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    events = _events(run_dir)
    assert not [e for e in events if e["type"] == "step"]
    stages = [(e["stage"], e["state"]) for e in events if e["type"] == "stage"]
    # the signal lands while torch imports, so the first stage is where it is noticed (a
    # descheduled test process could send it later: then a later stage, never a step)
    assert stages[-1][1] == "cancelled" and ("train", "running") not in stages
    assert events[-1] == {**events[-1], "type": "run_finished", "status": "cancelled",
                          "exit_code": 143}
    assert "Traceback" not in proc.stderr.read()
