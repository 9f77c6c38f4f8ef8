"""Checkpoints that do not stall training: snapshot the state now, write it in the background.

`CheckpointWriter.save` copies every tensor of the student's weights and of the trainer's state
and hands the copy to one background thread, which writes it exactly as a synchronous save does
(`kdengine.checkpoint.write_checkpoint`: temporary directory, meta.json last, fsync, rename,
prune), so a kill at any moment still leaves the last checkpoint whole and a resume is still
exact. On CUDA, where the GPU has room for a second copy of the state, the snapshot is a copy on
the GPU itself, queued on the training stream (a 1B student's 15 GB of weights and AdamW moments:
~10 ms at device bandwidth), and the background thread moves it to the host on a side stream
through two small pinned buffers (`Stager`) and frees it before writing. Where it has no room,
the copies go into pinned host buffers (allocated at the first save, which pays for pinning
them, and reused) on a side stream; only the next optimizer update waits, on the GPU, for those
copies (`before_update`). The CPU clones.

One write at a time: a save waits for the one before it. A write's end, or its error (a full disk
above all: `DiskFull`), reaches the training loop through `finished()`, which it polls between
steps and calls with `wait=True` before the run ends. KDENGINE_SYNC_CHECKPOINTS=1 writes each
checkpoint in the save call itself, as before (no pinned copy of the whole state on the host).
"""

from __future__ import annotations

import copy
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdengine.checkpoint import checkpoint_dir, host_weights, write_checkpoint

SYNC_ENV = "KDENGINE_SYNC_CHECKPOINTS"
PINNED_ENV = "KDENGINE_PINNED_CHECKPOINTS"  # 1: never snapshot on the GPU (tests, tight memory)


@dataclass(frozen=True)
class WrittenCheckpoint:
    """A checkpoint complete on disk, and what it cost."""

    step: int
    path: Path
    stall_s: float  # the training loop held by `save` (the snapshot, a wait for the last write)
    write_s: float  # the write: copies to host done, files written, fsynced, renamed


class CheckpointWriter:
    """The trainer's checkpoints, written by one background thread from host snapshots.

    `write` is the function that puts a snapshot on disk (`write_checkpoint`'s signature); tests
    pass one that blocks or fails to see the trainer's side of a slow or failing disk."""

    def __init__(self, run_dir: Path, *, keep: int = 2,
                 write: Callable[..., Path] | None = None, sync: bool | None = None) -> None:
        self.run_dir, self.keep = Path(run_dir), keep
        self._write = write or write_checkpoint
        self.sync = os.environ.get(SYNC_ENV) == "1" if sync is None else sync
        self._thread: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._pending_step, self._pending_stall = 0, 0.0
        self._written: list[WrittenCheckpoint] = []
        self._buffers: dict[tuple, torch.Tensor] = {}  # pinned host copies, by place in the state
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._side: torch.cuda.Stream | None = None  # the side stream of the snapshot under way
        self._copied: tuple[torch.device, torch.cuda.Event] | None = None
        self._on_gpu: torch.device | None = None  # this snapshot is a copy on that GPU
        self._stager: Stager | None = None  # the writer thread's pinned chunks (made once)

    def save(self, step: int, module: torch.nn.Module, trainer_state: dict[str, Any],
             meta: dict[str, Any], *, now: bool = False) -> Path:
        """Snapshot `module`'s weights and `trainer_state` now and write them as the checkpoint of
        `step` in the background; returns the directory it will have. Raises the error of the
        write before it (waited for first: one write at a time). `now`: written in this call,
        on the caller's thread, as KDENGINE_SYNC_CHECKPOINTS does (the checkpoint a cancel writes:
        the process ends next, and a second signal must be able to cut the write short)."""
        start = time.perf_counter()
        if self._pending is not None:
            self._collect()
        # a run directory that cannot take checkpoints at all fails this step, not a later one
        # (cheap; what only the write can find, a full disk above all, comes when it ends)
        checkpoint_dir(self.run_dir, step).parent.mkdir(parents=True, exist_ok=True)
        if self.sync or now:  # the escape hatch: written here, the loop waiting, as before
            path = self._write(self.run_dir, step, host_weights(module), trainer_state, meta,
                               keep=self.keep)
            took = time.perf_counter() - start
            self._written.append(WrittenCheckpoint(step, path, took, took))
            return path
        self._side = None
        module_state = module.state_dict()
        self._on_gpu = _fits_on_device(module_state, trainer_state)
        weights = {name: self._host_copy(t, ("weights", name), contiguous=True)
                   for name, t in module_state.items()}
        state = self._copy_tree(trainer_state, ("state",))
        copied = None
        if self._on_gpu is not None:  # the copies on the training stream, for the writer
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(self._on_gpu))
        elif self._side is not None:  # the pinned copies, for the writer and the next update
            copied = torch.cuda.Event()
            copied.record(self._side)
            self._copied = (self._side.device, copied)
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="kdengine-checkpoint")
        self._pending = self._thread.submit(self._write_when_copied, copied, step, weights,
                                            state, meta)
        self._pending_step, self._pending_stall = step, time.perf_counter() - start
        return checkpoint_dir(self.run_dir, step)

    def before_update(self) -> None:
        """Call before the training loop changes the saved tensors in place (the optimizer
        update): on CUDA the GPU, not the host, waits for the last snapshot's copies."""
        if self._copied is not None:
            device, event = self._copied
            torch.cuda.current_stream(device).wait_event(event)
            self._copied = None

    def finished(self, *, wait: bool = False) -> list[WrittenCheckpoint]:
        """The checkpoints complete on disk since the last call, oldest first; `wait` waits for
        the write under way. A failed write raises its error here (once)."""
        if self._pending is not None and (wait or self._pending.done()):
            self._collect()
        written, self._written = self._written, []
        return written

    def _collect(self) -> None:
        pending, self._pending = self._pending, None
        path, write_s = pending.result()  # the write's own error, raised on the caller's thread
        self._written.append(WrittenCheckpoint(self._pending_step, path, self._pending_stall,
                                               write_s))

    def _write_when_copied(self, copied: torch.cuda.Event | None, step: int,
                           weights: dict[str, torch.Tensor], state: dict[str, Any],
                           meta: dict[str, Any]) -> tuple[Path, float]:
        start = time.perf_counter()
        if any(t.is_cuda for t in _tensors(weights)):  # a snapshot on the GPU: to the host
            device = next(t.device for t in _tensors(weights) if t.is_cuda)
            side = torch.cuda.Stream(device)
            side.wait_event(copied)  # after the snapshot's copies on the training stream
            if self._stager is None:
                self._stager = Stager(pinned=True)
            # beside the training (a side stream, the copy engine); the GPU copies are freed as
            # the names move on, every chunk of them being on the host by then
            weights = self._stager.tree(weights, side)
            state = self._stager.tree(state, side)
        elif copied is not None:
            copied.synchronize()  # this thread waits for the copies to host, not the GPU
        path = self._write(self.run_dir, step, weights, state, meta, keep=self.keep)
        return path, time.perf_counter() - start

    # ---- the snapshot ------------------------------------------------------------------------
    def _copy_tree(self, obj: Any, where: tuple) -> Any:
        """`obj` with every tensor copied to the host, and its containers new: the training loop
        changes the optimizer's tensors (and its per-parameter dicts) in place before the write
        reads them."""
        if isinstance(obj, torch.Tensor):
            return self._host_copy(obj, where)
        if type(obj) in (dict, OrderedDict):
            return type(obj)((k, self._copy_tree(v, (*where, k))) for k, v in obj.items())
        if type(obj) in (list, tuple):
            return type(obj)(self._copy_tree(v, (*where, i)) for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def _host_copy(self, tensor: torch.Tensor, where: tuple, contiguous: bool = False
                   ) -> torch.Tensor:
        tensor = tensor.detach()
        if not tensor.is_cuda or self._on_gpu is not None:
            # a copy the training loop cannot change: on the CPU, or on the GPU (queued on the
            # training stream, so it sees this step's values and the next update waits for none)
            return tensor.clone(memory_format=torch.contiguous_format if contiguous
                                else torch.preserve_format)
        side = self._side_stream(tensor.device)
        if side is None:  # a tensor on another GPU than the student's: copied now
            return tensor.to("cpu")
        buffer = self._buffers.get(where)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            # the same shapes at every checkpoint: pinned once, reused (the write before this
            # one is done, so nothing still reads them)
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._buffers[where] = buffer
        with torch.cuda.stream(side):
            buffer.copy_(tensor, non_blocking=True)
        return buffer

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream | None:
        """The stream this snapshot's copies from `device` run on, beside the training."""
        if self._side is None:
            side = self._streams.get(device)
            if side is None:
                side = self._streams[device] = torch.cuda.Stream(device)
            # the copies start once the work queued so far (the last update) is done
            side.wait_stream(torch.cuda.current_stream(device))
            self._side = side
        return self._side if self._side.device == device else None


# Room kept free beside a snapshot on the GPU: the training step's own peak must still fit
GPU_SNAPSHOT_HEADROOM = 0.10  # of the device's memory


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


class Stager:
    """Moves tensors from the GPU to ordinary (pageable) host memory through two small pinned
    buffers: the copy engine moves one chunk by DMA while the host copies the one before out.

    Why not `tensor.to("cpu")`: into pageable memory the driver copies synchronously through its
    own staging, and on an H200 that held the training loop back for the whole copy (a 1B
    student's 15 GB: the step after a checkpoint took 10-12 s, kd_pairs). Why not pinned buffers
    for the whole state: pinning 15+ GB takes ~10 s (measured on the first checkpoint) and keeps
    that much host memory locked for the run. Two `chunk`-byte buffers are pinned once.
    `pinned=False` and `stream=None` run the same chunking on the CPU (tests)."""

    def __init__(self, chunk: int = 64 << 20, *, pinned: bool = False) -> None:
        self.buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=pinned)
                        for _ in range(2)]

    def tree(self, obj: Any, stream: torch.cuda.Stream | None) -> Any:
        """`obj` with every tensor on the host (the containers new, other values as they are)."""
        if isinstance(obj, torch.Tensor):
            return self.copy(obj, stream)
        if type(obj) in (dict, OrderedDict):
            return type(obj)((k, self.tree(v, stream)) for k, v in obj.items())
        if type(obj) in (list, tuple):
            return type(obj)(self.tree(v, stream) for v in obj)
        return obj

    def copy(self, src: torch.Tensor, stream: torch.cuda.Stream | None) -> torch.Tensor:
        """A host tensor equal to `src` bit for bit (its shape, dtype and a contiguous layout)."""
        src = src.detach().contiguous()
        out = torch.empty(src.shape, dtype=src.dtype)
        if src.numel() == 0:
            return out
        src_bytes, out_bytes = src.reshape(-1).view(torch.uint8), out.reshape(-1).view(torch.uint8)
        chunk, pending = self.buffers[0].numel(), None
        for i, start in enumerate(range(0, src_bytes.numel(), chunk)):
            part = src_bytes[start:start + chunk]
            buffer = self.buffers[i % 2][:part.numel()]  # its last use was drained below
            event = self._enqueue(buffer, part, stream)
            if pending is not None:
                self._drain(*pending)
            pending = (buffer, event, out_bytes[start:start + part.numel()])
        self._drain(*pending)
        return out

    @staticmethod
    def _enqueue(buffer: torch.Tensor, part: torch.Tensor,
                 stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
        if stream is None:
            buffer.copy_(part)
            return None
        with torch.cuda.stream(stream):
            buffer.copy_(part, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return event

    @staticmethod
    def _drain(buffer: torch.Tensor, event: torch.cuda.Event | None,
               target: torch.Tensor) -> None:
        if event is not None:
            event.synchronize()  # this thread waits for its chunk, the training stream for nothing
        target.copy_(buffer)


def _fits_on_device(*states: Any) -> torch.device | None:
    """The GPU that holds every CUDA tensor of `states`, if a second copy of them fits there
    with GPU_SNAPSHOT_HEADROOM to spare (counting the caching allocator's free blocks); else
    None (the snapshot goes to pinned host memory)."""
    cuda = [t for state in states for t in _tensors(state) if t.is_cuda]
    if not cuda or len({t.device for t in cuda}) > 1 or os.environ.get(PINNED_ENV) == "1":
        return None
    device = cuda[0].device
    need = sum(t.numel() * t.element_size() for t in cuda)
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return device if need + GPU_SNAPSHOT_HEADROOM * total <= free + cached else None
