"""The process's place in a torchrun job (`Dist`, `from_env`) and every data-parallel hook the
trainer calls: the batch's rows, the global loss, collectives, the models' placement
(kdengine.distributed.placement), DCP checkpoints and the run's log (kdengine.distributed.logs).
With one process each hook does nothing."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from kdengine.config import ConfigError, student_placement_from_env
from kdengine.distributed.logs import RANK_NOTES, AgreedStop, RankLog, RelayLog
from kdengine.distributed.placement import (
    KEEP_GATHERED_UP_TO,
    PARAM_GATHERS,
    REPLICATE_TEACHER_UP_TO,
    ShardAdamW,
    device_memory,
    fully_shard_decoder,
    gather_policies,
    local_shard,
    param_bytes,
    prefetch_during,
    replicate_student,
    sharded_grad_norm,
    student_placement_by_size,
)
from kdengine.losses import IGNORE_INDEX, LossParts

SHARDED_MARK = "sharded"  # meta.json key of a DCP checkpoint


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
        from kdengine.preflight import batch_split_refusal

        refusal = batch_split_refusal(batch_size, self.world_size)
        if refusal is not None:
            raise refusal

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
                                             device_memory(module))
        if mode == "replicated":
            replicate_student(module)
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
            reshard = param_bytes(module) > KEEP_GATHERED_UP_TO * device_memory(module)
        fully_shard_decoder(module, reshard_layers=reshard, layers_per_group=self.layers_per_group,
                            **gather_policies(self.param_gather, self.compute_dtype))
        if self._teacher is not None and self.prefetch_student:
            prefetch_during(self._teacher, module)
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
        return sharded_grad_norm(grads, self._sum)

    def clip_grad_norm_(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_ of the whole model's gradients; returns the total
        norm as a device tensor (read it after the optimizer step is queued)."""
        if not self.local_update:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        grads = [local_shard(p.grad) for p in params if p.grad is not None]
        total = sharded_grad_norm(grads, self._sum)
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
            fully_shard_decoder(module)
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
