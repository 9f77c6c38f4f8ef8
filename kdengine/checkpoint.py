"""Resumable checkpoints, written atomically.

RUN_DIR/checkpoints/step-NNNNNNNN/ holds student.safetensors (the trainable weights),
trainer.pt (optimizer, scheduler, data position and RNG state) and meta.json (step, config).
A checkpoint is written into a temporary directory, fsynced, and renamed into place, so a kill
at any moment (kill -9 included) leaves the previous checkpoint whole; `latest_checkpoint` only
ever returns complete ones, and the next save sweeps away what a killed writer left. A write that
fails (a full disk above all) removes its temporary directory and raises; a full disk is
`DiskFull`, one line with the directory, the bytes needed and free. `write_checkpoint` is that
write, for the synchronous `save_checkpoint` and the trainer's background writer alike
(kdengine.checkpoint_writer).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdengine.diskspace import DiskFull, is_disk_full

CHECKPOINTS = "checkpoints"
_DONE = "meta.json"  # written last: its presence marks a complete checkpoint


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def save_checkpoint(run_dir: Path, step: int, module: torch.nn.Module,
                    trainer_state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint of `step` now, the caller waiting (the trainer's background writer,
    kdengine.checkpoint_writer, snapshots the same state and writes it with `write_checkpoint`)."""
    return write_checkpoint(run_dir, step, host_weights(module), trainer_state, meta, keep)


def host_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights by name, on the host (CPU tensors are the live ones, not copies)."""
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def write_checkpoint(run_dir: Path, step: int, state: dict[str, torch.Tensor],
                     trainer_state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write host tensors (`state`: the student's weights by name) as the checkpoint of `step`:
    temporary directory, meta.json last, fsync, rename, prune to the newest `keep`."""
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(".tmp-*"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    _dedupe_shared(state)
    try:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / "student.safetensors"))
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / _DONE).write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")
        _fsync_dir(tmp)
    except BaseException as exc:
        # a failed write leaves nothing half-made behind, and the kept checkpoints untouched
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise DiskFull(final.parent, f"the checkpoint of step {step}",
                           tensor_bytes(state) + tensor_bytes(trainer_state),
                           latest_checkpoint(run_dir), Path(run_dir)) from exc
        raise
    if final.exists():  # the same step saved again: move the old one aside, never delete first
        old = final.with_name(f".tmp-old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)
    _prune(final.parent, keep)
    return final


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) state: what writing it takes, give or take."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _dedupe_shared(state: dict[str, torch.Tensor]) -> None:
    """safetensors refuses tensors that share memory (tied embeddings): keep the first name."""
    seen: dict[int, str] = {}
    for name in list(state):
        ptr = state[name].untyped_storage().data_ptr()
        if ptr in seen:
            state[name] = state[name].clone()
        else:
            seen[ptr] = name


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir() if path.is_dir() else []:
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if (p / _DONE).exists())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    return sorted(p for p in root.glob("step-*") if (p / _DONE).exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def load_checkpoint(path: Path, module: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into `module`; return (trainer_state, meta)."""
    path = Path(path)
    try:
        meta = json.loads((path / _DONE).read_text())
        state = load_file(str(path / "student.safetensors"))
        trainer_state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: say which checkpoint and what to do
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                           "delete it to resume from the one before") from None
    device = next(module.parameters()).device
    module.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    return trainer_state, meta


def rng_state() -> dict[str, Any]:
    """Every random stream a training step may draw from (CPU, each CUDA device, Python)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    # torch.save keeps Python's (version, tuple, gauss) state as is; be lenient about lists
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
