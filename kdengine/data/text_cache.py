"""The tokens of raw-text data (.txt, .jsonl, a directory of them), kept across runs.

Tokenizing GBs of text takes minutes, and every run and every resume of the same data with the
same tokenizer would do it again. The first run writes each document's ids to
KDENGINE_CACHE/data/text-<key>: `tokens.bin` (uint32, every document's ids one after another),
`offsets.bin` (int64, document i is tokens[offsets[i]:offsets[i + 1]]) and `meta.json` (format,
counts, the documents' names, which the validation split is chosen by, and the skipped files).
The key hashes each data file's path, size and mtime (as the example store's, see
kdengine.data.store), the tokenizer's fingerprint, eos id and vocab size, and the options that
change the documents, so a later run with the same key reads no text and tokenizes nothing.
An entry is written in a temporary folder and renamed into place; one that does not match its
meta (truncated, half-deleted) is rebuilt; a cache that cannot be written costs one warning
line, never the run. The demo's data (the stdlib's sources, byte-tokenized in ~20 ms) is not
cached. `cached_summary` gives the run's preflight an entry's names, per-document token counts
and skipped files without reading the text or the tokens: the entry proves what reading every
file would check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch

from kdengine.data import DEMO_DATA, read_documents
from kdengine.data.store import _file_identity, build_lock, cache_dir

# -2: a text file's byte-order mark is no longer its first token (an entry of -1 holds it)
TEXT_FORMAT = "kdengine-text-2"
WRITE_TOKENS = 1 << 24  # tokens converted to uint32 and written at a time

Line = Callable[[str], None]


def document_tokens(spec: str, tokenizer: Any, *, text_field: str = "text",
                    on_bad_file: str = "fail", skipped: list[list[str]] | None = None,
                    progress: Line | None = None,
                    root: Path | None = None) \
        -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The names of `spec`'s documents, their ids end to end (int64: exactly what the
    tokenizer's encode_tensor gives each document's text) and offsets (document i is
    ids[offsets[i]:offsets[i + 1]]), from the cache when it holds them, else read, tokenized
    and cached. The files on_bad_file="skip" left out are appended to `skipped` either way;
    `progress(line)` hears where the tokens came from."""
    skipped = [] if skipped is None else skipped
    directory = _entry(spec, tokenizer, text_field, on_bad_file, root)
    if directory is None or _read_index(directory) is not None:
        return _tokens(directory, spec, tokenizer, text_field, on_bad_file, skipped, progress)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # _write says it cannot cache, once
    # a torchrun job's ranks ask for the same entry at once: one tokenizes, the others wait
    with build_lock(directory, "token cache of the text"):
        return _tokens(directory, spec, tokenizer, text_field, on_bad_file, skipped, progress)


def _tokens(directory: Path | None, spec: str, tokenizer: Any, text_field: str,
            on_bad_file: str, skipped: list[list[str]], progress: Line | None) \
        -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """document_tokens' work: the entry's tokens when it holds them, else the text read,
    tokenized and cached."""
    broken = False
    if directory is not None:
        cached = _read(directory)
        if cached is not None:
            names, ids, offsets, skips = cached
            skipped.extend(skips)
            if progress:
                progress(f"data: tokens of {len(names)} documents from the cache ({directory})")
            return names, ids, offsets
        broken = directory.exists()  # there but refused: replaced once rebuilt
    start = time.perf_counter()
    found: list[list[str]] = []
    docs = read_documents(spec, text_field, on_bad_file, found)
    skipped.extend(found)
    names = [d.name for d in docs]
    encode = _encoder(tokenizer)
    tokens = [encode(d.text) for d in docs]
    offsets = torch.tensor([0, *accumulate(len(t) for t in tokens)], dtype=torch.int64)
    ids = torch.cat(tokens) if tokens else torch.empty(0, dtype=torch.int64)
    del tokens
    if directory is None:
        return names, ids, offsets
    seconds = time.perf_counter() - start
    try:
        _write(directory, names, ids, offsets, found, tokenizer.eos_id, replace=broken)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        (progress or _stderr)(f"WARNING: data: cannot cache the tokens in {directory.parent} "
                              f"({why}); this run goes on uncached")
        return names, ids, offsets
    if progress:
        progress(f"data: tokenized {len(names)} documents ({len(ids)} tokens) in "
                 f"{seconds:.1f} s; cached for the next run")
    return names, ids, offsets


@dataclass(frozen=True)
class Summary:
    """What an entry knows of the data without its tokens: the documents' names, each one's
    token count (its end-of-document token not included) and the files on_bad_file="skip" left
    out."""

    names: list[str]
    counts: list[int]
    skipped: list[list[str]]


def cached_summary(spec: str, tokenizer: Any, *, text_field: str = "text",
                   on_bad_file: str = "fail", root: Path | None = None) -> Summary | None:
    """The summary of `spec`'s valid cache entry for this tokenizer and these options, or None
    (none, or one document_tokens would refuse and rebuild). Cheap: the data files are stat'ed
    for the key, meta.json and offsets.bin (8 bytes a document) read, tokens.bin stat'ed."""
    directory = _entry(spec, tokenizer, text_field, on_bad_file, root)
    found = _read_index(directory) if directory is not None else None
    if found is None:
        return None
    meta, offsets = found
    return Summary(meta["names"], offsets.diff().tolist(), meta["skipped"])


def _entry(spec: str, tokenizer: Any, text_field: str, on_bad_file: str,
           root: Path | None) -> Path | None:
    """Where `spec`'s entry is (or would be); None for data that is not cached (the demo's) or
    not there (read_documents then says what is wrong)."""
    path = Path(spec).expanduser()
    if spec == DEMO_DATA or not path.exists():
        return None
    root = Path(root) if root is not None else cache_dir()
    try:
        return root / f"text-{text_key(path, tokenizer, text_field, on_bad_file)}"
    except OSError:  # a file went away while listed: read_documents will say so, or not
        return None


def text_key(path: Path, tokenizer: Any, text_field: str, on_bad_file: str) -> str:
    """The hash an entry is found by: the files, the tokenizer and what changes the documents."""
    identity = {
        "format": TEXT_FORMAT,
        "data": [str(path.resolve()), _file_identity(path)],
        "tokenizer": [getattr(tokenizer, "fingerprint", type(tokenizer).__name__),
                      tokenizer.eos_id, tokenizer.vocab_size],
        "options": [text_field, on_bad_file],
    }
    return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:24]


def _encoder(tokenizer: Any) -> Callable[[str], torch.Tensor]:
    return getattr(tokenizer, "encode_tensor", None) or (
        lambda text: torch.tensor(tokenizer.encode(text), dtype=torch.int64))


def _read(directory: Path) \
        -> tuple[list[str], torch.Tensor, torch.Tensor, list[list[str]]] | None:
    """An entry's names, ids, offsets and skipped files; None when there is none or it does not
    match its meta (then it is rebuilt)."""
    found = _read_index(directory)
    if found is None:
        return None
    meta, offsets = found
    total = meta["tokens"]
    try:
        # a private copy-on-write mapping of a file opened read-only, widened to int64 once
        ids = torch.from_file(str(directory / "tokens.bin"), shared=False, size=total,
                              dtype=torch.uint32).to(torch.int64) if total else \
            torch.empty(0, dtype=torch.int64)
    except (OSError, RuntimeError):
        return None
    return meta["names"], ids, offsets, meta["skipped"]


def _read_index(directory: Path) -> tuple[dict[str, Any], torch.Tensor] | None:
    """An entry's meta and offsets, when they and the size of tokens.bin agree (its tokens are
    not read); None when there is no entry or a broken one."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        count, total, names = meta["documents"], meta["tokens"], meta["names"]
        if (meta["format"] != TEXT_FORMAT or len(names) != count
                or not isinstance(meta["skipped"], list)
                or (directory / "tokens.bin").stat().st_size != total * 4
                or (directory / "offsets.bin").stat().st_size != (count + 1) * 8):
            return None
        offsets = torch.frombuffer(bytearray((directory / "offsets.bin").read_bytes()),
                                   dtype=torch.int64)
        if int(offsets[0]) != 0 or int(offsets[-1]) != total or bool((offsets.diff() < 0).any()):
            return None
        return meta, offsets
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None


def _write(directory: Path, names: list[str], ids: torch.Tensor, offsets: torch.Tensor,
           skipped: list[list[str]], eos_id: int, replace: bool) -> None:
    """The entry, built beside and renamed into place; `replace`: a broken one (_read refused
    it) is there to take the place of."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".build-", dir=directory.parent))
    try:
        with open(building / "tokens.bin", "wb") as out:
            for start in range(0, len(ids), WRITE_TOKENS):
                part = ids[start:start + WRITE_TOKENS]
                if int(part.min()) < 0 or int(part.max()) >= 1 << 32:
                    raise ValueError("token ids beyond uint32")
                out.write(part.to(torch.uint32).view(torch.uint8).numpy())
        (building / "offsets.bin").write_bytes(offsets.view(torch.uint8).numpy().tobytes())
        meta = {"format": TEXT_FORMAT, "documents": len(names), "tokens": int(offsets[-1]),
                "eos_id": eos_id, "skipped": skipped, "names": names}
        (building / "meta.json").write_text(json.dumps(meta) + "\n")
        if replace:
            shutil.rmtree(directory, ignore_errors=True)
        try:
            os.replace(building, directory)
        except OSError:  # another run (or rank) wrote the same entry first: theirs is as good
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
