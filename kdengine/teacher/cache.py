"""A teacher cache on disk: the manifest, the shard files, and the reader a run maps.

    DIR/manifest.json            what the cache is (below); "complete": true once every shard is
    DIR/shard-00000.ids          [rows, seq_len, K] token ids (uint16 when the vocab fits, else
                                 int32), little-endian, row-major
    DIR/shard-00000.logp         [rows, seq_len, K] log-probs at T = 1 (store dtype: float16,
                                 bfloat16 or float32)
    DIR/shard-00000.tail         [rows, seq_len] float32: log of the mass outside the K ids
    DIR/shard-00000.rowhash      [rows] int64: what the teacher saw in each row (rows.row_hash)
    DIR/shard-00000.done         written last, after the four files above are renamed into
                                 place: a shard without it is written again on a rerun
    DIR/tokenizer/               the teacher's tokenizer files and chat template (HF teachers)
    DIR/events.jsonl, launch.log the writing job's progress, as a run's (docs/events.md)

Rows are numbered train first, then validation (kdengine.teacher.rows); shard i holds rows
[i * shard_rows, (i + 1) * shard_rows). The manifest says what the bytes depend on: the
teacher's identity, the tokenizer, the data's identity, the row layout and its options, K,
the targets' kind and the dtypes; a run checks each against its own (kdengine.teacher.checks).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from kdengine.config import ConfigError

CACHE_FORMAT = "kdengine-teacher-cache-1"
MANIFEST = "manifest.json"
PARTS = ("ids", "logp", "tail", "rowhash")
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
ID_DTYPES = {"uint16": torch.uint16, "int32": torch.int32}


def id_dtype_for(vocab: int) -> str:
    return "uint16" if vocab <= 1 << 16 else "int32"


def bytes_per_token(top_k: int, store_dtype: str, vocab: int, seq_len: int) -> float:
    """Disk bytes a token costs: K ids and log-probs, the tail, its row's hash shared."""
    id_bytes = 2 if id_dtype_for(vocab) == "uint16" else 4
    return top_k * (id_bytes + STORE_DTYPES[store_dtype].itemsize) + 4 + 8 / seq_len


def shard_path(directory: Path, index: int, part: str) -> Path:
    return Path(directory) / f"shard-{index:05d}.{part}"


def cache_key(identity: dict[str, Any]) -> str:
    """The hash of everything that decides a cache's bytes."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()
                          ).hexdigest()[:24]


# what a reader takes from a manifest (the writer writes them all at its data stage), by type
MANIFEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "key": str, "teacher": dict, "tokenizer": dict, "data": dict, "options": dict, "rows": dict,
    "k": int, "vocab": int, "targets": str, "dtype": str, "id_dtype": str, "shard_rows": int}
ROW_KEYS = ("train", "val", "seq_len")


def read_manifest(directory: Path, field: str = "teacher_cache") -> dict[str, Any]:
    """The cache's manifest, checked for what its readers take: anything else is one
    ConfigError on `field` that says what is wrong and what to do."""
    directory = Path(directory).expanduser()
    path = directory / MANIFEST
    if not directory.exists():
        raise ConfigError(field, f"{directory} does not exist: give the directory "
                          "`kdengine cache-teacher` wrote (its --out)")
    if not directory.is_dir():
        raise ConfigError(field, f"{directory} is a file, not a teacher cache directory: give "
                          "the directory `kdengine cache-teacher` wrote (its --out)")
    if not path.is_file():
        raise ConfigError(field, f"{directory} holds no {MANIFEST}: not a teacher cache "
                          "(write one with `kdengine cache-teacher`)")
    damaged = (f"remove {directory} and write the cache again" if field == "teacher_cache" else
               f"remove {directory} and run the same command again, or pick another --out")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(field, f"cannot read {path}: {exc}: {damaged}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        written = manifest.get("format") if isinstance(manifest, dict) else None
        # a cache of another kdengine version: only then is removing the directory safe to say
        other = (f" (it is {written}, from another kdengine version: {damaged})"
                 if isinstance(written, str) and written.startswith("kdengine-teacher-cache-")
                 else "")
        raise ConfigError(field, f"{path} is not a {CACHE_FORMAT} manifest{other}")
    for key, kind in MANIFEST_KEYS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(field, f"{path} is damaged ({key!r} is {value!r}): {damaged}")
    rows = manifest["rows"]
    if not all(isinstance(rows.get(k), int) and rows[k] >= 0 for k in ROW_KEYS) or \
            manifest["k"] < 1 or manifest["shard_rows"] < 1 or \
            manifest["dtype"] not in STORE_DTYPES or manifest["id_dtype"] not in ID_DTYPES:
        raise ConfigError(field, f"{path} is damaged (its rows, k, shard_rows or dtypes do "
                          f"not add up): {damaged}")
    return manifest


def shard_sizes(manifest: dict[str, Any], index: int) -> dict[str, int]:
    """The bytes of each of shard `index`'s files, from the manifest's rows, seq_len, K and
    dtypes."""
    rows = manifest["rows"]
    total, per = rows["train"] + rows["val"], manifest["shard_rows"]
    count = min(per, total - index * per) * rows["seq_len"]
    k = manifest["k"]
    return {"ids": count * k * ID_DTYPES[manifest["id_dtype"]].itemsize,
            "logp": count * k * STORE_DTYPES[manifest["dtype"]].itemsize,
            "tail": count * 4, "rowhash": min(per, total - index * per) * 8}


def shard_problem(directory: Path, manifest: dict[str, Any], index: int) -> str | None:
    """What is wrong with shard `index`'s files on disk (missing, or another size than the
    manifest's rows, seq_len, K and dtypes make: a file cut short), or None when whole."""
    sizes = shard_sizes(manifest, index)
    for part in PARTS:
        path = shard_path(directory, index, part)
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path.name} is missing"
        if size != sizes[part]:
            return f"{path.name} is {size} bytes, {sizes[part]} expected"
    return None


def damaged_shard(directory: Path, manifest: dict[str, Any]) -> str | None:
    """The first shard file of a cache whose size is not what its manifest makes, or None."""
    rows = manifest["rows"]
    shards = -(-(rows["train"] + rows["val"]) // manifest["shard_rows"])
    for index in range(shards):
        problem = shard_problem(Path(directory).expanduser(), manifest, index)
        if problem:
            return problem
    return None


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Atomically (temp file, fsync, rename): a reader never sees half a manifest."""
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(manifest, indent=1, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def shard_done(directory: Path, index: int) -> bool:
    return shard_path(directory, index, "done").is_file()


def write_shard(directory: Path, index: int, arrays: dict[str, torch.Tensor]) -> int:
    """The four files of one shard, each written beside and renamed into place, then the
    `.done` marker: a kill at any point leaves the shard unmarked, and a rerun writes it again
    from the start (the teacher's numbers for the same rows are the same bytes). Returns the
    bytes written."""
    total = 0
    for part in PARTS:
        final = shard_path(directory, index, part)
        tmp = final.with_name(f".{final.name}.tmp")
        data = arrays[part].contiguous().view(torch.uint8).numpy().tobytes()
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        total += len(data)
    marker = shard_path(directory, index, "done")
    marker.write_text(json.dumps({"rows": int(arrays["rowhash"].numel()), "bytes": total}) + "\n")
    return total


class TeacherCache:
    """A complete cache, mapped: `targets(rows)` reads the K ids, log-probs and tails of the
    given rows from the shards (private copy-on-write mappings of read-only files)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).expanduser()
        self.manifest = read_manifest(self.directory)
        if not self.manifest.get("complete"):
            raise ConfigError("teacher_cache", f"{directory} is not complete (its writer was "
                              "stopped or is still going): run the same `kdengine cache-teacher` "
                              "command again to finish it")
        m = self.manifest
        self.top_k, self.vocab, self.kind = int(m["k"]), int(m["vocab"]), str(m["targets"])
        self.seq_len, self.shard_rows = int(m["rows"]["seq_len"]), int(m["shard_rows"])
        self.total_rows = int(m["rows"]["train"]) + int(m["rows"]["val"])
        self._id_dtype = ID_DTYPES[m["id_dtype"]]
        self._store_dtype = STORE_DTYPES[m["dtype"]]
        self._maps: dict[int, dict[str, torch.Tensor]] = {}

    def _shard(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._maps:
            rows = min(self.shard_rows, self.total_rows - index * self.shard_rows)
            shapes = {"ids": (rows, self.seq_len, self.top_k),
                      "logp": (rows, self.seq_len, self.top_k),
                      "tail": (rows, self.seq_len), "rowhash": (rows,)}
            dtypes = {"ids": self._id_dtype, "logp": self._store_dtype, "tail": torch.float32,
                      "rowhash": torch.int64}
            maps = {}
            for part in PARTS:
                path = shard_path(self.directory, index, part)
                count = 1
                for n in shapes[part]:
                    count *= n
                try:
                    flat = torch.from_file(str(path), shared=False, size=count,
                                           dtype=dtypes[part])
                except (OSError, RuntimeError) as exc:
                    raise ConfigError("teacher_cache", f"cannot map {path}: {exc} (the cache "
                                      "is damaged: run the same `kdengine cache-teacher` "
                                      "command again to write its damaged shards)") from None
                maps[part] = flat.view(shapes[part])
            self._maps[index] = maps
        return self._maps[index]

    def read(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """ids [b, seq, K] int64, logp [b, seq, K] (store dtype), tail [b, seq] float32 and
        rowhash [b] int64 of the cache rows `rows`."""
        out: dict[str, list[torch.Tensor]] = {part: [] for part in PARTS}
        for row in rows.tolist():
            if not 0 <= row < self.total_rows:
                raise IndexError(f"row {row} outside a cache of {self.total_rows} rows")
            shard = self._shard(row // self.shard_rows)
            at = row % self.shard_rows
            for part in PARTS:
                out[part].append(shard[part][at])
        stacked = {part: torch.stack(values) for part, values in out.items()}
        stacked["ids"] = stacked["ids"].to(torch.int64)
        return stacked

    def read_hashes(self, rows: torch.Tensor) -> torch.Tensor:
        """[b] int64: the stored row hashes of `rows` (kdengine.teacher.rows.row_hash)."""
        return torch.stack([self._shard(r // self.shard_rows)["rowhash"][r % self.shard_rows]
                            for r in rows.tolist()])


def summary(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a run's events say of its cache (run_started's `teacher_cache`)."""
    m = manifest
    return {"dir": str(Path(directory).expanduser()), "k": m.get("k"),
            "targets": m.get("targets"), "bytes": m.get("bytes"),
            "bytes_per_token": m.get("bytes_per_token"), "teacher": m["teacher"].get("spec"),
            "teacher_identity": m["teacher"].get("identity"), "dtype": m.get("dtype"),
            "key": m.get("key")}
