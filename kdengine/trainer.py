"""The train loop over loaded models and data (`KDTrainer`); kdengine.run drives a whole run.

AdamW with warm-up and cosine/linear decay, global gradient clipping, held-out evaluation at step
0, every eval_every steps and at the end. Seeded and deterministic on the CPU. A NaN or inf loss
stops the run as failed before the bad update is applied; SIGINT/SIGTERM end it as cancelled after
the current step (during a sampled step's generation: at its next token, and that step never
trains), and a cancel's checkpoint keeps the last trained step (`checkpoint_at_cancel`).
Checkpoints are atomic and `resume=True` continues exactly. float16 runs scale the loss
dynamically and skip a step whose gradients overflow (docs/models.md, "Dtypes"). The
loop keeps the host one step ahead of the device (`queue_step`, `QueuedStep`): a step's loss is
read while the next one's forward and backward run, and before the next update is queued.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdengine import events as ev
from kdengine.checkpoint import (
    latest_checkpoint,
    rng_state,
    set_rng_state,
)
from kdengine.checkpoint_writer import CheckpointWriter, WrittenCheckpoint
from kdengine.compile_cache import (
    cache_lookups,
    compile_seconds,
    describe_lookups,
    keep_compiled_artifacts,
)
from kdengine.compiled import (
    CompileOptions,
    compile_decoder_layers,
    compile_student,
    compile_teacher,
    fused_clipped_step,
    uncompile_decoder_layers,
)
from kdengine.config import ConfigError, RunConfig
from kdengine.data import BatchSampler, TokenSplits
from kdengine.data.examples import ExampleData
from kdengine.distributed import Dist
from kdengine.gauges import Gauges, describe_gauges
from kdengine.losses import IGNORE_INDEX, KDLossSpec, LossParts, fused_kd_loss
from kdengine.providers import Student, Teacher
from kdengine.runlog import RunLog
from kdengine.stop import RunCancelled, StopSignals, cut_by_a_signal
from kdengine.verdict import EVAL_LABELS

if TYPE_CHECKING:  # kdengine.onpolicy (and generation) load only for runs that sample
    from kdengine.onpolicy import Rollout


class LossNotFinite(Exception):
    """A training step's loss or gradient norm is NaN or inf: its update was not applied and
    the run ends at that step (kdengine.run names the last checkpoint, kept)."""


class BaselineNotFinite(Exception):
    """The step-0 evaluation gave a NaN or inf loss: the verdict is INCONCLUSIVE already, and
    no training step can make it anything else, so the run ends before its first step."""


class EvalNotFinite(LossNotFinite):
    """An evaluation after step 0 gave a NaN or inf loss: the student's weights diverged in
    the steps since, so the run ends there, as at a non-finite training loss, before those
    weights are checkpointed (or, at the last step, written as the final student)."""


# what a loss that turns NaN or inf in training most likely needs: the same words at a step's
# loss and at an evaluation's
DIVERGED = "the training diverged: start again with a lower --lr (or more --warmup-steps)"


def pick_device(config: RunConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{config.device} asked for, but torch sees no CUDA device "
                          "(use device=cpu or auto)")
    if device.type == "cuda" and device.index is not None:
        # the run's GPU made the current one: Triton's kernels (the KD loss, FP8, SwiGLU) launch
        # on the current device, and on cuda:1 with cuda:0 current the KD kernel failed and the
        # run fell back to the slower compiled math (benchmarks/gpu_features.py, case cuda1)
        torch.cuda.set_device(device)
    return device


def pick_dtype(config: RunConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, config.dtype)


def lr_factor(step: int, config: RunConfig) -> float:
    """Multiplier of the peak LR for optimizer step `step` (1-based)."""
    if config.warmup_steps and step <= config.warmup_steps:
        return step / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    if config.lr_schedule == "linear":
        return 1.0 - progress * 0.9
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine down to 10%


@dataclass
class QueuedStep:
    """A training step whose work is queued on the device, and its numbers (loss, gradient norm,
    ce, kd): copied to the host behind its update, so reading them waits for this step only,
    not for whatever the host has queued since."""
    number: int
    started: float  # perf_counter when the host began to queue it
    tokens: int
    parts: LossParts
    sampled: Any = None  # a sampled batch (on-policy, seq_kd) and its time split
    timing: dict[str, float] | None = None
    lr: float = 0.0
    scale: float | None = None  # float16: the loss scale it ran at
    host_s: float = 0.0  # the host's time queueing it (on the CPU: running it)
    _numbers: torch.Tensor | tuple[float, ...] | None = None
    _copied: Any = None  # a CUDA event: the copy to the host is done
    _floats: list[float | None] | None = None  # numbers that were floats already (None: copied)

    def read_later(self, grad_norm: torch.Tensor) -> None:
        """Queue the copy of the step's numbers to the host (float64: fp32's values exactly)."""
        ce, kd = self.parts.raw_terms()
        numbers = [self.parts.value, grad_norm, ce, kd]
        on_device = [n for n in numbers if isinstance(n, torch.Tensor)]
        if on_device[0].device.type != "cuda":  # the CPU: nothing to wait for
            self._numbers = tuple(float(n) for n in numbers)
            return
        stacked = torch.stack([n.detach().reshape(()).double() for n in on_device])
        self._numbers = stacked.to("cpu", non_blocking=True)  # into pinned memory
        self._copied = torch.cuda.Event()
        self._copied.record()
        self._floats = [n if not isinstance(n, torch.Tensor) else None for n in numbers]

    def values(self) -> tuple[float, float, float, float]:
        """(loss, grad_norm, ce, kd), waiting for the step's copy if it is not done yet."""
        if self._copied is not None:
            self._copied.synchronize()
            copied = iter(self._numbers.tolist())
            self._numbers = tuple(next(copied) if f is None else f for f in self._floats)
            self._copied = None
        return self._numbers


class KDTrainer:
    """The train loop over already-loaded providers and data: token splits of raw text
    (random windows) or example data (packed rows of whole examples, with position ids)."""

    def __init__(self, config: RunConfig, teacher: Teacher, student: Student,
                 splits: TokenSplits | ExampleData,
                 log: RunLog, device: torch.device, dtype: torch.dtype,
                 stop: StopSignals | None = None, chunk_tokens: int = 2048,
                 dist: Dist | None = None, compile_models: bool | None = None,
                 compile_options: CompileOptions | None = None,
                 rollout: Rollout | None = None, started: float | None = None) -> None:
        self.config, self.teacher, self.student, self.log = config, teacher, student, log
        self.dist = dist or Dist()  # torchrun: this rank's rows, global loss normalizer
        self.dist.check_batch(config.batch_size)
        if dtype == torch.float16 and self.dist.enabled:  # (loss scaling below)
            raise ConfigError("dtype", "float16 needs loss scaling, which kdengine does not do "
                              "across torchrun ranks yet: use --dtype bfloat16 (or float32)")
        self.device, self.dtype = device, dtype
        self.stop = stop or StopSignals()
        self.spec = KDLossSpec.from_config(config)
        self.chunk_tokens = chunk_tokens
        # torch.compile where it pays: on CUDA each decoder block (norms, rope, SwiGLU fused
        # around the matmuls) and the loss's per-chunk math; the CPU runs eager.
        self.compile = device.type == "cuda" if compile_models is None else compile_models
        self.compile_options = compile_options or CompileOptions.from_env()
        if rollout is not None and self.compile:
            self.compile_options, warning = self.compile_options.for_sampled_batches()
            if warning:
                log.message("warning", warning)
        self._cudagraphs = False  # a model replays as CUDA graphs: each step begins a replay
        # compiled artifacts kept in the engine's cache dir for the next run of these shapes
        # (kdengine.compile_cache): pointed there before the first forward compiles anything
        self.compile_cache = None
        if self.compile or device.type == "cuda":
            self.compile_cache = keep_compiled_artifacts()
            if self.compile_cache.warning:
                log.message("warning", self.compile_cache.warning)
        # the first step event's startup_s counts from the engine process's start (the CLI's
        # clock, time.monotonic), else from this trainer's
        self.started = time.monotonic() if started is None else started
        self.startup_s: float | None = None
        if self.compile:
            opts = self.compile_options
            if self.dist.teacher_placement == "sharded":  # FSDP2 groups: block by block
                compile_decoder_layers(teacher)
            else:  # one process or a replicated teacher: the same compile
                self._cudagraphs = compile_teacher(teacher, opts) == "model+cudagraphs"
            # Under FSDP2 the same blocks are compiled (Module.compile is lazy and in place, so
            # before or after fully_shard is the same; FSDP2's hooks run eagerly at each
            # block's edge); a whole-model student graph would break at every block's hooks.
            how = compile_student(student, self.dist.student_compile_options(opts))
            self._cudagraphs |= how == "model+cudagraphs"
        self._compile_proven = not self.compile
        if hasattr(teacher, "samplers"):  # a teacher cache: the rows it holds targets for
            self.sampler, val = teacher.samplers(splits, config.batch_size, config.seed)
        elif isinstance(splits, ExampleData):  # batches of (input_ids, labels, position_ids)
            self.sampler, val = splits.samplers(config.batch_size, config.seed)
        else:
            self.sampler = BatchSampler(splits.train, config.batch_size, config.seq_len,
                                        config.seed)
            val = BatchSampler(splits.val, config.batch_size, config.seq_len, config.seed)
        self.val_batches = val.fixed_batches(config.eval_batches)
        # runs that sample completions (on-policy, seq_kd): kdengine.onpolicy draws them
        self.rollout = rollout
        if rollout is not None and self.dist.enabled:
            raise ConfigError("lmbda", "on-policy and seq_kd runs train on one process for now: "
                              "run them without torchrun")
        if rollout is not None:  # a cancel ends a generation at its next token
            rollout.check_stop = self.stop.check
        self.timing: dict[str, float] | None = None  # a sampled step's teacher seconds
        self.last_sampled = None  # the step's sampled batch, for its sample event
        params = [p for p in student.module.parameters() if p.requires_grad]
        self.params = params
        # fp32 master weights and optimizer state (the student loads in fp32; autocast gives
        # the compute dtype); the fused CUDA kernel updates every tensor in one launch
        # (on the CPU too: the same guarded update, so the same overlapped loop)
        fused = device.type in ("cuda", "cpu")
        # (torchrun: a replicated student's whole update on every rank, a sharded one's on each
        # rank's local shards; kdengine.distributed)
        self.optimizer = self.dist.optimizer(params, lr=config.lr, betas=(0.9, 0.95),
                                             weight_decay=config.weight_decay, fused=fused)
        # the fused kernel: clipping folded into the update (no extra pass); a sharded student's
        # norm is the all-reduced one of the local shards
        self._fused_update = fused and not self.dist.update_on_dtensors
        self._update_kind = {key: self.optimizer.param_groups[0][key]
                             for key in ("fused", "foreach", "capturable")}
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: lr_factor(i + 1, config))
        # fp16 needs dynamic loss scaling (bf16 has fp32's range and does not): the backward
        # runs on the loss times GradScaler's scale, the fused loss takes its logit gradient for
        # the scaled loss, and a step whose gradients overflow is skipped with the scale halved
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.overflows_in_a_row = 0
        self.step = 0
        self._finished_at = 0.0  # perf_counter when the host last read a step's numbers
        # memory, utilization, power, MFU in step events (kdengine.gauges)
        self.gauges = Gauges.for_run(device, dtype, student.module, teacher, config.seq_len,
                                     self.dist.world_size)
        # one process: checkpoints snapshotted to host and written in the background
        self.checkpoints = CheckpointWriter(log.run_dir)

    def _autocast(self):
        """bf16/fp16 compute over fp32 master weights; fp32 runs need no autocast."""
        if self.dtype in (torch.float32, torch.float64):
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _loss(self, input_ids: torch.Tensor, labels: torch.Tensor,
              position_ids: torch.Tensor | None = None, rows: torch.Tensor | None = None,
              spec: KDLossSpec | None = None):
        """`position_ids` (packed rows, kdengine.data.packing): attention stays in examples;
        `rows`: the batch's rows of a teacher cache (kdengine.teacher); `spec` replaces the
        run's loss (a batch the student wrote trains on the KD term only)."""
        # this rank's share of the batch
        input_ids, labels, position_ids = self.dist.rows(input_ids, labels, position_ids)
        input_ids, labels = self._queued_copy(input_ids), self._queued_copy(labels)
        if position_ids is not None:
            position_ids = self._queued_copy(position_ids)
        if not self._compile_proven:
            return self._first_compiled_loss(input_ids, labels, position_ids, spec, rows)
        return self._loss_on_device(input_ids, labels, position_ids, spec, rows)

    def _queued_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch's tensor onto the device without the host waiting. CUDA first waits for
        everything queued on the stream before a copy from pageable memory, which emptied the
        queue the loop keeps a step ahead at every step (on Qwen2.5-1.5B -> 0.5B half the host's
        time went there: docs/performance.md, issue 16 round 5); from pinned memory the copy is
        queued like a kernel, and torch's pinned allocator keeps the block until it has run."""
        if self.device.type != "cuda" or tensor.device.type != "cpu":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _loss_on_device(self, input_ids: torch.Tensor, labels: torch.Tensor,
                        position_ids: torch.Tensor | None = None,
                        spec: KDLossSpec | None = None, rows: torch.Tensor | None = None):
        scaled = self.scaler.is_enabled() and torch.is_grad_enabled()
        if self._cudagraphs:  # a new step for CUDA-graph trees: the last one's outputs done
            torch.compiler.cudagraph_mark_step_begin()
        if rows is not None:  # a teacher cache: its stored targets, no teacher forward
            with self._autocast():
                s_hidden = self.student.hidden_states(input_ids, position_ids)
            return self.dist.globalize(self.teacher.loss(
                s_hidden, self.student.head_weight, labels, rows, spec or self.spec,
                self.chunk_tokens, normalizer=self.dist.normalizer(labels),
                compute_dtype=self.dtype, compile_math=self.compile,
                loss_scale=self.scaler.get_scale() if scaled else None))
        with self._autocast():
            start = self._clock() if self.timing is not None else 0.0
            # no autograd state at all for the frozen teacher
            with torch.inference_mode():
                t_hidden = self.teacher.hidden_states(input_ids, position_ids)
            if self.timing is not None:  # sampled steps report their time split
                self.timing["teacher_s"] = self._clock() - start
            s_hidden = self.student.hidden_states(input_ids, position_ids)
        # the lm-head matmuls in the compute dtype, softmaxes in fp32, never all logits at once
        parts = fused_kd_loss(s_hidden, self.student.head_weight, t_hidden,
                              self.teacher.loss_head, labels, spec or self.spec,
                              self.chunk_tokens,
                              normalizer=self.dist.normalizer(labels),
                              compute_dtype=self.dtype, compile_math=self.compile,
                              loss_scale=self.scaler.get_scale() if scaled else None)
        return self.dist.globalize(parts)

    def _first_compiled_loss(self, input_ids: torch.Tensor, labels: torch.Tensor,
                             position_ids: torch.Tensor | None = None,
                             spec: KDLossSpec | None = None, rows: torch.Tensor | None = None):
        """The first compiled call compiles; a compiler failure costs speed, never the run."""
        try:
            parts = self._loss_on_device(input_ids, labels, position_ids, spec, rows)
        except Exception as exc:  # noqa: BLE001 - any compiler error: fall back to eager
            self.log.message("warning", f"torch.compile failed ({type(exc).__name__}: {exc}); "
                             "training eager instead")
            self.compile = self._cudagraphs = False
            uncompile_decoder_layers(self.teacher)
            uncompile_decoder_layers(self.student)
            parts = self._loss_on_device(input_ids, labels, position_ids, spec, rows)
        self._compile_proven = True
        return parts

    def _clock(self) -> float:
        """perf_counter after the device's queued work is done (a time split that is true)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.student.module.eval()
        total = ce = kd = 0.0
        n = 0
        for batch in self.val_batches:  # (input_ids, labels[, position_ids])
            # a cancel stops here, between batches, not after the whole evaluation (minutes of
            # a big model's: a batch scheduler's SIGTERM grace ran out before the cancel)
            self.stop.check()
            # each batch's mean weighted by its trained tokens: packed rows of conversations
            # hold different numbers (raw-text windows the same), and a row's prompt tokens
            # (labels IGNORE_INDEX) count in neither the CE nor the KD term
            weight = int((batch[1] != IGNORE_INDEX).sum())
            if weight == 0:
                continue
            parts = self._loss(*batch)
            total += float(parts.value) * weight
            ce, kd, n = ce + parts.ce * weight, kd + parts.kd * weight, n + weight
        self.student.module.train()
        n = max(n, 1)
        result = {"step": self.step, "val_loss": total / n, "val_ce": ce / n, "val_kd": kd / n}
        if self.step == 0:  # what the student could reach: the verdict's "gap closed"
            teacher_ce = self.teacher_val_ce()
            if teacher_ce is not None:
                result["val_teacher_ce"] = teacher_ce
        samples: list[dict[str, Any]] = []
        if self.rollout is not None and self.config.lmbda > 0:
            # on-policy: the student's own writing on held-out prompts, graded (the verdict's)
            from kdengine.onpolicy import evaluate_generations

            gen, samples = evaluate_generations(self.rollout, self.student, self.teacher,
                                                self._autocast, self.step)
            result.update(gen)
        self.log.emit(ev.EVAL, **result)
        for sample in samples:
            self.log.emit(ev.SAMPLE, **sample)
        # step 0 is the verdict's baseline: of val_gen_kl where the evaluation has it
        # (on-policy), of val_loss otherwise (kdengine.verdict)
        tag = "" if self.step else (" (initial_loss: val_gen_kl)" if "val_gen_kl" in result
                                    else " (initial_loss)")
        gen_text = (f" val_gen_kl={result['val_gen_kl']:.4f} val_gen_teacher_logp="
                    f"{result['val_gen_teacher_logp']:.4f}" if samples or "val_gen_kl" in result
                    else "")
        self.log.line(f"eval step {self.step} val_loss={result['val_loss']:.4f} "
                      f"val_ce={result['val_ce']:.4f} val_kd={result['val_kd']:.4f}"
                      + (f" val_teacher_ce={result['val_teacher_ce']:.4f}"
                         if "val_teacher_ce" in result else "")
                      + f"{gen_text}{tag}")
        return result

    @torch.no_grad()
    def teacher_val_ce(self) -> float | None:
        """The teacher's own CE on the held-out batches (once, at step 0): the floor a student
        distilled from it aims at; a teacher no better than a fresh student is a wrong one. A
        teacher cache (no model) gives the NLL its writer stored for these same held-out rows
        (None from a cache written before it kept them); None for a teacher sharded over ranks."""
        if hasattr(self.teacher, "samplers"):
            return self.teacher.val_ce(self.val_batches)
        if self.dist.teacher_placement == "sharded":
            return None
        total, n = 0.0, 0
        for batch in self.val_batches:
            self.stop.check()  # as evaluate's batches
            input_ids, labels = batch[0].to(self.device), batch[1].to(self.device)
            position_ids = batch[2] if len(batch) > 2 else None  # packed rows only
            position_ids = position_ids.to(self.device) if position_ids is not None else None
            with self._autocast(), torch.inference_mode():
                if self._cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                hidden = self.teacher.hidden_states(input_ids, position_ids).flatten(0, 1)
            head, flat = self.teacher.head_weight, labels.flatten()
            for i in range(0, flat.numel(), self.chunk_tokens):  # never all logits at once
                logits = (hidden[i:i + self.chunk_tokens] @ head.T.to(hidden.dtype)).float()
                total += float(torch.nn.functional.cross_entropy(
                    logits, flat[i:i + self.chunk_tokens], ignore_index=IGNORE_INDEX,
                    reduction="sum"))
            n += int((flat != IGNORE_INDEX).sum())
        return total / n if n else None

    def train_step(self, batch: tuple[torch.Tensor, ...] | None = None
                   ) -> dict[str, float]:
        """One optimizer step on `batch` (default: this step's batch from the sampler), finished:
        its metrics."""
        return self._finish(self.queue_step(batch))

    def queue_step(self, batch: tuple[torch.Tensor, ...] | None = None, *,
                   before_update: Callable[[], None] | None = None) -> QueuedStep:
        """Step self.step + 1 queued on the device: forward, backward, then the update; its
        numbers are read by `_finish`. `before_update` runs between the backward and the update:
        the train loop finishes the previous step there, whose loss must be finite before
        another update is queued, while the device is still busy with this step's backward."""
        self.step += 1
        started = time.perf_counter()
        sampled = spec = None
        if batch is None and self.rollout is not None:
            source = self.rollout.source_of(self.step)
            if source is not None:  # this step trains on completions sampled now
                try:
                    sampled = self.rollout.batch(self.step, source, self.student, self.teacher)
                except RunCancelled:  # cut short: a step that never trained, which a resume
                    self.step -= 1  # from the last checkpoint runs whole
                    raise
                batch = (sampled.input_ids, sampled.labels)
                if source == "student":  # the KD term alone (kdengine.onpolicy.rollout)
                    spec = replace(self.spec, alpha=0.0)
                self.timing = {}
        # (input_ids, labels), or (input_ids, labels, position_ids) for packed rows
        batch = batch if batch is not None else self.sampler.batch(self.step)
        # last step's gradients freed before the forward, not after it: they are not needed
        # and would sit beside the activations at the step's memory peak
        self.optimizer.zero_grad(set_to_none=True)
        try:
            parts = self._loss(*batch, spec=spec)
        finally:
            timing, self.timing = self.timing, None
        step = QueuedStep(self.step, started, batch[0].numel(), parts, sampled=sampled,
                          timing=timing)
        # Backward and clipping are queued before the host waits for the loss value, so the GPU
        # never idles between forward and backward; a non-finite loss still stops the run
        # before the update is applied.
        scaling = self.scaler.is_enabled()
        self.scaler.scale(parts.loss).backward()  # the loss itself unless fp16
        if before_update is not None:
            paused = time.perf_counter()
            before_update()
            step.host_s -= time.perf_counter() - paused  # the other step's time, not this one's
        if scaling:
            self.scaler.unscale_(self.optimizer)  # true gradients again; notes an overflow
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        step.lr = self.optimizer.param_groups[0]["lr"]
        self.checkpoints.before_update()  # the last checkpoint's copies done (a GPU-side wait)
        if self._fused_update:
            # fused AdamW: the clip factor and the non-finite guard ride in the update kernel,
            # so the update is queued before the host waits for anything
            grad_norm = fused_clipped_step(self.optimizer, self.params, parts.value, max_norm,
                                           self.dist.grad_norm)
            step.read_later(grad_norm)
        else:  # the host checks the loss and the norm before it applies the update
            grad_norm = self.dist.clip_grad_norm_(self.params, max_norm)
            step.read_later(grad_norm)
            loss, norm = step.values()[:2]
            if math.isfinite(loss) and math.isfinite(norm):
                self.optimizer.step()
        if scaling:
            step.scale = self.scaler.get_scale()
        with warnings.catch_warnings():  # the schedule follows steps, skipped ones included
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            self.scheduler.step()
        step.host_s += time.perf_counter() - started
        return step

    def _finish(self, step: QueuedStep) -> dict[str, float]:
        """Wait for a queued step's numbers: its metrics, or LossNotFinite (its update was not
        applied: the device's guard or the host's skipped it)."""
        loss, grad_norm, ce, kd = step.values()
        now = time.perf_counter()
        if self.device.type == "cpu":  # it ran as it was queued: its own time
            seconds = step.host_s
        else:  # the device ran it once the work queued before it was done: from where the
            # previous step ended (the host waited for that), or from its start
            seconds = now - max(step.started, self._finished_at)
        self._finished_at = now
        if not math.isfinite(loss):
            self.step = step.number  # the run ends at this step; the next one is never applied
            raise LossNotFinite(f"loss is {loss} at step {step.number} (ce={ce}, kd={kd}); "
                                f"the update was not applied: {DIVERGED}")
        scaling = step.scale is not None
        if math.isfinite(grad_norm):
            self.overflows_in_a_row = 0
        elif scaling:
            self._skip_overflowed_step(step.scale, loss)
        else:
            self.step = step.number
            raise LossNotFinite(f"gradient norm is {grad_norm} at step {step.number} (loss "
                                f"{loss}); the update was not applied: {DIVERGED}")
        if scaling:
            self.scaler.update()  # halves the scale after an overflow, grows it when quiet
        metrics = {"step": step.number, "loss": loss, "kd": kd, "ce": ce, "lr": step.lr,
                   "grad_norm": grad_norm, "tokens_per_s": step.tokens / max(seconds, 1e-9)}
        if scaling:
            metrics["loss_scale"] = step.scale
        sampled = step.sampled
        if self.rollout is not None:
            metrics["on_policy"] = sampled is not None and sampled.source == "student"
        if sampled is not None:  # the step's time split (docs/on-policy.md)
            gen = sampled.generated
            teacher_s = (step.timing or {}).get("teacher_s", 0.0)
            metrics.update(source=sampled.source, gen_s=gen.seconds, teacher_s=teacher_s,
                           student_s=max(seconds - gen.seconds - teacher_s, 0.0),
                           gen_tokens_per_s=gen.new_tokens / max(gen.seconds, 1e-9),
                           gen_len=gen.new_tokens / max(len(sampled.prompts), 1))
            self.last_sampled = sampled
        return metrics

    def _overlaps(self, step: int) -> bool:
        """Whether the loop may leave `step` queued while it queues the next one (the host reads
        its loss one step late, and the GPU never waits for the host between steps). Only where
        the device guards the update (fused AdamW, no loss scaler to update in between; under
        torchrun the ranks agree on a stop over the host, so nothing waits for the device), never
        for sampled steps, the first (its start-up time), the last, or a step an evaluation or a
        checkpoint follows."""
        return (self._fused_update and not self.scaler.is_enabled() and self.rollout is None
                and self.startup_s is not None
                and step < self.config.steps and not self._evaluates_after(step)
                and not self._checkpoints_after(step))

    def _evaluates_after(self, step: int) -> bool:
        """An evaluation between `step` and the next (the final one is run's own stage)."""
        cfg = self.config
        return bool(cfg.eval_every) and step % cfg.eval_every == 0 and step < cfg.steps

    def _checkpoints_after(self, step: int) -> bool:
        """A checkpoint between `step` and the next (the final one is run's own stage)."""
        cfg = self.config
        return bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0 and step < cfg.steps

    def _startup(self, **parts: float) -> dict[str, Any]:
        """The first step's `startup_s` (process start to this step's end: imports, loading,
        the step-0 eval and compiling included), its `parts` (setup_s, eval0_s, first_step_s)
        and the compile cache's lookups, for its step event; the same in words in the log."""
        self.startup_s = round(time.monotonic() - self.started, 3)  # the log says the same
        fields: dict[str, Any] = {"startup_s": self.startup_s,
                                  **{k: round(v, 3) for k, v in parts.items()}}
        if self.compile_cache is None:
            how = "eager: nothing compiled"
        else:
            fields.update(cache_lookups(), **compile_seconds())
            hits, misses = fields["compile_cache_hits"], fields["compile_cache_misses"]
            how = (f"compile cache {describe_lookups(hits, misses)}: {hits} of {hits + misses} "
                   f"lookups hit, {self.compile_cache.where()}; torch.compile "
                   f"{fields['compile_s']:.1f} s, of it tracing {fields['trace_s']:.1f} s")
        split = ", ".join(f"{label} {fields[key]:.1f} s" for key, label in (
            ("setup_s", "set-up"), ("eval0_s", "step-0 eval"), ("first_step_s", "first step"))
            if key in fields)
        self.log.line(f"first step {self.startup_s:.1f} s after start: {split} ({how})")
        return fields

    # fp16: halving from 2^16, 30 overflows in a row reach 2^-14, where no gradient of a
    # working model overflows any more
    MAX_OVERFLOWS_IN_A_ROW = 30

    def _skip_overflowed_step(self, scale: float, loss: float) -> None:
        """An fp16 step whose scaled gradients overflowed: no update (the fused kernel or the
        guard above skipped it), a warning, and a failed run if it keeps happening."""
        self.overflows_in_a_row += 1
        if self.overflows_in_a_row >= self.MAX_OVERFLOWS_IN_A_ROW:
            raise LossNotFinite(
                f"float16 gradients overflowed at every loss scale down to {scale:g} "
                f"({self.overflows_in_a_row} steps in a row, last at step {self.step}, loss "
                f"{loss}): the model's values do not fit float16; use --dtype bfloat16 or float32")
        self.log.message("warning", f"step {self.step}: float16 gradients overflowed at loss "
                         f"scale {scale:g}; update skipped, scale halved")

    def state(self) -> dict[str, Any]:
        # data position: the sampler's batch k is a pure function of (seed, k), so the step plus
        # a fingerprint of the stream pins it; rng: every stream, so a resume continues exactly
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "rng": rng_state(), "data": self.sampler.position(self.step),
                **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {})}

    def restore(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "rng" in state:
            set_rng_state(state["rng"])
        if "data" in state:
            self.sampler.check_position(state["data"], self.step)
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.keep_own_update()

    def keep_own_update(self) -> None:
        """After a restore: this run's AdamW kernel, not the checkpoint's. A checkpoint written on
        another device or world size (fused on one process, foreach under torchrun) carries its
        own flags, and fused AdamW wants its step counters on the parameters' device."""
        on_device = self._update_kind["fused"] or self._update_kind["capturable"]
        for group in self.optimizer.param_groups:
            group.update(self._update_kind)
            for param in group["params"]:
                step = self.optimizer.state.get(param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    self.optimizer.state[param]["step"] = step.to(
                        param.device if on_device else "cpu", torch.float32)

    def checkpoint(self) -> Path:
        """Save this step's checkpoint; one process writes it in the background (its event comes
        once it is on disk: `report_checkpoints`)."""
        if self.dist.enabled:  # DCP shards, renamed into place by rank 0: written synchronously,
            # every rank in step (kdengine.distributed), not by the background writer
            start = time.perf_counter()
            path = self.dist.save_checkpoint(self)
            took = time.perf_counter() - start
            self._checkpoint_written(WrittenCheckpoint(self.step, path, took, took))
            return path
        path = self.checkpoints.save(self.step, self.student.module, self.state(),
                                     self._meta())
        self.report_checkpoints()
        return path

    def _meta(self) -> dict[str, Any]:
        """A checkpoint's meta.json beside its step: the run's config, and the data position
        (also in trainer.pt) where a --resume reads it before loading anything (kdengine.cli)."""
        return {"config": self.config.to_dict(), "data": self.sampler.position(self.step)}

    def checkpoint_at_cancel(self) -> Path | None:
        """After a cancel (RunCancelled out of `run` or an evaluation): the checkpoint of the last
        trained step, written in this call by the same atomic writer as the loop's, its event
        saying `reason: "cancel"`, so `--resume` continues where the run stopped rather than at
        the last periodic checkpoint. The state is the one the loop would have saved after that
        step (a sampled step cut mid-generation never trained: `queue_step` put the step back).
        None where it adds nothing: no step trained, the newest checkpoint is of this step
        already, or torchrun (ranks keep their periodic checkpoints only: a save is collective,
        and torchrun signals its workers again and kills them soon after a cancel, so one rank
        could leave the others waiting in it). A second SIGINT/SIGTERM cuts the write short:
        RunCancelled, its temporary directory removed, the previous checkpoint still the newest."""
        self.report_checkpoints(wait=True)  # a background write under way: whole, or its error
        if self.step == 0 or self.dist.enabled:
            return None
        latest = latest_checkpoint(self.log.run_dir)
        if latest is not None and int(latest.name.split("-")[1]) == self.step:
            return None
        with cut_by_a_signal():
            path = self.checkpoints.save(self.step, self.student.module, self.state(),
                                         self._meta(), now=True)
        for written in self.checkpoints.finished():
            self._checkpoint_written(written, reason="cancel")
        return path

    def report_checkpoints(self, *, wait: bool = False) -> None:
        """The event of each checkpoint now complete on disk; a failed background write (a full
        disk: DiskFull) raises here and fails the run as a failed save always has."""
        for written in self.checkpoints.finished(wait=wait):
            self._checkpoint_written(written)

    def _checkpoint_written(self, written: WrittenCheckpoint, reason: str | None = None) -> None:
        self.log.emit(ev.CHECKPOINT, step=written.step, path=str(written.path),
                      stall_s=round(written.stall_s, 4), write_s=round(written.write_s, 4),
                      **({"reason": reason} if reason else {}))
        if reason == "cancel":
            self.log.line(f"checkpoint saved at the cancel, step {written.step}: {written.path} "
                          f"(written in {written.write_s:.2f} s; --resume continues from it)")
            return
        self.log.line(f"checkpoint saved at step {written.step}: {written.path} (training held "
                      f"{written.stall_s:.2f} s, written in {written.write_s:.2f} s)")

    def run(self, *, evaluate_start: bool = True) -> None:
        """Train from self.step to config.steps with evals, step events and checkpoints; returns
        (or raises) only once the last checkpoint's write has ended."""
        try:
            self._train_loop(evaluate_start)
        finally:
            # also on a cancel or a failure: the last checkpoint whole on disk, its event, or
            # its write's error (which then fails the run: without it that save failed first)
            try:
                self.report_checkpoints(wait=True)
            finally:
                self.gauges.close()  # (its NVML thread)

    def _train_loop(self, evaluate_start: bool) -> None:
        cfg = self.config
        # the start's parts, for the first step event: set-up (imports, loading, data, this
        # trainer), the step-0 evaluation, the first step (torch.compile runs inside the last two)
        loop_started = time.monotonic()
        if evaluate_start:
            refuse_a_non_finite_evaluation(self.evaluate())
        evaluated = time.monotonic()
        queued: QueuedStep | None = None  # a step left queued: its numbers come one step late

        def report_queued() -> None:
            nonlocal queued
            step, queued = queued, None
            self._report(self._finish(step), loop_started, evaluated)

        while self.step < cfg.steps:
            # under torchrun a signal reaches one rank first: every rank asks the same question
            # here (one small all-reduce), so a queued step whose loss proves non-finite fails
            # on every rank at once, not on the signalled rank alone while the others wait in
            # a collective for it
            if self.stop.agreed():
                if queued is not None:  # its event before the cancel's
                    report_queued()
                self.stop.check()
            self.report_checkpoints()  # a background write that ended: its event or its error
            self.last_sampled = None
            step = self.queue_step(before_update=report_queued if queued is not None else None)
            if self._overlaps(step.number):
                queued = step
                continue
            self._report(self._finish(step), loop_started, evaluated)
            if self._evaluates_after(step.number):
                refuse_a_non_finite_evaluation(self.evaluate())
            if self._checkpoints_after(step.number):
                self.checkpoint()

    def _report(self, metrics: dict[str, Any], loop_started: float, evaluated: float) -> None:
        """A finished step's event and log line (every log_every steps, the first, the last) and
        its sample event."""
        cfg, step = self.config, metrics["step"]
        first = self.startup_s is None  # this process's first step (a resume's too)
        if first:
            metrics.update(self._startup(setup_s=loop_started - self.started,
                                         eval0_s=evaluated - loop_started,
                                         first_step_s=time.monotonic() - evaluated))
        if step % cfg.log_every == 0 or step == cfg.steps or step == 1 or first:
            gauges = self.gauges.read(metrics["tokens_per_s"])
            self.log.emit(ev.STEP, **metrics, **gauges, total_steps=cfg.steps)
            split = (f" gen={metrics['gen_s']:.2f}s teacher={metrics['teacher_s']:.2f}s "
                     f"student={metrics['student_s']:.2f}s "
                     f"gen_tok/s={metrics['gen_tokens_per_s']:.0f}"
                     if "gen_s" in metrics else "")
            self.log.line(
                f"step {step}/{cfg.steps} loss={metrics['loss']:.4f} kd={metrics['kd']:.4f} "
                f"ce={metrics['ce']:.4f} lr={metrics['lr']:.3e} "
                f"grad_norm={metrics['grad_norm']:.3f} tok/s={metrics['tokens_per_s']:.0f}"
                + split + describe_gauges(gauges))
        if (self.last_sampled is not None and cfg.sample_every
                and step % cfg.sample_every == 0):
            sample = self.rollout.sample_event(step, self.last_sampled, 0, self.teacher,
                                               self._autocast)
            self.log.emit(ev.SAMPLE, **sample)


def refuse_a_non_finite_evaluation(result: dict[str, Any]) -> None:
    """End the run at an evaluation whose loss (what the verdict compares: val_loss, and an
    on-policy run's val_gen_kl) is NaN or inf. At step 0 (the baseline): before a training
    step, its checkpoint or its compile, naming the part that is not finite and where to look;
    later: before that step's checkpoint, as a non-finite training loss ends it."""
    bad = [k for k in ("val_loss", "val_gen_kl") if k in result and not math.isfinite(result[k])]
    if not bad:
        return
    name = bad[0]
    # named as the screens name them (kdengine.verdict.EVAL_LABELS: 'val loss', 'val CE')
    what, parts = EVAL_LABELS[name], (f"({EVAL_LABELS['val_ce']} {result['val_ce']}, "
                                      f"{EVAL_LABELS['val_kd']} {result['val_kd']})")
    if result["step"]:
        raise EvalNotFinite(f"{what} is {result[name]} at the evaluation of step "
                            f"{result['step']} {parts}: {DIVERGED}")
    if not math.isfinite(result["val_ce"]):  # the student's own CE on the data's labels
        where = "the student's own loss is not finite: check its weights"
    elif not math.isfinite(result["val_kd"]):
        where = "the KD term is not finite: check the teacher's weights (or its cache)"
    else:
        where = "check the student's and the teacher's weights"
    raise BaselineNotFinite(f"{what} is {result[name]} at step 0, before any training "
                            f"{parts}: {where}; no step was trained")
