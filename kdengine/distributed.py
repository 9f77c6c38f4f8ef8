"""Data-parallel runs under `torchrun`: one global batch split over ranks by rows, the student
sharded with FSDP2 (`fully_shard`), the teacher sharded or replicated by size, sharded checkpoints
through torch.distributed.checkpoint (DCP), and only rank 0 writing events.

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
from kdengine.config import ConfigError
from kdengine.losses import IGNORE_INDEX, LossParts

RANK_NOTES = ".rank-failures"  # RUN_DIR/.rank-failures/rank-N.json: a failed rank's last words
SHARDED_MARK = "sharded"  # meta.json key of a DCP checkpoint
# A teacher replicated on every GPU needs no all-gathers (fastest); one that would take more than
# this share of a GPU's memory is sharded like the student.
REPLICATE_TEACHER_UP_TO = 0.25
KEEP_GATHERED_UP_TO = 0.1


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
        self.mixed_precision = True  # gather bf16/fp16 params when the run computes in them
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

    def rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous share of the global batch's rows."""
        if not self.enabled:
            return tensors
        n = tensors[0].shape[0] // self.world_size
        if len(tensors) > 1:  # every rank holds the whole global batch: count it here, no comms
            self._global_valid = float((tensors[-1] != IGNORE_INDEX).sum())
        return tuple(t[self.rank * n:(self.rank + 1) * n] for t in tensors)

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
        """The global batch's loss, ce and kd on every rank; the loss tensor keeps this rank's
        gradient (its value is shifted by a constant), so a NaN on any rank stops every rank."""
        if not self.enabled:
            return parts
        local = torch.stack([parts.loss.detach().to(torch.float64),
                             torch.tensor(parts.ce, dtype=torch.float64, device=parts.loss.device),
                             torch.tensor(parts.kd, dtype=torch.float64, device=parts.loss.device)])
        total = self._sum(local.clone()) / self.world_size
        loss = parts.loss + (total[0].to(parts.loss.dtype) - parts.loss.detach())
        return LossParts(loss, float(total[1]), float(total[2]))

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on any one."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
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

    # ---- sharding -------------------------------------------------------------------------
    def shard_student(self, student: Any) -> Any:
        """FSDP2 over each decoder layer and the root. The root keeps its parameters gathered
        after forward so the loss can use the (unsharded) lm-head weight; FSDP2 reshards it after
        backward."""
        if not self.enabled:
            return student
        from torch.distributed.fsdp import MixedPrecisionPolicy

        module = student.module
        reshard = self.reshard_student
        if reshard is None:
            reshard = _bytes(module) > KEEP_GATHERED_UP_TO * _device_memory(module)
        dtype = self.compute_dtype
        policy = None
        if self.mixed_precision and dtype in (torch.bfloat16, torch.float16):
            # all-gather half the bytes; gradients are reduced and stored in fp32
            policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        _fully_shard_decoder(module, reshard_layers=reshard, policy=policy)
        if self._teacher is not None:
            _prefetch_during(self._teacher, module)
        return student

    def place_teacher(self, teacher: Any, device: torch.device, mode: str = "auto") -> str:
        """Replicate a teacher that fits comfortably on one device, else shard it.
        Returns what was done: "single", "replicated" or "sharded"."""
        if not self.enabled:
            return "single"
        module = teacher.model
        # the teacher is loaded in the run's compute dtype (kdengine.loading.load_teacher)
        self.compute_dtype = next(module.parameters()).dtype
        self._teacher = module
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


def _fully_shard_decoder(module: nn.Module, reshard_layers: bool = True,
                         policy: Any = None) -> None:
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mp_policy": policy} if policy is not None else {}
    for layer in module.model.layers:
        fully_shard(layer, reshard_after_forward=reshard_layers, **kwargs)
    fully_shard(module, reshard_after_forward=False, **kwargs)


def _prefetch_during(teacher: nn.Module, student: nn.Module) -> None:
    """Start gathering the student's root (embeddings, lm-head: the largest group) when the
    teacher's forward starts, so it travels while the teacher computes."""
    def start(module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            student.unshard(async_op=True)  # the student's forward waits for it

    teacher.register_forward_pre_hook(start)


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
    return Dist(rank, world, local_rank, backend)


class RankLog:
    """The log of a rank other than 0: no events, no progress lines; an error goes to launch.log
    prefixed `[rank N]` and into a note rank 0 turns into a `log` event with a `rank` field."""

    def __init__(self, run_dir: Path, rank: int, dist: Dist | None = None) -> None:
        self.run_dir, self.rank, self._dist = Path(run_dir), rank, dist
        if dist is not None:
            dist.barrier()  # rank 0 clears the old notes first
        self.events = _EventsPath(self.run_dir / ev.EVENTS_FILE)

    def line(self, text: str) -> None:
        pass

    def stage(self, name: str, state: str, detail: str = "") -> None:
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
        else:
            sys.stderr.write(text)
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

    def line(self, text: str) -> None:
        with self._lock:
            self._log.line(text)

    def message(self, level: str, text: str) -> None:
        with self._lock:
            self._log.message(level, text)

    def stage(self, name: str, state: str, detail: str = "") -> None:
        with self._lock:
            self._stage = name
            self._log.stage(name, state, detail)

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
    """A stop flag (kdengine.trainer._StopSignals) whose check() raises on every rank when any rank
    received a signal: one small all-reduce at each check."""

    def __init__(self, stop: Any, dist: Dist) -> None:
        self._stop, self._dist = stop, dist
        self._device = torch.device("cuda", dist.local_rank) if dist.backend == "nccl" else \
            torch.device("cpu")

    def __enter__(self) -> AgreedStop:
        self._stop.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.__exit__(*exc)

    @property
    def received(self) -> str | None:
        return self._stop.received

    def check(self) -> None:
        if self._dist.any_rank(bool(self._stop.received), self._device):
            if not self._stop.received:
                self._stop.received = "SIGTERM"  # another rank's signal: name the usual one
            self._stop.check()
