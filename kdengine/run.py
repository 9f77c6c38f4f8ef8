"""One KD run from config to verdict, in stages:

    prepare -> load_teacher -> load_student -> data -> train -> final_eval -> verdict

each a `stage` event; the train stage is kdengine.trainer's loop. A failure of any kind ends the
run as failed with its reason in one line and its traceback in launch.log (a loss that is NaN or
inf: the line alone, naming the checkpoint kept); SIGINT/SIGTERM end it
as cancelled, after writing a checkpoint of the last trained step (one process);
`resume=True` continues from the newest complete checkpoint.
"""

from __future__ import annotations

import os
import platform
import signal
import time
import traceback
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import kdengine
from kdengine import events as ev
from kdengine.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint
from kdengine.config import ConfigError, RunConfig
from kdengine.data import TokenSplits
from kdengine.data.examples import ExampleData
from kdengine.data.store import NAMED_SKIPS
from kdengine.diskspace import (
    DiskFull,
    Footprint,
    full_prefix,
    human,
    is_disk_full,
    saves_left,
    side_files,
    space_verdict,
)
from kdengine.distributed import from_env, is_sharded_checkpoint
from kdengine.providers import Student
from kdengine.runlog import RunLog
from kdengine.stop import RunCancelled, StopSignals
from kdengine.teacher.provider import open_cached_teacher, teacher_cache_fields
from kdengine.trainer import (
    BaselineNotFinite,
    EvalNotFinite,
    KDTrainer,
    LossNotFinite,
    pick_device,
    pick_dtype,
    refuse_a_non_finite_evaluation,
)
from kdengine.verdict import verdict_from_events

EXIT_COMPLETED, EXIT_FAILED = 0, 1
STAGES = ("prepare", "load_teacher", "load_student", "data", "train", "final_eval", "verdict")


@dataclass
class RunResult:
    status: str  # completed | failed | cancelled
    exit_code: int
    run_dir: Path
    verdict: Any = None
    error: str = ""  # a failed run: the reason, one line as the CLI prints it
    stage: str = ""  # ... and the stage it failed in
    traceback: bool = True  # ... and whether launch.log holds its traceback (not for a NaN)


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"kdengine": kdengine.__version__, "torch": torch.__version__,
                            "python": platform.python_version(), "host": platform.node(),
                            "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def at_once(stop: Any) -> AbstractContextManager:
    """A stage whose work a cancel must not wait out (a model's download, the demo teacher's
    training): one process stops at once inside it (StopSignals.interruptible). Under torchrun
    the ranks stop together at the next check instead (one that left at once would leave the
    others waiting in the barrier of rank0_first)."""
    return stop.interruptible() if isinstance(stop, StopSignals) else nullcontext()


def run(config: RunConfig, run_dir: Path, *, resume: bool = False,
        started: float | None = None, teacher_identity: str | None = None) -> RunResult:
    """Run every stage, writing events and launch.log into `run_dir` (which must exist).
    `started`: the engine process's start (time.monotonic), which the first step's startup_s
    counts from (default: this call). `teacher_identity`: the live teacher's, for run_started
    (a --resume compares it: kdengine.cli)."""
    from kdengine.loading import load_data, load_student, load_teacher

    started = time.monotonic() if started is None else started
    dist = from_env(config.device)  # torchrun (WORLD_SIZE > 1): data parallel, FSDP2 student
    log = dist.run_log(run_dir)  # rank 0 writes events; other ranks only their errors
    stop = dist.agreed_stop(StopSignals())
    stage = "prepare"
    trainer: KDTrainer | None = None
    footprint: Footprint | None = None
    held = ExitStack()  # what the run holds until it ends (its share of the CPU)
    try:
        with stop:
            torch.manual_seed(config.seed)
            device = dist.device(pick_device(config))
            # Deterministic kernels on the CPU, where they cost nothing; CUDA runs take the fast
            # (not bit-reproducible) kernels, e.g. atomics in some backward kernels
            torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
            dtype = pick_dtype(config, device)
            ckpt = latest_checkpoint(run_dir) if resume else None
            threads_note = _share_cpu(device, dist, run_dir, resume, held)
            run_id = ev.run_id_of(run_dir)  # the id the run is listed and watched by
            log.emit(ev.RUN_STARTED, run_id=run_id, run_dir=str(run_dir),
                     config=config.to_dict(), device=str(device), dtype=str(dtype)[6:],
                     resumed_from=_step_of(ckpt) if resume else None, env=environment(),
                     **dist.describe(), **teacher_cache_fields(config),
                     **({"teacher_identity": teacher_identity} if teacher_identity else {}))
            log.line(f"run {run_id} on {device} ({str(dtype)[6:]}), kdengine "
                     f"{kdengine.__version__}, torch {torch.__version__}")
            if threads_note:
                log.line(threads_note)
            log.stage(stage, "running")
            stop.check()  # a cancel that came while the engine started
            log.stage(stage, "done")

            stage = "load_teacher"
            log.stage(stage, "running")
            if config.teacher_cache:  # no teacher loaded: its cached targets (kdengine.teacher)
                teacher, tokenizer = open_cached_teacher(config, log)
                log.stage(stage, "done", teacher.describe())
            else:
                # rank 0 fills the caches (hub, demo teacher) alone; a cancel stops it at once
                with dist.rank0_first(), at_once(stop):
                    teacher, tokenizer = load_teacher(config, device, dtype, log)
                placed = dist.place_teacher(teacher, device)
                log.stage(stage, "done", f"{_si(_count(teacher))} params" +
                          (f", {placed} over {dist.world_size} ranks" if dist.enabled else ""))
            stop.check()

            stage = "load_student"
            log.stage(stage, "running")
            with at_once(stop):
                loaded = load_student(config, device, tokenizer, teacher, log)
            student = dist.place_student(loaded)
            log.stage(stage, "done", f"{_si(_count(student))} trainable params" +
                      (f", {dist.student_placement} over {dist.world_size} ranks"
                       if dist.enabled else ""))
            footprint = _check_disk_space(config, run_dir, student, ckpt, log)
            stop.check()

            stage = "data"
            log.stage(stage, "running")
            # rank 0 tokenizes into the engine's cache (example data's token store, or raw
            # text's tokens: kdengine.data.text_cache), or finds it there; the other ranks read it
            with dist.rank0_first():
                splits = load_data(config, tokenizer, getattr(teacher, "source_dir", None),
                                   log.line)
            detail, counts = data_summary(splits)
            _report_data(splits, log)
            log.stage(stage, "done", detail, **counts)  # the detail fits the stage tracker

            stage = "train"
            log.stage(stage, "running")
            rollout = None
            if config.samples_completions:  # on-policy / seq_kd: kdengine.onpolicy
                from kdengine.onpolicy import make_rollout

                rollout = make_rollout(config, splits, tokenizer, teacher, student, device,
                                       dtype)
                held_out = len(rollout.prompts.held_out(config.eval_prompts))
                if config.lmbda > 0 and held_out < config.eval_prompts:  # said, not silent
                    log.message("warning", f"--eval-prompts {config.eval_prompts}: the held-out "
                                f"data has {held_out} prompts, so each evaluation completes "
                                f"those {held_out} (a larger --val-fraction holds out more)")
            trainer = KDTrainer(config, teacher, student, splits, log, device, dtype, stop,
                                dist=dist, rollout=rollout, started=started)
            if ckpt is not None and (dist.enabled or is_sharded_checkpoint(ckpt)):
                dist.load_checkpoint(ckpt, trainer)  # DCP shards
            elif ckpt is not None:
                state, _ = load_checkpoint(ckpt, student.module)
                trainer.restore(state)
            if ckpt is not None:
                log.line(f"resumed from {ckpt} at step {trainer.step}")
            trainer.run(evaluate_start=ckpt is None)
            log.stage(stage, "done", f"{trainer.step} steps")

            stage = "final_eval"
            log.stage(stage, "running")
            # a NaN here ends the run before these weights are checkpointed or written
            refuse_a_non_finite_evaluation(trainer.evaluate())
            trainer.checkpoint()
            # on disk before the final student is written beside it (the disk space check
            # counts one at a time) and before the run can complete
            trainer.report_checkpoints(wait=True)
            from kdengine.loading import save_final_student

            final = dist.save_final(save_final_student, config, student, run_dir, tokenizer)
            log.line(f"final student written to {final} (HF layout)")
            log.stage(stage, "done")

            stage = "verdict"
            log.stage(stage, "running")
            seen = ev.read_events(log.events.path)
            verdict = verdict_from_events(
                [*seen, {"type": ev.RUN_FINISHED, "status": "completed", "exit_code": 0}])
            log.emit(ev.VERDICT, **verdict.to_event())
            log.line(f"verdict {verdict.summary()}")
            log.stage(stage, "done", verdict.status)
            log.emit(ev.RUN_FINISHED, status="completed", exit_code=EXIT_COMPLETED,
                     steps=trainer.step)
            return RunResult("completed", EXIT_COMPLETED, run_dir, verdict)
    except (RunCancelled, KeyboardInterrupt) as exc:
        name = str(exc) or "SIGINT"
        code = 128 + getattr(signal, name, signal.SIGINT)
        if isinstance(exc, RunCancelled) and trainer is not None:  # (a second Ctrl-C: at once)
            _checkpoint_at_cancel(trainer, log)
        log.stage(stage, "cancelled", f"{name} received")
        log.message("warning", f"run cancelled by {name} at step {_step(trainer)}")
        log.emit(ev.RUN_FINISHED, status="cancelled", exit_code=code, steps=_step(trainer))
        return RunResult("cancelled", code, run_dir)
    except Exception as exc:  # every failure ends as a failed run with its reason and traceback
        # a loss that is NaN or inf is the numbers' failure, not the code's: its one line says
        # it all (the step, the fix, the checkpoint kept), with no traceback anywhere
        numbers = isinstance(exc, (LossNotFinite, BaselineNotFinite))
        kind = type(exc).__name__
        if isinstance(exc, LossNotFinite) and not isinstance(exc, EvalNotFinite) \
                and trainer is not None:
            log.emit(ev.STEP, step=trainer.step, loss=float("nan"), total_steps=config.steps)
        reason = str(exc) or kind
        if isinstance(exc, LossNotFinite):
            kept = latest_checkpoint(run_dir)
            reason += (f"; the last checkpoint, {kept}, is kept" if kept is not None else
                       "; no checkpoint was written before it")
        if not isinstance(exc, DiskFull):  # a save outside checkpoint.py: what ran out where
            need = f", a checkpoint needs {human(footprint.checkpoint)}" if footprint else ""
            reason = full_prefix(exc, run_dir, need) + reason
        # the details go to launch.log (and the error event) only: the terminal gets the CLI's
        # one line, `[stage] failed: reason (traceback in RUN_DIR/launch.log)`
        try:
            log.stage(stage, "failed", reason, terminal=False)
            if numbers:
                log.emit(ev.LOG, level="error", message=reason)
                log.line(f"ERROR: {reason}", terminal=False)
            else:
                tb = "".join(traceback.format_exception(exc))
                log.emit(ev.LOG, level="error", message=f"{kind}: {reason}", traceback=tb)
                log.line(f"ERROR: {kind}: {reason}", terminal=False)
                log.line(tb.rstrip(), terminal=False)
            log.emit(ev.RUN_FINISHED, status="failed", exit_code=EXIT_FAILED, error=reason,
                     stage=stage, steps=_step(trainer))
        except OSError as unrecorded:  # a disk so full that the failure cannot be written down
            if not is_disk_full(unrecorded):
                raise
            reason += f" (not recorded in {run_dir}: its disk is full)"
        return RunResult("failed", EXIT_FAILED, run_dir, error=reason, stage=stage,
                         traceback=not numbers)
    finally:
        held.close()
        log.close()
        dist.close()


def _checkpoint_at_cancel(trainer: KDTrainer, log: RunLog) -> None:
    """A graceful cancel keeps the last trained step (KDTrainer.checkpoint_at_cancel). The run
    ends cancelled whatever becomes of that write: a second signal that cut it short, or a write
    that failed, is a warning naming the checkpoint a resume continues from instead."""
    try:
        trainer.checkpoint_at_cancel()
        if trainer.dist.enabled and trainer.step:
            kept = latest_checkpoint(log.run_dir)
            log.line(f"no checkpoint at the cancel under torchrun (the periodic ones only): "
                     f"--resume continues from {kept.name if kept else 'nothing (none written)'}")
        return
    except (RunCancelled, KeyboardInterrupt) as again:
        why = f"{str(again) or 'SIGINT'} came during its write"
    except Exception as exc:  # noqa: BLE001 - a full disk above all: the run stays cancelled
        why = f"{type(exc).__name__}: {exc}"
    kept = latest_checkpoint(log.run_dir)
    log.message("warning", f"the checkpoint of step {trainer.step} at the cancel was not written "
                f"({why}); --resume continues from "
                + (f"{kept.name}" if kept else "nothing: no checkpoint is complete"))


def _share_cpu(device: torch.device, dist: Any, run_dir: Path, resume: bool,
               held: ExitStack) -> str:
    """On the CPU, in one process: the threads this run takes beside the other kdengine runs
    on the machine (kdengine.cpu_threads), noted in `held` for the run's life; the log line
    that says why it took fewer than torch would, or ""."""
    if device.type != "cpu" or dist.enabled:
        return ""
    from kdengine import cpu_threads

    choice = held.enter_context(cpu_threads.sharing(
        cpu_threads.registry_dir(), torch.get_num_threads(),
        explicit=bool(os.environ.get("OMP_NUM_THREADS")),
        first_start=cpu_threads.first_start_threads(run_dir) if resume else None))
    if choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    return choice.why


def _check_disk_space(config: RunConfig, run_dir: Path, student: Student, ckpt: Path | None,
                      log: RunLog) -> Footprint:
    """Refuse a run whose checkpoints and final student cannot fit on its file system (before
    a step is trained), warn with the numbers when it is tight; the sizes are the loaded
    student's own (kdengine.diskspace says what a checkpoint holds)."""
    module = student.module
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    weights = sum(v.numel() for v in module.state_dict().values())  # a tied head twice
    saved = getattr(student, "saved_dtype", torch.float32)
    source = getattr(student, "source_dir", None)  # tokenizer files travel with the final
    footprint = Footprint.of(params, max(weights - params, 0), saved.itemsize, side_files(source))
    saves = saves_left(config.steps, config.checkpoint_every, _step_of(ckpt) or 0)
    state, text = space_verdict(run_dir, footprint, saves, len(complete_checkpoints(run_dir)))
    if state == "short":
        raise ConfigError("run_dir", text)
    if state == "tight":
        log.message("warning", text)
    return footprint


def data_summary(data: TokenSplits | ExampleData) -> tuple[str, dict[str, Any]]:
    """The data stage's detail, short enough for the dashboard's stage tracker, and its counts
    (the fields of its `done` event, docs/events.md)."""
    if isinstance(data, ExampleData):
        stats = data.stats  # 26 characters fit the tracker beside a 52-wide side column
        return (f"{_si(stats.examples)} ex, {_si(stats.trained_tokens)} trained tok",
                {"kind": "examples", **stats.to_event()})
    return (f"{_si(len(data.train))} train, {_si(len(data.val))} val tok",
            {"kind": "text", "train_tokens": len(data.train), "val_tokens": len(data.val),
             "skipped_files": len(data.skipped), "skipped": data.skipped[:NAMED_SKIPS]})


def _report_data(data: TokenSplits | ExampleData, log: RunLog) -> None:
    """The data's counts in words in the log, and a warning naming skipped files."""
    if isinstance(data, ExampleData):
        s = data.stats
        share = s.trained_tokens / max(s.tokens, 1)
        log.line(f"data: {s.examples} examples ({s.train_examples} train, {s.val_examples} "
                 f"validation) in {s.train_rows} + {s.val_rows} rows ({s.fill:.0%} filled), "
                 f"{s.tokens} tokens, {s.trained_tokens} trained ({share:.0%}), {s.truncated} "
                 f"truncated, {s.dropped} dropped"
                 + (", token store reused (built by an earlier command)" if s.cached else
                    f", token store built: {data.store.tokenized} examples tokenized in "
                    f"{data.store.seconds:.2f} s"))
        if (left_out := s.left_out_line()) is not None:  # not packed: no loss term reads them
            log.line(left_out)
        if (empty := s.empty_answers_warning()) is not None:
            log.message("warning", empty)
        count, named = s.skipped_files, s.skipped
    else:
        count, named = len(data.skipped), data.skipped[:NAMED_SKIPS]
    if count:
        more = f" and {count - len(named)} more" if count > len(named) else ""
        files = "bad file" if count == 1 else "bad files"
        log.message("warning", f"data: {count} {files} skipped (on_bad_file=skip): "
                    + "; ".join(why for _, why in named) + more)


def _step(trainer: KDTrainer | None) -> int:
    return trainer.step if trainer is not None else 0


def _step_of(ckpt: Path | None) -> int | None:
    return int(ckpt.name.split("-")[1]) if ckpt is not None else None


def _si(n: int) -> str:
    """1234567 -> '1.23M': short enough for the dashboard's stage tracker."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _count(provider: Any) -> int:
    module = getattr(provider, "module", None) or getattr(provider, "model", None)
    return sum(p.numel() for p in module.parameters()) if module is not None else 0
