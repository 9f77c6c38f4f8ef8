"""The tokenized examples of a dataset, written once and memory-mapped after.

A store is a folder under KDENGINE_CACHE/data/<key>: `tokens.bin` (every example's ids,
uint32, one after another), `trains.bin` (uint8: 1 where the token is a training target),
`offsets.bin` (int64, example i is tokens[offsets[i]:offsets[i + 1]]), `names.bin` (uint32
crc32 of each example's name: the validation split's hash, as kdengine.data.is_validation) and
`meta.json` (counts, the skipped files). The key is a hash of the data's fingerprint (each
file's path, size and mtime), the tokenizer's fingerprint, the chat template and the options
that change the tokens, so a second run, a resume and another seq_len reuse it; it is built in
a temporary folder and renamed into place, so a killed build leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdengine.config import ON_BAD_FILE, TRAIN_ON, ConfigError
from kdengine.data.chat import ChatTemplate
from kdengine.data.formats import (
    BadRecord,
    Source,
    answers_of,
    empty_refusal,
    find_sources,
    visible_files,
)
from kdengine.data.parallel import default_workers, encode_all, start_pool

# In every store's key: a change to how examples become tokens and masks gives it a new value,
# so a store written by older code is tokenized again rather than reused (and a teacher cache
# over it asks to be written again). -2: a conversation that opens with the assistant's turn
# trains its words only, no longer the template's system block and header before them. -3:
# content given as a list of text parts is their text, no longer the list's Python repr.
STORE_FORMAT = "kdengine-examples-3"
NAMED_SKIPS = 5  # skipped files named in the stats; the rest only counted


@dataclass(frozen=True)
class DataOptions:
    """What decides the tokens: where the data is and how it is read and labelled."""

    split: str = "train"
    fields: tuple[tuple[str, str], ...] = ()
    train_on: str = "completion"
    on_bad_file: str = "fail"


@dataclass
class TokenStore:
    """A built store, mapped: tokens, trains and names are read from disk as batches ask."""

    directory: Path
    tokens: torch.Tensor  # uint32 [total tokens]
    trains: torch.Tensor  # uint8 [total tokens]
    offsets: torch.Tensor  # int64 [examples + 1]
    names: torch.Tensor  # int64 crc32 of each example's name [examples]
    meta: dict[str, Any]
    tokenized: int = 0  # examples tokenized by this command: 0 when an earlier one built it
    seconds: float = 0.0  # ... and the time the build took

    @property
    def key(self) -> str:
        return self.directory.name

    @property
    def content(self) -> str:
        """A digest of what the store holds (its ids, label masks, example bounds and names),
        not of where its files came from: a checkpoint's data position, so a resume on the
        same examples in files touched since (the key hashes their mtimes) continues. Written
        into meta.json at the build; a store built before it is read once here."""
        if "content" not in self.meta:
            self.meta["content"] = content_digest(self.directory)
        return str(self.meta["content"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


@dataclass
class _Writer:
    """Appends examples to the store's files; a bad source's examples are rolled back."""

    directory: Path
    files: dict[str, Any] = field(default_factory=dict)
    offsets: array = field(default_factory=lambda: array("q", [0]))
    names: array = field(default_factory=lambda: array("I"))
    tokens: int = 0
    trained: int = 0

    def __post_init__(self) -> None:
        self.files = {n: open(self.directory / f"{n}.bin", "wb") for n in ("tokens", "trains")}

    def mark(self) -> tuple[int, int, int]:
        return len(self.names), self.tokens, self.trained

    def add(self, name: str, ids: bytes, trains: bytes, trained: int) -> None:
        """One example: its ids as uint32 bytes, its trains as uint8 bytes."""
        self.files["tokens"].write(ids)
        self.files["trains"].write(trains)
        self.tokens += len(trains)
        self.trained += trained
        self.offsets.append(self.tokens)
        self.names.append(zlib.crc32(name.encode()))

    def rollback(self, mark: tuple[int, int, int]) -> None:
        count, self.tokens, self.trained = mark
        del self.names[count:]
        del self.offsets[count + 1:]
        self.files["tokens"].truncate(self.tokens * 4)
        self.files["tokens"].seek(self.tokens * 4)
        self.files["trains"].truncate(self.tokens)
        self.files["trains"].seek(self.tokens)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        (self.directory / "offsets.bin").write_bytes(self.offsets.tobytes())
        (self.directory / "names.bin").write_bytes(self.names.tobytes())


STORE_FILES = ("tokens", "trains", "offsets", "names")


def content_digest(directory: Path) -> str:
    """blake2b of the store's files, read in 8 MB chunks (about 1 GB/s: a store is hashed once,
    when it is built)."""
    digest = hashlib.blake2b(digest_size=12)
    for name in STORE_FILES:
        with open(directory / f"{name}.bin", "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        digest.update(name.encode())  # where one file ends and the next begins
    return digest.hexdigest()


# Stores this process built in a run's preflight, for its data stage to map (one `kdengine
# train` command: the preflight tokenizes, the run reuses the store, and that run tokenized it):
# directory -> (examples tokenized, seconds), taken by the next open_store of the directory.
_HANDED: dict[Path, tuple[int, float]] = {}


def hand_over(store: TokenStore) -> None:
    """The next open_store of `store` in this process reports the build that made it (examples
    tokenized and the time) as its own, not as a store reused from an earlier command: the
    preflight calls it for the run that follows it in the same command."""
    if store.tokenized:
        _HANDED[store.directory] = (store.tokenized, store.seconds)


def cache_dir() -> Path:
    from kdengine.cache_dir import cache_root

    return cache_root() / "data"


def store_key(sources: list[Source], tokenizer: Any, template: ChatTemplate | None,
              options: DataOptions,
              identify: Callable[[Path], list[Any]] | None = None) -> str:
    """The hash a store is found by: data, tokenizer, template and token-changing options.
    `identify`: what stands for a source's files (default _file_identity: path, size and
    mtime; content_identity: their bytes, for a key that outlives a `touch`)."""
    identity = {
        "format": STORE_FORMAT,
        "data": [(identify or _file_identity)(s.path) for s in sources],
        "names": [s.name for s in sources],
        "tokenizer": [getattr(tokenizer, "fingerprint", type(tokenizer).__name__),
                      tokenizer.eos_id, tokenizer.vocab_size],
        "template": [template.text, sorted(template.special_tokens.items())] if template else
                    None,
        "options": [options.split, list(options.fields), options.train_on, options.on_bad_file],
    }
    return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:24]


def _file_identity(path: Path) -> list[Any]:
    """Path, size and mtime of a file, or of every file in a folder (a saved dataset's, a
    raw-text one's) but the hidden ones, which no reader takes."""
    files = visible_files(path) if path.is_dir() else [path]
    out: list[Any] = []
    for p in files:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def content_identity(path: Path) -> list[Any]:
    """Name (relative to `path`), size and content digest of a file, or of every file in a
    folder that _file_identity lists: what the files hold, not where they are or when they
    were last written."""
    files = visible_files(path) if path.is_dir() else [path]
    memo = _DigestMemo()
    out = [[p.relative_to(path).as_posix() if path.is_dir() else p.name, p.stat().st_size,
            memo.digest(p)] for p in files]
    memo.save()
    return out


DIGESTS_FILE = "digests.json"  # under cache_dir(): digests of files by their stat
DIGESTS_KEPT = 1 << 16


class _DigestMemo:
    """blake2b digests of files' bytes, remembered in KDENGINE_CACHE/data/digests.json by each
    file's path, size, mtime and inode, so an unchanged file is read once (about 1 GB/s) and a
    touched one once more. A memo that cannot be read or written costs only the reading."""

    def __init__(self) -> None:
        self.path = cache_dir() / DIGESTS_FILE
        try:
            memo = json.loads(self.path.read_text())
        except (OSError, ValueError):
            memo = {}
        self.memo: dict[str, str] = memo if isinstance(memo, dict) else {}
        self.changed = False

    def digest(self, path: Path) -> str:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        found = self.memo.get(key)
        if isinstance(found, str):
            return found
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        self.memo[key] = found = digest.hexdigest()
        self.changed = True
        return found

    def save(self) -> None:
        """The memo (its newest DIGESTS_KEPT entries), written beside and renamed: a reader
        never sees half of it; two writers at once lose one's new entries, not the file."""
        if not self.changed:
            return
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".digests-", dir=self.path.parent)
            with os.fdopen(fd, "w") as out:
                json.dump(dict(list(self.memo.items())[-DIGESTS_KEPT:]), out)
            os.replace(tmp, self.path)
        except OSError:  # a full disk, a read-only cache: the next run reads the files again
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def open_store(spec: str, tokenizer: Any, template: ChatTemplate | None,
               options: DataOptions | None = None, root: Path | None = None,
               progress: Callable[[int, str], None] | None = None,
               workers: int | None = None) -> TokenStore:
    """The store of `spec`: reused when one with the same key exists, else built (tokenizing
    every example once, on `workers` processes: by default none for small data, the cores
    for large). `progress(examples_done, source_name)` is called every 1000 examples."""
    options = options or DataOptions()
    if options.train_on not in TRAIN_ON:
        raise ConfigError("train_on", f"must be one of {', '.join(TRAIN_ON)}")
    if options.on_bad_file not in ON_BAD_FILE:
        raise ConfigError("on_bad_file", f"must be one of {', '.join(ON_BAD_FILE)}")
    sources = find_sources(spec, options.split, options.fields)
    root = Path(root) if root is not None else cache_dir()
    directory = root / store_key(sources, tokenizer, template, options)
    if (directory / "meta.json").is_file():
        return _map(directory, *_HANDED.pop(directory, (0, 0.0)))
    root.mkdir(parents=True, exist_ok=True)
    with build_lock(directory, "token store"):
        if (directory / "meta.json").is_file():  # built by the process we waited for
            return _map(directory, 0)
        return _build_store(directory, spec, sources, tokenizer, template, options, progress,
                            workers)


@contextlib.contextmanager
def build_lock(directory: Path, what: str) -> Iterator[None]:
    """Held while this process builds `directory` (a token store, a text cache entry): the
    ranks of a torchrun job (and two runs of the same data) all ask for the same one at once,
    and each would tokenize the whole data and write its own copy; the first builds, the
    others wait here (saying so on stderr) and then find it built. A lock file beside it
    (`.DIR.lock`, removed by its holder); where none can be made, no lock (the build is
    atomic anyway: the first rename wins, a later one's copy is dropped)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: every process builds its own copy
        yield
        return
    path = directory.with_name(f".{directory.name}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"data: waiting for another process (a torchrun rank or another run) that "
                  f"builds the {what} {directory}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            # removed while held: a process that opened it before waits for this lock and
            # then finds the store; one that opens the path later makes a new file
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    os.unlink(path)
    finally:
        os.close(fd)  # releases the lock


def _build_store(directory: Path, spec: str, sources: list[Source], tokenizer: Any,
                 template: ChatTemplate | None, options: DataOptions,
                 progress: Callable[[int, str], None] | None,
                 workers: int | None) -> TokenStore:
    """open_store's build of a store that is not there, under its build_lock."""
    root = directory.parent
    started = time.perf_counter()
    building = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        if workers is None:
            workers = default_workers(sum(_size(s.path) for s in sources))
        pool = start_pool(workers, tokenizer, template) if workers > 0 else None
        try:
            count = _build(building, spec, sources, tokenizer, template, options, progress,
                           pool)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        try:
            os.replace(building, directory)
        except OSError:  # another run built the same store first: theirs is as good
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return _map(directory, count, time.perf_counter() - started)


def _build(directory: Path, spec: str, sources: list[Source], tokenizer: Any,
           template: ChatTemplate | None, options: DataOptions,
           progress: Callable[[int, str], None] | None,
           pool: ProcessPoolExecutor | None = None) -> int:
    writer = _Writer(directory)
    skipped: list[list[str]] = []
    kinds: dict[str, int] = {}
    # answers (assistant turns that train, completions), the empty ones, the first of those
    answers: dict[str, Any] = {"answers": 0, "empty_answers": 0, "first_empty_answer": None}
    columns: set[str] = set()  # every record's field names: a mapped column none has is named
    try:
        for index, source in enumerate(sources):
            mark, seen, counted = writer.mark(), dict(kinds), dict(answers)
            try:
                for example, ids, trains, trained in encode_all(
                        source.examples(columns), tokenizer, template, options.train_on, pool):
                    writer.add(example.name, ids, trains, trained)
                    kinds[example.kind] = kinds.get(example.kind, 0) + 1
                    total, empty = answers_of(example)
                    answers["answers"] += total
                    answers["empty_answers"] += empty
                    if empty and answers["first_empty_answer"] is None:
                        answers["first_empty_answer"] = example.name
                    if progress and len(writer.names) % 1000 == 0:
                        progress(len(writer.names), source.name)
            except BadRecord as exc:
                if options.on_bad_file == "fail":
                    # skipping is offered only where it leaves a file to train on: an earlier
                    # one's examples, or a later one whose first record encodes (not the only
                    # file, nor a template that raises on every record)
                    helps = (mark[0] > 0
                             or _any_renders(sources[index + 1:], tokenizer, template, options))
                    raise ConfigError("data", f"{_at_path(exc.where, source, spec)}: "
                                      f"{exc.message}" + (" (skip bad files with --on-bad-file "
                                                          "skip)" if helps else "")) from None
                writer.rollback(mark)
                kinds, answers = seen, counted
                skipped.append([source.name, str(exc)])
            except ConfigError as exc:  # an example no option mends (no chat template): by path
                where = exc.message.split(" ", 1)[0]
                if exc.field != "data" or not where.startswith(f"{source.name}:"):
                    raise
                raise ConfigError("data", _at_path(where, source, spec) +
                                  exc.message[len(where):]) from None
    finally:
        writer.close()
    if not writer.names:
        raise empty_refusal(spec, "holds no examples", skipped)
    unused = [(ours, theirs) for ours, theirs in options.fields if theirs not in columns]
    if unused:  # trained on the records' other fields, as if the mapping were not given
        ours, theirs = unused[0]
        keys = ", ".join(sorted(columns)[:8]) or "none"
        raise ConfigError("data_fields", f"{ours}={theirs} names column {theirs!r}, which no "
                          f"record of {spec} has (their fields: {keys}): give the column's "
                          f"name, or leave {ours}={theirs} out")
    meta = {"format": STORE_FORMAT, "spec": spec, "eos_id": tokenizer.eos_id,
            "examples": len(writer.names),
            "tokens": writer.tokens, "trained_tokens": writer.trained, "kinds": kinds,
            **answers,
            "skipped_files": len(skipped), "skipped": skipped[:NAMED_SKIPS],
            "files": len(sources), "content": content_digest(directory)}
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return len(writer.names)


PROBED_SOURCES = 64  # files whose first record _any_renders tries before it assumes one would


def _any_renders(sources: list[Source], tokenizer: Any, template: ChatTemplate | None,
                 options: DataOptions) -> bool:
    """Whether the first record of one of `sources` encodes: with --on-bad-file skip a file
    would be left to train on. A chat template that raises on every record renders none, and
    skipping would skip every file. Past PROBED_SOURCES files, assumed so."""
    from kdengine.data.encode import encode_example

    for source in sources[:PROBED_SOURCES]:
        try:
            first = next(iter(source.examples()), None)
            if first is not None:
                encode_example(first, tokenizer, template, options.train_on)
                return True
        except (BadRecord, ConfigError):
            continue
    return len(sources) > PROBED_SOURCES


def _at_path(where: str, source: Source, spec: str) -> str:
    """An example's name in an error (`a.jsonl:3`) with its file named by path
    (`/data/chats/a.jsonl:3`) where the data is local; its name (relative to the data, the
    validation split's key) stays in the store and the skipped list. A hub dataset's keeps
    the name."""
    if where.startswith(source.name) and Path(spec).expanduser().exists():
        return f"{source.path}{where[len(source.name):]}"
    return where


def _size(path: Path) -> int:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files if p.is_file())


def _map(directory: Path, tokenized: int, seconds: float = 0.0) -> TokenStore:
    meta = json.loads((directory / "meta.json").read_text())

    def mapped(name: str, dtype: torch.dtype) -> torch.Tensor:
        path = directory / f"{name}.bin"
        count = path.stat().st_size // torch.empty(0, dtype=dtype).element_size()
        if count == 0:
            return torch.empty(0, dtype=dtype)
        # private copy-on-write mapping of a file opened read-only (see kdengine.data)
        return torch.from_file(str(path), shared=False, size=count, dtype=dtype)

    names = mapped("names", torch.uint32).to(torch.int64)
    return TokenStore(directory, mapped("tokens", torch.uint32), mapped("trains", torch.uint8),
                      mapped("offsets", torch.int64).clone(), names, meta, tokenized, seconds)
