"""Disk space for a run's checkpoints and final student: the need estimated before training,
and a full disk while saving reported as one line. No torch: the CLI checks before torch loads.

A checkpoint holds the student's weights in fp32 (a tied lm-head written once more, as
safetensors wants it), AdamW's two fp32 moments per trainable parameter, and a little more (RNG
streams, scheduler). It is written into a temporary directory beside the kept ones (`keep`, 2)
and the oldest is pruned only afterwards, so at the peak keep + 1 checkpoints sit on disk; at the
end the final student (in the dtype the student was stored in) joins the kept ones.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

KEEP = 2  # complete checkpoints kept (kdengine.checkpoint.save_checkpoint's default)
# RNG streams (~10 kB), the scheduler, meta.json, zip records and headers per tensor
CHECKPOINT_OVERHEAD = 256 << 10
FINAL_OVERHEAD = 64 << 10  # config.json, kdengine.json, the weights file's header
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
# warn when the free space is less than this many times the peak need
TIGHT = 2.0

_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class Footprint:
    """Bytes of one checkpoint and of the final student."""

    checkpoint: int
    final: int

    @classmethod
    def of(cls, params: int, tied_extra: int, final_itemsize: int,
           final_files: int = 0) -> Footprint:
        """`params` trainable parameters (unique), `tied_extra` the elements of a tied lm-head
        that the checkpoint's weights file writes again, `final_itemsize` the stored dtype's,
        `final_files` the bytes of the tokenizer files copied beside the final weights."""
        weights = 4 * (params + tied_extra)
        moments = 8 * params  # AdamW exp_avg and exp_avg_sq, fp32
        return cls(weights + moments + CHECKPOINT_OVERHEAD,
                   final_itemsize * params + final_files + FINAL_OVERHEAD)


def saves_left(steps: int, checkpoint_every: int, from_step: int) -> int:
    """Checkpoints the run still writes: every `checkpoint_every` steps before the last, and
    one at the end."""
    periodic = 0
    if checkpoint_every > 0 and steps > 1:
        periodic = max((steps - 1) // checkpoint_every - from_step // checkpoint_every, 0)
    return periodic + 1


def peak_need(fp: Footprint, saves: int, existing: int = 0, keep: int = KEEP) -> tuple[int, str]:
    """The most bytes the run adds to its file system at any moment, and how (for messages)."""
    count = existing
    peak = 0
    for _ in range(saves):  # a checkpoint is written beside the kept ones, then they are pruned
        count += 1
        peak = max(peak, (count - existing) * fp.checkpoint)
        count = min(count, keep)
    at_end = max(count - existing, 0) * fp.checkpoint + fp.final
    if at_end >= peak:
        n = max(count - existing, 0)
        how = (f"{n} checkpoint{'s' * (n != 1)} of {human(fp.checkpoint)} and "
               if n else "") + f"the final student of {human(fp.final)}"
        return at_end, how
    n = peak // fp.checkpoint
    if n == 1:
        return peak, f"a checkpoint of {human(fp.checkpoint)}"
    return peak, (f"{n} checkpoints of {human(fp.checkpoint)} at once: a new one is written "
                  f"beside the {n - 1} kept")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or would: its nearest existing parent)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def space_verdict(run_dir: Path, fp: Footprint, saves: int, existing: int = 0
                  ) -> tuple[str, str]:
    """('ok' | 'tight' | 'short', message) for a run writing `saves` checkpoints into run_dir."""
    need, how = peak_need(fp, saves, existing)
    free = free_bytes(run_dir)
    where = f"{run_dir}'s file system has {human(free)} free"
    if free < need:
        return "short", (f"{where}, the run needs {human(need)} ({how}); free some space or "
                         "pick another --run-dir")
    if free < TIGHT * need:
        return "tight", (f"disk space is tight: {where}, the run needs up to {human(need)} "
                         f"({how})")
    return "ok", ""


def model_footprint(model_dir: Path) -> Footprint | None:
    """A checkpoint's and the final student's size from an HF-layout directory's config.json
    and safetensors headers, without loading a weight; None when they cannot tell."""
    model_dir = Path(model_dir)
    try:
        hf = json.loads((model_dir / "config.json").read_text())
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [model_dir / n for n in names]
        else:
            files = [model_dir / "model.safetensors"]
        shapes: dict[str, list[int]] = {}
        for file in files:
            shapes.update(_safetensors_shapes(file))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    params = sum(math.prod(shape) for shape in shapes.values())
    tied = bool(hf.get("tie_word_embeddings", False))
    embed = next((s for n, s in shapes.items() if n.endswith("embed_tokens.weight")), None)
    # a tied head is one parameter, but the checkpoint's weights file writes it under both names
    tied_extra = math.prod(embed) if tied and embed and "lm_head.weight" not in shapes else 0
    dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
    return Footprint.of(params, tied_extra, _DTYPE_BYTES.get(dtype, 4), side_files(model_dir))


def side_files(model_dir: Path | None) -> int:
    """Bytes of a model directory's files other than weights (tokenizer, configs): what the
    final student copies beside its own weights."""
    if model_dir is None or not Path(model_dir).is_dir():
        return 0
    return sum(f.stat().st_size for f in Path(model_dir).iterdir()
               if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES))


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > 100_000_000:
            raise ValueError(f"{path}: not a safetensors header")
        header = json.loads(fh.read(size))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


# --- a full disk while saving ---

_FULL_MARKS = ("no space left on device", "os error 28", "disk quota exceeded",
               "os error 122", "pytorchstreamwriter failed writing")


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT however it surfaced: an OSError, safetensors' `I/O error: No space left on
    device (os error 28)`, or torch.save's `[enforce fail at inline_container.cc:...] unexpected
    pos N vs M` (its zip writer's report of a short write)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if any(mark in text for mark in _FULL_MARKS):
            return True
        if "inline_container" in text and "unexpected pos" in text:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def full_directory(exc: BaseException | None, default: Path) -> Path:
    """The directory a disk-full error was writing into, when the error names its file."""
    seen = 0
    while exc is not None and seen < 8:
        name = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
        if name:
            return Path(name).parent
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return Path(default)


# a save makes a few files (a temporary directory, the weights, trainer.pt, meta.json); below
# this many free inodes a file system that refused a write with bytes to spare is out of inodes
# (the failed save's own files are removed before the message is made, giving a few back)
INODES_SLACK = 16


def _full_errno(exc: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT from an exception's chain (by errno, or by the text safetensors and
    torch.save put it in); None when it does not say which."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc.errno
        text = str(exc).lower()
        if "disk quota exceeded" in text or "os error 122" in text:
            return errno.EDQUOT
        if "no space left on device" in text or "os error 28" in text:
            return errno.ENOSPC
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


@dataclass(frozen=True)
class Exhausted:
    """What ran out on a file system that refused a write: `kind` 'inodes', 'quota' or
    'space', in `words` (the numbers that show it) and `fix` (what mends it)."""

    kind: str
    words: str
    fix: str


def exhausted(directory: Path, exc: BaseException | None = None,
              needed: int | None = None) -> Exhausted:
    """What is exhausted where a write into `directory` failed with `exc` (ENOSPC, EDQUOT):
    its quota (EDQUOT), its inodes (bytes to spare, next to no free inode: `df -i`), or its
    space. `needed`, the bytes the write wanted, when known."""
    path = Path(directory).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = free_bytes(path)
    try:
        found = os.statvfs(path)
        inodes, inodes_free = found.f_files, found.f_favail
    except OSError:
        inodes = inodes_free = 0
    if _full_errno(exc) == errno.EDQUOT:
        return Exhausted("quota", f"your disk quota there is used up (its file system has "
                         f"{human(free)} free; `quota -s` shows yours)",
                         "free some of your quota, or ask for more")
    short_of_bytes = needed is not None and free < needed
    if inodes and inodes_free < INODES_SLACK and not short_of_bytes:
        return Exhausted("inodes", f"its file system has {inodes_free} of {inodes} inodes "
                         f"free ({human(free)} of space free; `df -i` shows it)",
                         "delete files on that file system")
    need = f"needs {human(needed)}, " if needed is not None else ""
    return Exhausted("space", f"{need}its file system has {human(free)} free", "free some space")


def full_prefix(exc: BaseException, default: Path, need: str = "") -> str:
    """For a failure that is a full file system (is_disk_full), what ran out where and the fix,
    to put before its reason: `no free inodes under DIR (its file system has 0 of 64 inodes
    free (...); delete files on that file system): `; '' for any other failure. `need`, words
    after the numbers (`, a checkpoint needs 1.2 MB`)."""
    if not is_disk_full(exc):
        return ""
    where = full_directory(exc, default)  # the file written, or e.g. the demo teacher's cache
    out = exhausted(where, exc)
    head = {"inodes": "no free inodes", "quota": "disk quota exceeded"}.get(out.kind, "disk full")
    return f"{head} under {where} ({out.words}{need}; {out.fix}): "


class DiskFull(RuntimeError):
    """A save that ran out of space (or inodes, or quota), already cleaned up: one line with
    the numbers. `cause`: the failed write's error (by default the one being handled)."""

    def __init__(self, directory: Path, what: str, needed: int, last_good: Path | None,
                 run_dir: Path, cause: BaseException | None = None) -> None:
        self.directory, self.needed = Path(directory), needed
        self.free = free_bytes(directory)
        self.exhausted = exhausted(directory, cause if cause is not None else sys.exc_info()[1],
                                   needed)
        fix = self.exhausted.fix
        kept = (f"the last good checkpoint {last_good.name} is intact ({fix}, then "
                f"`kdengine train --resume {run_dir}`)" if last_good is not None
                else f"no checkpoint was written yet ({fix} and start it again)")
        head = {"space": "disk full", "inodes": "no free inodes",
                "quota": "disk quota exceeded"}[self.exhausted.kind]
        super().__init__(f"{head}: writing {what} into {directory}: "
                         f"{self.exhausted.words}; {kept}" if self.exhausted.kind != "space"
                         else f"{head}: writing {what} into {directory} "
                         f"{self.exhausted.words}; {kept}")


def human(n: float) -> str:
    """1234567 -> '1.23 MB' (decimal units, as df -H and the file managers count)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"
