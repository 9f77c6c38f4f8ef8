"""Data-parallel runs under `torchrun`: one global batch split over ranks by rows, the student
replicated (DDP) or sharded with FSDP2 (`fully_shard`) by size, the teacher replicated or
sharded by size, checkpoints through torch.distributed.checkpoint (DCP), and only rank 0
writing events.

`from_env()` reads torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK) and returns a `Dist`; with
one process it is a no-op, so the trainer calls the same hooks either way. docs/distributed.md
describes the whole design.

Numerics: the KD loss is the mean over the valid tokens of the WHOLE global batch. Each rank
divides its token sums by (global valid tokens / world size); FSDP2's reduce-scatter averages
over ranks, so the gradient each shard gets is exactly the one-process gradient (the factors are
powers of two for world sizes 2, 4, 8). The loss each rank reports is the global one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from kdengine import events as ev
from kdengine.config import ConfigError, student_placement_from_env
from kdengine.losses import IGNORE_INDEX, LossParts

RANK_NOTES = ".rank-failures"  # RUN_DIR/.rank-failures/rank-N.json: a failed rank's last words
SHARDED_MARK = "sharded"  # meta.json key of a DCP checkpoint
# A teacher replicated on every GPU needs no all-gathers (fastest); one that would take more than
# this share of a GPU's memory is sharded like the student.
REPLICATE_TEACHER_UP_TO = 0.25
# A student whose training state (fp32 weights and gradients, two AdamW moments: 16 bytes a
# parameter) takes at most this share of a GPU is replicated on every rank (DDP: one bucketed
# all-reduce of its gradients, plain tensors, little host work a step); a larger one is sharded
# with FSDP2, whose per-group and per-parameter host work bounded a 0.5B student's 120 ms step
# on 2 x H200 (issue 8: 0.77-0.94 of linear scaling, by the host's speed).
REPLICATE_STUDENT_UP_TO = 0.1
REPLICATE_BUCKET_MB = 100  # DDP's gradient buckets (torch's default 25: 4x the all-reduces)
KEEP_GATHERED_UP_TO = 0.1
# Consecutive decoder layers are grouped until a group holds this many bytes of parameters:
# each FSDP2 group costs a collective each way, whose NCCL kernels wait on the other ranks while
# holding SMs, and a set of host-side hooks. Measured on 2 x H200 (issue 8): a Qwen2.5-0.5B
# student (24 layers of ~60 MB) scaled 0.68 with a group per layer and 0.94 with 4 layers a
# group; a Llama-3.2-1B student (~240 MB a layer) 0.94 with one.
GROUP_BYTES_AT_LEAST = 200 * 2**20
# How the student's parameters travel in the all-gathers (Dist.param_gather):
#   "fp32"        fp32, as stored; autocast casts each matmul's weight, as with one process
#   "compute"     the decoder layers in the compute dtype (what autocast would cast them to),
#                 inputs not cast: residual stream, embeddings and final norm stay fp32; the
#                 only difference to one process is the layers' norm gains, rounded to bf16
#   "compute-all" MixedPrecisionPolicy(param_dtype) on every group, inputs cast: the residual
#                 stream in bf16 too; faster in eager mode, but not the one-process function
PARAM_GATHERS = ("fp32", "compute", "compute-all")


def torchrun_world_size(env: dict[str, str] | None = None) -> int:
    """WORLD_SIZE as torchrun sets it (1 when not under torchrun)."""
    raw = (env if env is not None else os.environ).get("WORLD_SIZE", "1")
    try:
        return max(int(raw), 1)
    except ValueError:
        return 1


class Dist:
    """Rank, world size and every data-parallel hook the trainer calls. World size 1 is a no-op."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 backend: str | None = None) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.backend = backend
        self.failed = False  # set when this rank reports an error: then close() only exits
        self.compute_dtype: torch.dtype | None = None  # the teacher's dtype (place_teacher)
        # None: by size (a student under KEEP_GATHERED_UP_TO of a GPU stays gathered from
        # forward to backward, saving the backward all-gather); True/False force it
        self.reshard_student: bool | None = None
        self.param_gather = "fp32"  # one of PARAM_GATHERS
        # consecutive decoder layers that form one FSDP2 group (one all-gather, one
        # reduce-scatter and one set of hooks for all of them); None: by GROUP_BYTES_AT_LEAST
        self.layers_per_group: int | None = None
        # gather every student group while the teacher computes (off: FSDP2's own order)
        self.prefetch_student = True
        # clip and AdamW on each rank's local shards (off: torch's own, through DTensor)
        self.local_optim = True
        self.teacher_placement = "single"  # place_teacher: single | replicated | sharded
        self.student_placement = "single"  # place_student: single | replicated | sharded
        # host-side agreements (a stop signal) travel over gloo between the processes, never
        # through the GPU's stream: a device all-reduce read by the host would wait for every
        # step queued before it, and the loop keeps one step queued (None: the default group)
        self.host_group: Any = None
        self._global_valid: float | None = None
        self._teacher: nn.Module | None = None

    # ---- who am I -------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """Fields for the run_started event."""
        return {"world_size": self.world_size, "backend": self.backend} if self.enabled else {}

    def device(self, device: torch.device) -> torch.device:
        """One GPU per rank: cuda -> cuda:LOCAL_RANK."""
        if self.enabled and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def check_batch(self, batch_size: int) -> None:
        if self.enabled and batch_size % self.world_size:
            fit = self.world_size * max(batch_size // self.world_size, 1)
            raise ConfigError("batch_size", f"{batch_size} is the global batch, split over "
                              f"{self.world_size} ranks by rows: it must be a multiple of "
                              f"{self.world_size} (e.g. {fit})")

    # ---- collectives ----------------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
        return values

    def rows(self, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """This rank's contiguous share of the global batch's rows, the same rows of each of
        `tensors`: input ids, labels, then (packed rows) position ids; a None stays None."""
        if not self.enabled:
            return tensors
        n = tensors[0].shape[0] // self.world_size
        if len(tensors) > 1:  # every rank holds the whole global batch: count it here, no comms
            self._global_valid = float((tensors[1] != IGNORE_INDEX).sum())
        return tuple(None if t is None else t[self.rank * n:(self.rank + 1) * n]
                     for t in tensors)

    def normalizer(self, labels: torch.Tensor) -> float | None:
        """What this rank divides its loss sums by: global valid tokens / world size (None with
        one process: the loss counts its own tokens)."""
        if not self.enabled:
            return None
        total, self._global_valid = self._global_valid, None
        if total is None:  # labels that did not come through rows(): ask the other ranks
            count = (labels != IGNORE_INDEX).sum().to(torch.float64).reshape(1)
            total = float(self._sum(count)[0])
        return max(total, 1.0) / self.world_size

    def globalize(self, parts: LossParts) -> LossParts:
        """The global batch's loss value, ce and kd on every rank (a NaN on any rank stops
        every rank); the loss tensor stays this rank's own: its gradient is the rank's share
        of the global one (normalizer()), and the backward does not wait for the all-reduce."""
        if not self.enabled:
            return parts
        # ce and kd stay device tensors (read lazily by LossParts): no host sync before the
        # backward is queued, as with one process
        device = parts.loss.device
        ce, kd = parts.raw_terms()
        local = torch.stack([parts.loss.detach().to(torch.float64),
                             torch.as_tensor(ce, device=device).to(torch.float64),
                             torch.as_tensor(kd, device=device).to(torch.float64)])
        total = self._sum(local) / self.world_size
        return LossParts(parts.loss, total[1], total[2], value=total[0])

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any one (on the host: no device sync)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX, group=self.host_group)
        return bool(value.item() > 0)

    def agreed_stop(self, stop: Any) -> Any:
        """SIGINT/SIGTERM reach the ranks at slightly different moments; every rank must stop at
        the same step, or the others wait in a collective for one that left."""
        return AgreedStop(stop, self) if self.enabled else stop

    @contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it fills caches: a hub download, the demo teacher)."""
        if self.enabled and not self.is_main:
            tdist.barrier()
        yield
        if self.enabled and self.is_main:
            tdist.barrier()

    # ---- placing the models ---------------------------------------------------------------
    def place_student(self, student: Any, mode: str | None = None) -> Any:
        """The student on every rank (DDP, through torch's composable `replicate`: the same
        module, its parameter names unchanged) when its training state takes at most
        REPLICATE_STUDENT_UP_TO of a GPU, else sharded (shard_student). `mode` (default:
        KDENGINE_STUDENT_PLACEMENT, else auto) forces either. self.student_placement says which."""
        if not self.enabled:
            return student
        mode = mode or student_placement_from_env()
        module = student.module
        if mode == "auto":
            mode = student_placement_by_size(sum(p.numel() for p in module.parameters()),
                                             _device_memory(module))
        if mode == "replicated":
            _replicate(module)
        else:
            self.shard_student(student)
        self.student_placement = mode
        return student

    def shard_student(self, student: Any) -> Any:
        """FSDP2 over groups of decoder layers and the root (embeddings, lm head, final norm).

        The root keeps its parameters gathered after forward (the loss reads the lm-head
        weight); a small student keeps its layers gathered from forward to backward too, so each
        step has one all-gather per group, started while the teacher computes, and one
        reduce-scatter per group, overlapped with the rest of the backward. Compiled blocks
        (KDTrainer compiles them in place, before or after this: `Module.compile` is lazy) stay
        whole graphs: FSDP2's hooks run eagerly at the block's boundary.
        """
        if not self.enabled:
            return student
        if self.param_gather not in PARAM_GATHERS:
            raise ValueError(f"param_gather {self.param_gather!r} is not one of "
                             f"{', '.join(PARAM_GATHERS)}")
        module = student.module
        reshard = self.reshard_student
        if reshard is None:
            reshard = _bytes(module) > KEEP_GATHERED_UP_TO * _device_memory(module)
        _fully_shard_decoder(module, reshard_layers=reshard, layers_per_group=self.layers_per_group,
                             **_gather_policies(self.param_gather, self.compute_dtype))
        if self._teacher is not None and self.prefetch_student:
            _prefetch_during(self._teacher, module)
        return student

    def optimizer(self, params: list[torch.Tensor], **kwargs: Any) -> torch.optim.AdamW:
        """The run's AdamW (kwargs as torch.optim.AdamW's). Sharded: the same update on each
        rank's local shards (ShardAdamW)."""
        return (ShardAdamW if self.local_update else torch.optim.AdamW)(params, **kwargs)

    @property
    def update_on_dtensors(self) -> bool:
        """Whether clip and AdamW run through DTensor dispatch (FSDP2 with local_optim off):
        then not fused, and the host checks the loss before the update."""
        return self.enabled and self.student_placement == "sharded" and not self.local_optim

    def student_compile_options(self, options: Any) -> Any:
        """The trainer's CompileOptions for this student: under FSDP2 the student is compiled
        block by block (the groups' hooks sit at the blocks' edges; a whole-model graph would
        break there), with every other option as one process has it."""
        if self.enabled and getattr(options, "student", "layers") == "model":
            import dataclasses

            return dataclasses.replace(options, student="layers")
        return options

    @property
    def local_update(self) -> bool:
        """Whether norms and the AdamW update run on local shards (else torch's own code: one
        process, a replicated student, or FSDP2 with local_optim off)."""
        return self.enabled and self.student_placement == "sharded" and self.local_optim

    def grad_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The L2 norm of the whole model's gradients (sharded: local squares, one all-reduce
        of a scalar, no host sync), as torch.nn.utils.get_total_norm computes it."""
        if not self.local_update:
            return torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
        return sharded_grad_norm(grads, self)

    def clip_grad_norm_(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_ of the whole model's gradients; returns the total
        norm as a device tensor (read it after the optimizer step is queued)."""
        if not self.local_update:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        grads = [_local(p.grad) for p in params if p.grad is not None]
        total = sharded_grad_norm(grads, self)
        if grads:
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            torch._foreach_mul_(grads, coef.to(grads[0].dtype))
        return total

    def place_teacher(self, teacher: Any, device: torch.device, mode: str = "auto") -> str:
        """Replicate a teacher that fits comfortably on one device, else shard it.
        Returns what was done: "single", "replicated" or "sharded"."""
        if not self.enabled:
            return "single"
        module = teacher.model
        # the teacher is loaded in the run's compute dtype (kdengine.loading.load_teacher)
        self.compute_dtype = next(module.parameters()).dtype
        self._teacher = module
        if getattr(module, "fp8", False):
            # FSDP2 does not shard e4m3 weights with their scales; an FP8 teacher is half the
            # size of its bf16 self, so it is replicated
            if mode == "sharded":
                raise ValueError("a float8 teacher is replicated on every GPU, not sharded")
            mode = "replicated"
        if mode == "auto":
            size = sum(p.numel() * p.element_size() for p in module.parameters())
            mode = "replicated"
            if device.type == "cuda":
                budget = torch.cuda.get_device_properties(device).total_memory
                mode = "sharded" if size > REPLICATE_TEACHER_UP_TO * budget else "replicated"
        if mode == "sharded":
            _fully_shard_decoder(module)
        elif mode != "replicated":
            raise ValueError(f"teacher placement {mode!r} is not one of auto, sharded, replicated")
        self.teacher_placement = mode
        return mode

    # ---- outputs --------------------------------------------------------------------------
    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's weights on the CPU (a collective: every rank calls it; only rank
        0's copy is complete)."""
        if not self.enabled:
            return {k: v.detach().cpu() for k, v in module.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_final(self, save: Callable[..., Path], config: Any, student: Any, run_dir: Path,
                   tokenizer: Any) -> Path:
        """The final HF-layout student, gathered from the shards and written by rank 0."""
        if not self.enabled:
            return save(config, student, run_dir, tokenizer)
        from kdengine.models import Decoder
        from kdengine.providers import ModelStudent

        state = self.full_state_dict(student.module)
        final = Path(run_dir) / "final"
        if self.is_main:
            with torch.device("meta"):
                plain = Decoder(student.module.config)
            plain.to_empty(device="cpu")
            plain.load_state_dict(state, strict=False)
            if plain.config.tie_word_embeddings:
                plain.lm_head.weight = plain.model.embed_tokens.weight
            from kdengine.models.decoder import rope_inv_freq

            plain.inv_freq = rope_inv_freq(plain.config)  # not in the state dict: rebuild it
            final = save(config, ModelStudent(plain), run_dir, tokenizer)
        self.barrier()
        return final

    # ---- sharded checkpoints --------------------------------------------------------------
    def save_checkpoint(self, trainer: Any, keep: int = 2) -> Path:
        """RUN_DIR/checkpoints/step-N/: DCP shards of student + optimizer, trainer.pt (step,
        scheduler), rank-R.pt (each rank's RNG), meta.json last. Written into a temporary
        directory that rank 0 renames into place after every rank has finished."""
        import torch.distributed.checkpoint as dcp

        from kdengine.checkpoint import _DONE, _fsync_dir, _prune, checkpoint_dir

        final = checkpoint_dir(trainer.log.run_dir, trainer.step)
        tmp = final.with_name(f".tmp-{final.name}")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        dcp.save(self._app_state(trainer), checkpoint_id=str(tmp))
        torch.save({"torch_rng": torch.get_rng_state(), "cuda_rng": _cuda_rng()},
                   tmp / f"rank-{self.rank}.pt")
        self.barrier()
        if self.is_main:
            torch.save({"step": trainer.step, "scheduler": trainer.scheduler.state_dict()},
                       tmp / "trainer.pt")
            meta = {"step": trainer.step, SHARDED_MARK: True, "world_size": self.world_size,
                    "config": trainer.config.to_dict()}
            (tmp / _DONE).write_text(json.dumps(meta, indent=2) + "\n")
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
            _prune(final.parent, keep)
        self.barrier()
        return final

    def load_checkpoint(self, path: Path, trainer: Any) -> None:
        """Restore student, optimizer, scheduler, step and RNG from a sharded checkpoint (any
        world size may read it: DCP reshards)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        if not is_sharded_checkpoint(path):
            raise ConfigError("resume", f"{path} was written by a one-process run; resume it "
                              "with one process (kdengine train --resume), not under torchrun")
        state = self._app_state(trainer)
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(trainer.student.module, trainer.optimizer,
                       model_state_dict=state["model"], optim_state_dict=state["optim"])
        small = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        trainer.step = small["step"]
        trainer.scheduler.load_state_dict(small["scheduler"])
        trainer.keep_own_update()  # a checkpoint of another world size: its own AdamW flags
        rng_file = path / f"rank-{self.rank}.pt"
        if rng_file.exists():  # absent when the world size changed: the seed's state stays
            rng = torch.load(rng_file, map_location="cpu", weights_only=False)
            torch.set_rng_state(rng["torch_rng"])
            if rng["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda_rng"])

    @staticmethod
    def _app_state(trainer: Any) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(trainer.student.module, trainer.optimizer)
        return {"model": model, "optim": optim}

    # ---- logs -----------------------------------------------------------------------------
    def run_log(self, run_dir: Path) -> Any:
        """Rank 0: the RunLog (behind a lock, with a watcher that reports other ranks' failures
        as `log` events with a `rank` field). Other ranks: a RankLog that writes only errors."""
        from kdengine.runlog import RunLog

        if not self.enabled:
            return RunLog(run_dir)
        if not self.is_main:
            return RankLog(run_dir, self.rank, self)
        notes = Path(run_dir) / RANK_NOTES
        shutil.rmtree(notes, ignore_errors=True)  # notes of an earlier attempt of this run
        self.barrier()  # no rank writes a note before the old ones are gone
        return RelayLog(RunLog(run_dir), self)

    def close(self) -> None:
        """Leave the process group together; after a failure just exit (a peer may be gone
        mid-collective, and a barrier would wait for it forever)."""
        if self.enabled and not self.failed and tdist.is_initialized():
            tdist.barrier()
            tdist.destroy_process_group()


def _cuda_rng() -> torch.Tensor | None:
    return torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def student_placement_by_size(params: int, device_bytes: float) -> str:
    """replicated while the student's training state (16 bytes a parameter: fp32 weights and
    gradients, two AdamW moments) takes at most REPLICATE_STUDENT_UP_TO of a device, else
    sharded."""
    return "replicated" if 16 * params <= REPLICATE_STUDENT_UP_TO * device_bytes else "sharded"


def _replicate(module: nn.Module) -> None:
    """DDP in place (its hooks on `module`'s forward): gradients averaged over ranks by bucketed
    all-reduces during the backward, as FSDP2's reduce-scatter averages them."""
    from torch.distributed._composable import replicate

    device = next(module.parameters()).device
    # per-block graphs stay whole: dynamo would otherwise split each at DDP's bucket edges
    # (its gradients come out at the block's end either way, where their all-reduce starts)
    torch._dynamo.config.optimize_ddp = False
    replicate(module, device_id=device,  # (a CPU device: DDP's device_ids=None)
              bucket_cap_mb=REPLICATE_BUCKET_MB, broadcast_buffers=False,
              gradient_as_bucket_view=True)


def _fully_shard_decoder(module: nn.Module, reshard_layers: bool = True,
                         layer_policy: Any = None, root_policy: Any = None,
                         layers_per_group: int | None = None) -> None:
    from torch.distributed.fsdp import fully_shard

    layers = list(module.model.layers)
    per_group = layers_per_group or layers_per_group_of(layers)
    for i in range(0, len(layers), per_group):
        group = layers[i:i + per_group]
        kwargs = {"mp_policy": layer_policy} if layer_policy is not None else {}
        fully_shard(group if len(group) > 1 else group[0], reshard_after_forward=reshard_layers,
                    **kwargs)
    kwargs = {"mp_policy": root_policy} if root_policy is not None else {}
    fully_shard(module, reshard_after_forward=False, **kwargs)


def layers_per_group_of(layers: list[nn.Module]) -> int:
    """Consecutive layers a group takes to hold GROUP_BYTES_AT_LEAST (the layers are alike)."""
    if not layers:
        return 1
    size = max(_bytes(layers[0]), 1)
    return max(1, min(len(layers), -(-GROUP_BYTES_AT_LEAST // size)))


def _gather_policies(mode: str, dtype: torch.dtype | None) -> dict[str, Any]:
    """FSDP2 MixedPrecisionPolicy of the layers and the root for a Dist.param_gather mode.
    Gradients are always reduced in fp32; fp32 runs gather fp32 whatever the mode."""
    if mode == "fp32" or dtype not in (torch.bfloat16, torch.float16):
        return {}
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mode == "compute":
        # inputs not cast: the fp32 residual stream of autocast over fp32 weights is kept
        return {"layer_policy": MixedPrecisionPolicy(param_dtype=dtype,
                                                     reduce_dtype=torch.float32,
                                                     cast_forward_inputs=False)}
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    return {"layer_policy": policy, "root_policy": policy}


def _prefetch_during(teacher: nn.Module, student: nn.Module) -> None:
    """Start the all-gathers of every student group (root first, then the layers in forward
    order) when the teacher's forward starts, so they travel while the teacher computes. The
    student's own forward then only waits for them. Training steps only (the student is in
    train mode), and from the second step on: the first forward sets FSDP2's state up."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    groups, seen = [], set()
    for m in student.modules():  # one module per group (a group may hold several layers)
        if isinstance(m, FSDPModule) and id(fully_shard.state(m)) not in seen:
            seen.add(id(fully_shard.state(m)))
            groups.append(m)
    started = {"ready": False}

    def ready(module: nn.Module, args: Any, output: Any) -> None:
        started["ready"] = True

    def start(module: nn.Module, args: Any) -> None:
        if started["ready"] and student.training:
            # the teacher runs under inference_mode: buffers made for the student must be
            # normal tensors (autograd uses them in the student's forward)
            with torch.inference_mode(False), torch.no_grad():
                for group in groups:
                    group.unshard(async_op=True)  # the group's forward waits for it

    # eager even when the teacher's whole forward is compiled (the hook is then inside
    # nn.Module.compile's frame): FSDP2's unshard is not something to trace
    student.register_forward_hook(torch._dynamo.disable(ready))
    teacher.register_forward_pre_hook(torch._dynamo.disable(start))


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own shard of a DTensor (a view: updating it updates the DTensor), or `t`."""
    return getattr(t, "_local_tensor", t)


class ShardAdamW(torch.optim.AdamW):
    """torch's AdamW whose update runs on each rank's local shards.

    The state (exp_avg, exp_avg_sq as DTensors, step) and state_dict are torch's own, so DCP
    checkpoints and one-process resumes see a plain AdamW; the update is the same fused (CUDA)
    or for-each kernel, handed the local tensors: AdamW is elementwise, so no communication is
    needed, and the DTensor dispatch over hundreds of tensors (several ms a step) is skipped.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        from torch.optim.adamw import adamw

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            exp_avgs: list[torch.Tensor] = []
            exp_avg_sqs: list[torch.Tensor] = []
            max_exp_avg_sqs: list[torch.Tensor] = []
            steps: list[torch.Tensor] = []
            # torch's own lazy state initialisation (DTensor state, step on the right device)
            has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs,
                                           max_exp_avg_sqs, steps)
            beta1, beta2 = group["betas"]
            adamw([_local(t) for t in params], [_local(t) for t in grads],
                  [_local(t) for t in exp_avgs], [_local(t) for t in exp_avg_sqs],
                  [_local(t) for t in max_exp_avg_sqs], steps,
                  foreach=group["foreach"], capturable=group["capturable"],
                  differentiable=group["differentiable"], fused=group["fused"],
                  grad_scale=getattr(self, "grad_scale", None),
                  found_inf=getattr(self, "found_inf", None), has_complex=has_complex,
                  amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=group["lr"],
                  weight_decay=group["weight_decay"], eps=group["eps"],
                  maximize=group["maximize"])
        return loss


def sharded_grad_norm(grads: list[torch.Tensor], dist: Dist) -> torch.Tensor:
    """L2 norm over every rank's shards: the local shards' squared norms summed across ranks
    (FSDP2 shards are disjoint, so nothing is counted twice)."""
    local = [_local(g) for g in grads]
    if local:
        square = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(local, 2.0)),
                                          2.0).square()
    else:
        square = torch.zeros(())
    return dist._sum(square.to(torch.float32).reshape(1))[0].sqrt()


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _device_memory(module: nn.Module) -> float:
    device = next(module.parameters()).device
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float("inf")  # the CPU (gloo tests): keep gathered


def is_sharded_checkpoint(path: Path) -> bool:
    try:
        return bool(json.loads((Path(path) / "meta.json").read_text()).get(SHARDED_MARK))
    except (OSError, ValueError):
        return False


def from_env(device_kind: str = "auto") -> Dist:
    """The Dist of this process: torchrun's environment, or one process. Starts the process group
    (NCCL on CUDA, gloo on the CPU) when WORLD_SIZE > 1."""
    world = torchrun_world_size()
    if world == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_kind not in ("cpu", "mps")
    backend = "nccl" if cuda else "gloo"
    if not tdist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
            tdist.init_process_group(backend, device_id=torch.device("cuda", local_rank))
        else:
            tdist.init_process_group(backend)
    dist = Dist(rank, world, local_rank, backend)
    if backend != "gloo":  # (every rank creates it: new_group is a collective)
        dist.host_group = tdist.new_group(backend="gloo")
    return dist


class RankLog:
    """The log of a rank other than 0: no events, no progress lines; an error goes to launch.log
    prefixed `[rank N]` and into a note rank 0 turns into a `log` event with a `rank` field."""

    def __init__(self, run_dir: Path, rank: int, dist: Dist | None = None) -> None:
        self.run_dir, self.rank, self._dist = Path(run_dir), rank, dist
        if dist is not None:
            dist.barrier()  # rank 0 clears the old notes first
        self.events = _EventsPath(self.run_dir / ev.EVENTS_FILE)

    def line(self, text: str, *, terminal: bool = True) -> None:
        pass

    def stage(self, name: str, state: str, detail: str = "", *, terminal: bool = True,
              **fields: Any) -> None:
        pass

    def message(self, level: str, text: str) -> None:
        if level == "error":
            self._report(text, "")

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        if type_ == ev.LOG and payload.get("level") == "error":
            self._report(str(payload.get("message", "")), str(payload.get("traceback", "")))
        return {}

    def _report(self, message: str, tb: str) -> None:
        if self._dist is not None:
            self._dist.failed = True
        prefix = f"[rank {self.rank}] "
        text = prefix + "ERROR: " + message + "\n" + "".join(
            prefix + line + "\n" for line in tb.rstrip().splitlines())
        # stdout may already be launch.log (a launcher redirected torchrun there): write once
        from kdengine.runlog import _same_file

        log_path = self.run_dir / ev.LOG_FILE
        if _same_file(sys.stdout, log_path):
            sys.stdout.write(text)
            sys.stdout.flush()
        else:  # the terminal gets the one line, launch.log the traceback too
            sys.stderr.write(prefix + "ERROR: " + message + "\n")
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(text)
        notes = self.run_dir / RANK_NOTES
        notes.mkdir(exist_ok=True)
        tmp = notes / f".rank-{self.rank}.tmp"
        tmp.write_text(json.dumps({"rank": self.rank, "message": message, "traceback": tb}))
        os.replace(tmp, notes / f"rank-{self.rank}.json")

    def close(self) -> None:
        pass


class _EventsPath:
    def __init__(self, path: Path) -> None:
        self.path = path


class RelayLog:
    """Rank 0's RunLog behind a lock, with a watcher thread for the other ranks' failure notes.

    A failed rank exits; rank 0 may then sit in a collective that never returns (NCCL) until
    torchrun kills it. The watcher runs beside it: it emits each note as a `log` event with a
    `rank` field at once and, if the main thread has not ended the run `grace` seconds later,
    ends it (stage failed, run_finished failed) and exits the process.
    """

    def __init__(self, log: Any, dist: Dist, poll: float = 0.2, grace: float = 5.0) -> None:
        self._log, self._lock, self._dist = log, threading.RLock(), dist
        self.run_dir, self.events = log.run_dir, log.events
        self._notes = Path(log.run_dir) / RANK_NOTES
        self._reported: set[int] = set()
        self._finished = False
        self._stage: str | None = None
        self._poll, self._grace = poll, grace
        self._stop = threading.Event()
        self._failed_at: float | None = None
        self._thread = threading.Thread(target=self._watch, name="kdengine-rank-watch",
                                        daemon=True)
        self._thread.start()

    def line(self, text: str, *, terminal: bool = True) -> None:
        with self._lock:
            self._log.line(text, terminal=terminal)

    def message(self, level: str, text: str) -> None:
        with self._lock:
            self._log.message(level, text)

    def stage(self, name: str, state: str, detail: str = "", *, terminal: bool = True,
              **fields: Any) -> None:
        with self._lock:
            self._stage = name
            self._log.stage(name, state, detail, terminal=terminal, **fields)

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        with self._lock:
            if type_ == ev.LOG and payload.get("level") == "error":
                self._dist.failed = True
                # rank 0's own error is often the echo of another rank's (a closed connection):
                # report the other ranks first, so the root cause leads
                self._drain(wait=2.0)
            if self._finished:
                return {}
            if type_ == ev.RUN_FINISHED:
                self._finished = True
            return self._log.emit(type_, **payload)

    def _drain(self, wait: float = 0.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            found = False
            for note in sorted(self._notes.glob("rank-*.json")) if self._notes.is_dir() else []:
                try:
                    data = json.loads(note.read_text())
                except (OSError, ValueError):
                    continue
                if data["rank"] in self._reported:
                    continue
                self._reported.add(data["rank"])
                self._dist.failed = True
                found = True
                self._log.emit(ev.LOG, level="error", rank=data["rank"],
                               message=f"rank {data['rank']} failed: {data['message']}",
                               traceback=data.get("traceback", ""))
                self._log.line(f"ERROR: rank {data['rank']} failed: {data['message']}")
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                with self._lock:
                    if self._finished:
                        return
                    if self._drain() and self._failed_at is None:
                        self._failed_at = time.monotonic()
                    if self._failed_at is not None and \
                            time.monotonic() - self._failed_at > self._grace:
                        self._end_run()
            except Exception:  # the watcher must never take the run down by itself
                traceback.print_exc()
                return

    def _end_run(self) -> None:
        """The main thread is stuck in a collective with a dead peer: finish the run here."""
        ranks = sorted(self._reported)
        reason = f"rank {', '.join(map(str, ranks))} failed"
        if self._stage:
            self._log.stage(self._stage, "failed", reason)
        self._log.emit(ev.RUN_FINISHED, status="failed", exit_code=1, error=reason,
                       stage=self._stage, failed_ranks=ranks)
        self._finished = True
        self._log.line(f"ERROR: {reason}; rank 0 stops too")
        self._log.close()
        os._exit(1)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._log.close()


class AgreedStop:
    """A stop flag (kdengine.stop.StopSignals) whose check() raises on every rank when any rank
    received a signal: one small all-reduce between the processes at each check."""

    def __init__(self, stop: Any, dist: Dist) -> None:
        self._stop, self._dist = stop, dist

    def __enter__(self) -> AgreedStop:
        self._stop.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.__exit__(*exc)

    @property
    def received(self) -> str | None:
        return self._stop.received

    def check(self) -> None:
        if self._dist.any_rank(bool(self._stop.received)):
            if not self._stop.received:
                self._stop.received = "SIGTERM"  # another rank's signal: name the usual one
            self._stop.check()
