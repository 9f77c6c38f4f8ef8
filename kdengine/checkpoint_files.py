"""Is a checkpoint's every file whole? Asked by `kdengine train --resume` before it loads a model.

A checkpoint (kdengine.checkpoint) is complete once its meta.json exists, but a file of it can
still be damaged afterwards: a copy cut short, a disk that lost blocks, a hand edit. Loading it
fails only after the teacher, the student and the data are loaded (minutes on real models) and
writes a failed segment into the run's events. This reads what can be read cheaply, without
torch: meta.json parses, student.safetensors' header parses and the file is as long as the
header says, trainer.pt is a zip (torch.save's format) whose members all lie inside the file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

META = "meta.json"
WEIGHTS = "student.safetensors"
TRAINER = "trainer.pt"
SHARDED_MARK = "sharded"  # kdengine.distributed.ranks.SHARDED_MARK: DCP shards, no safetensors


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with the checkpoint directory `path`, in a few words naming the file, or
    None when every file it needs reads whole."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as exc:
        return f"{META} cannot be read ({_why(exc)})"
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        return f"{META} holds no step"
    if not meta.get(SHARDED_MARK):
        damage = safetensors_damage(path / WEIGHTS)
        if damage:
            return damage
    return _zip_damage(path / TRAINER)


def safetensors_damage(file: Path) -> str | None:
    """What is wrong with a safetensors file (a checkpoint's, or a model's weights: the
    preflight asks too), read from its header and size alone, or None."""
    # the format: an 8-byte little-endian header length, a JSON header whose tensors'
    # data_offsets are relative to the end of the header, then the data
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8).ljust(8, b"\0"))
            if size < 8 or length > size - 8:
                return f"{file.name} is cut short ({size} bytes, its header alone needs " \
                       f"{length + 8})"
            header = json.loads(fh.read(length))
    except (OSError, ValueError) as exc:
        return f"{file.name} cannot be read ({_why(exc)})"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    need = 8 + length + max(ends, default=0)
    if size < need:
        return f"{file.name} is cut short ({size} bytes of {need})"
    return None


def _zip_damage(file: Path) -> str | None:
    try:
        size = file.stat().st_size
        with zipfile.ZipFile(file) as archive:  # reads the central directory at the file's end
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return f"{file.name} cannot be read ({_why(exc)})"
    if any(m.header_offset + m.compress_size > size for m in members):
        return f"{file.name} is cut short ({size} bytes)"
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _complete(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (kdengine.checkpoint.complete_checkpoints,
    without torch): step-N directories whose meta.json, written last, exists."""
    return sorted(p.parent for p in (Path(run_dir) / "checkpoints").glob(f"step-*/{META}"))


def newest_complete(run_dir: Path) -> Path | None:
    """The run's newest complete checkpoint, or None (without torch)."""
    done = _complete(run_dir)
    return done[-1] if done else None


def one_process_checkpoint(run_dir: Path) -> Path | None:
    """The run's latest complete checkpoint when a one-process run wrote it (safetensors, not
    torchrun's DCP shards), else None."""
    done = _complete(run_dir)
    if not done:
        return None
    try:
        meta = json.loads((done[-1] / META).read_text())
    except (OSError, ValueError):
        return None  # damaged: latest_checkpoint_refusal says so
    return None if isinstance(meta, dict) and meta.get(SHARDED_MARK) else done[-1]


def latest_checkpoint_refusal(run_dir: Path, prog: str = "kdengine") -> str | None:
    """Why `--resume RUN_DIR` cannot continue from the run's latest complete checkpoint (it is
    damaged), with the fix: delete it to continue from the one before, or start the run again
    when it was the only one; None when it reads whole or there is none."""
    done = _complete(run_dir)
    if not done:
        return None
    latest = done[-1]
    damage = checkpoint_damage(latest)
    if damage is None:
        return None
    if len(done) > 1:
        fix = f"delete it (rm -r {latest}) to continue from {done[-2].name}, the one before"
    else:
        fix = (f"it is the run's only checkpoint: start the run again under a new directory "
               f"with `{prog} train --config {Path(run_dir) / 'config.json'} --run-dir NEW_DIR`")
    return f"checkpoint {latest} is damaged: {damage}; {fix}"
