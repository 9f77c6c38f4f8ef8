"""Token data: read documents, tokenize, hold out a validation split, and sample batches.

Sources: a text file (TEXT_SUFFIXES), a .jsonl file (one `text` field a line), a directory of
them, or a directory of pre-tokenized uint16/uint32 shards (`tokens.json` + `*.bin`, see
docs/data.md).
Documents are split into train and validation by a hash of their name, so the split is the same
on every machine and run. Each split is one packed token stream with an end-of-document token
after each document: an int64 tensor for text (tokenized in memory anyway), and for shards a
TokenStream, ranges of documents over the memory-mapped shards that reads the same tokens without
holding them in RAM. The batch of step k is a pure function of (seed, k): the data position a
checkpoint saves is the step, plus a fingerprint of the stream so a resume on changed data fails.

Conversations and prompt/completion examples (chat templates, completion-only labels, a cached
token store, packed rows with example boundaries) live beside this: kdengine.data.examples.
"""

from __future__ import annotations

import json
import sys
import sysconfig
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from kdengine.config import DEMO_DATA, ConfigError
from kdengine.data.formats import (
    TEXT_SUFFIXES,
    check_data_file,
    counted,
    empty_refusal,
    json_error_text,
    json_kind,
    no_fields_text,
    not_utf8,
    visible_files,
)
from kdengine.losses import IGNORE_INDEX

SHARD_META = "tokens.json"  # marks a directory of pre-tokenized shards
SHARD_FORMAT = "kdengine-tokens"
SHARD_DTYPES = {"uint16": torch.uint16, "uint32": torch.uint32}


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and one end-of-document id, 256. The demo's tokenizer."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """The text of byte ids; the end-of-document id reads as nothing, a cut character as
        U+FFFD."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def encode_tensor(self, text: str) -> torch.Tensor:
        raw = bytearray(text.encode("utf-8"))
        return torch.frombuffer(raw, dtype=torch.uint8).to(torch.int64) if raw else \
            torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def demo_documents(max_bytes: int = 6_000_000) -> list[Document]:
    """The Python standard library's own top-level .py sources: real code every Python has."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs.append(Document(path.name, text))
        total += len(text)
        if total >= max_bytes:
            break
    return docs


def read_documents(spec: str, text_field: str = "text", on_bad_file: str = "fail",
                   skipped: list[list[str]] | None = None) -> list[Document]:
    """Documents of a text file, a .jsonl file (one `text_field` per line) or a directory.
    `on_bad_file="skip"` leaves out a file that cannot be read, is not UTF-8 or has a bad JSONL
    line (all of it), appending [file, reason] to `skipped`; "fail" stops at it."""
    if spec == DEMO_DATA:
        return demo_documents()
    skipped = [] if skipped is None else skipped
    docs = list(iter_documents(spec, text_field, on_bad_file, skipped))
    if not docs:
        raise empty_refusal(spec, "is empty: no text to train on", skipped)
    return docs


def iter_documents(spec: str, text_field: str = "text", on_bad_file: str = "fail",
                   skipped: list[list[str]] | None = None) -> Iterator[Document]:
    """read_documents' documents one file at a time, in the same order (the run's preflight
    reads every file through this and stops tokenizing once it has seen enough)."""
    if on_bad_file not in ("fail", "skip"):
        raise ConfigError("on_bad_file", f"must be fail or skip (got {on_bad_file!r})")
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError("data", f"{spec} does not exist (give a file, a directory or "
                          f"{DEMO_DATA})")
    if is_token_shards(path):
        raise ConfigError("data", f"{spec} holds pre-tokenized shards: read it with "
                          "read_token_shards")
    if path.is_file():
        check_data_file(path, spec)
    # hidden files and folders (.DS_Store, .git/, ._name) are skipped, as example folders do
    files = [p for p in visible_files(path) if p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl"
             ] if path.is_dir() else [path]
    if not files:
        from kdengine.data_source import DATA_SUFFIXES, upper_case_suffixes

        near = upper_case_suffixes(visible_files(path), DATA_SUFFIXES)
        raise ConfigError("data", f"{spec} holds no {', '.join(TEXT_SUFFIXES)} or .jsonl files "
                          f"(or, for pre-tokenized data, a {SHARD_META} beside *.bin shards)"
                          + near)
    for file in files:
        name = str(file.relative_to(path) if path.is_dir() else file.name)
        try:
            docs = _file_documents(file, name, text_field)
        except _BadFile as exc:
            if on_bad_file == "fail":  # skipping the only file would leave nothing: not offered
                skip = ", or skip bad files with --on-bad-file skip" if len(files) > 1 else ""
                raise ConfigError("data", f"{exc.where} {exc.reason}; {exc.fix}{skip}") from None
            if skipped is not None:
                skipped.append([name, f"{exc.where} {exc.reason}"])
            continue
        yield from docs


class _BadFile(Exception):
    def __init__(self, where: str, reason: str, fix: str) -> None:
        super().__init__(f"{where} {reason}")
        self.where, self.reason, self.fix = where, reason, fix


def _file_documents(file: Path, name: str, text_field: str) -> list[Document]:
    """The documents of one file, all or none: a bad JSONL line anywhere makes it a _BadFile."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise _BadFile(f"cannot read {file}:", exc.strerror or str(exc),
                       "check its permissions") from None
    except UnicodeDecodeError as exc:
        raw = exc.object
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise _BadFile(str(file), not_utf8(raw, 0), "save it as UTF-8") from None
        line, line_start = raw.count(b"\n", 0, exc.start) + 1, raw.rfind(b"\n", 0, exc.start) + 1
        raise _BadFile(f"{file}:{line}", f"is not UTF-8 text (byte {exc.start - line_start} of "
                       "the line)", "save the file as UTF-8, or give pre-tokenized shards") \
            from None
    # a byte-order mark (Notepad and other Windows editors write one) is no text: it opens no
    # record, and a text file's first token is its first word, not U+FEFF
    text = text.removeprefix("\ufeff")
    if file.suffix == ".jsonl":
        return list(_jsonl_documents(file, text, text_field))
    return [Document(name, text)] if text.strip() else []


def is_token_shards(path: Path) -> bool:
    return path.is_dir() and (path / SHARD_META).is_file()


# how many tokens a sequential scan (eos index, vocab max, fingerprint) reads at a time: bounds
# the scan's memory to a few tens of MB whatever the corpus size (8 MB of int64 a chunk)
SCAN_TOKENS = 1 << 20


@dataclass
class MappedShard:
    """One `*.bin` shard, memory-mapped in its own dtype (never converted as a whole).

    `tokens` is a private, copy-on-write mapping: the file is opened read-only and nothing is ever
    written back to it. When the file's last token is not `eos_id`, the shard reads as if it had
    one more token, an eos at position `size` (`eos_added`): the file is not copied or changed."""

    name: str
    path: Path
    tokens: torch.Tensor  # 1-D, uint16 or uint32, mapped from the file
    ends: torch.Tensor  # int64 position of every document's last token (its eos)
    eos_added: bool
    max_id: int  # the largest token id, the added eos included
    eos_id: int

    @property
    def size(self) -> int:
        """Tokens in the file."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.size + self.eos_added

    def read(self, start: int, stop: int, out: torch.Tensor | None = None,
             scratch: bytearray | None = None) -> torch.Tensor:
        """Tokens [start, stop) as int64, read with plain file reads: a sequential scan then
        goes through the page cache and does not fault the whole mapping into this process.
        Scans pass `out` (int64) and `scratch` buffers to reuse: no allocation per chunk."""
        out = torch.empty(stop - start, dtype=torch.int64) if out is None else out[:stop - start]
        count = max(min(stop, self.size) - start, 0)
        width = self.tokens.element_size()
        if count:
            if scratch is None or len(scratch) < count * width:
                scratch = bytearray(count * width)
            view, done = memoryview(scratch)[:count * width], 0
            with open(self.path, "rb", buffering=0) as f:
                f.seek(start * width)
                while done < len(view):  # readinto may return short counts
                    got = f.readinto(view[done:])
                    if not got:
                        raise ConfigError("data", f"{self.path} shrank while being read "
                                          "(rewritten during training?)")
                    done += got
            out[:count].copy_(torch.frombuffer(scratch, dtype=self.tokens.dtype, count=count))
        out[count:] = self.eos_id  # the added eos, when the range reaches it
        return out

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        """Tokens at `positions` (int64, 0 <= p < len(self)) as int64, from the mapping."""
        inside = positions < self.size
        if bool(inside.all()):
            return self.tokens[positions].to(torch.int64)
        out = torch.full_like(positions, self.eos_id)
        out[inside] = self.tokens[positions[inside]].to(torch.int64)
        return out


@dataclass
class TokenShards:
    """A pre-tokenized corpus: its mapped shards in name order, each document ended by `eos_id`."""

    shards: list[MappedShard]
    eos_id: int


def read_token_shards(spec: str) -> TokenShards:
    """Read `tokens.json` ({"format": "kdengine-tokens", "dtype": "uint16"|"uint32",
    "eos_id": N}) and map every `*.bin` beside it: raw little-endian token ids. One sequential
    pass per shard (in chunks) finds the document ends and the largest id; the tokens stay on
    disk, mapped, until a batch gathers them."""
    files, dtype, eos_id = shard_files(spec)
    width = torch.empty(0, dtype=dtype).element_size()
    shards: list[MappedShard] = []
    for file in files:
        size = file.stat().st_size
        if size == 0:
            continue
        try:
            # shared=False: a private copy-on-write mapping of a file opened read-only.
            # shared=True would open it read-write (failing on read-only data), write any change
            # to the tensor back into the corpus, and grow the file if `size` were too large.
            tokens = torch.from_file(str(file), shared=False, size=size // width, dtype=dtype)
        except (OSError, RuntimeError) as exc:
            raise ConfigError("data", f"cannot read {file}: {exc}") from None
        shards.append(_index_shard(file, tokens, eos_id))
    if not shards:
        raise ConfigError("data", f"{spec} is empty: every *.bin shard has 0 tokens")
    return TokenShards(shards, eos_id)


def shard_files(spec: str) -> tuple[list[Path], torch.dtype, int]:
    """The `*.bin` shards of a pre-tokenized directory, their dtype and eos id, with
    `tokens.json` and every file's size checked; nothing is mapped or scanned."""
    path = Path(spec).expanduser()
    meta_path = path / SHARD_META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError("data", f"cannot read {meta_path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        raise ConfigError("data", f"{meta_path} must say \"format\": \"{SHARD_FORMAT}\" "
                          "(see docs/data.md)")
    dtype = SHARD_DTYPES.get(meta.get("dtype"))
    if dtype is None:
        raise ConfigError("data", f"{meta_path}: dtype must be uint16 or uint32 "
                          f"(got {meta.get('dtype')!r})")
    eos_id = meta.get("eos_id")
    if not isinstance(eos_id, int) or isinstance(eos_id, bool) or eos_id < 0:
        raise ConfigError("data", f"{meta_path}: eos_id must be the token id that ends each "
                          f"document (got {eos_id!r})")
    if sys.byteorder != "little":  # pragma: no cover - every machine we run on is little-endian
        raise ConfigError("data", "pre-tokenized shards are little-endian; this machine is not")
    width = torch.empty(0, dtype=dtype).element_size()
    files = sorted(p for p in path.glob("*.bin") if not p.name.startswith("."))  # not ._x.bin
    if not files:
        raise ConfigError("data", f"{spec} has {SHARD_META} but no *.bin shards")
    for file in files:
        size = file.stat().st_size
        if size % width:
            raise ConfigError("data", f"{file} has {counted(size, 'byte')}, not a whole number of "
                              f"{meta['dtype']} tokens (truncated or the wrong dtype?)")
    return files, dtype, eos_id


def _index_shard(file: Path, tokens: torch.Tensor, eos_id: int) -> MappedShard:
    """Document ends and largest id of one shard, scanned in chunks through reused buffers."""
    shard = MappedShard(file.name, file, tokens, torch.empty(0, dtype=torch.int64), False, 0,
                        eos_id)
    size = min(SCAN_TOKENS, shard.size)
    chunk, is_eos = torch.empty(size, dtype=torch.int64), torch.empty(size, dtype=torch.bool)
    scratch = bytearray(size * tokens.element_size())
    ends, max_id = [], 0
    for start in range(0, shard.size, SCAN_TOKENS):
        stop = min(start + SCAN_TOKENS, shard.size)
        part = shard.read(start, stop, chunk, scratch)
        ends.append(torch.eq(part, eos_id, out=is_eos[:stop - start]).nonzero().flatten() + start)
        max_id = max(max_id, int(part.max()))
    shard.eos_added = int(part[-1]) != eos_id  # the last document ends at the end of the shard
    if shard.eos_added:
        ends.append(torch.tensor([shard.size]))
        max_id = max(max_id, eos_id)
    shard.ends, shard.max_id = torch.cat(ends), max_id
    return shard


def _jsonl_documents(file: Path, text: str, text_field: str) -> Iterator[Document]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _BadFile(f"{file}:{number}", f"is not JSON: {json_error_text(exc)}",
                           "fix the line") from None
        if not isinstance(record, dict):
            raise _BadFile(f"{file}:{number}", f"is {json_kind(record)}, not a record "
                           "(an object of fields)", "give each line a JSON object with a text "
                           "field (or messages, or prompt and completion)")
        if not isinstance(record.get(text_field), str):
            if text_field in record:
                raise _BadFile(f"{file}:{number}", f"has a {text_field} field that is "
                               f"{json_kind(record[text_field])}, not a string",
                               "give each line a text string")
            kind = next((k for k in ("messages", "conversations", "prompt", "completion")
                         if record.get(k) is not None), None)
            if kind is not None:  # examples are told from text by a file's first record
                raise _BadFile(f"{file}:{number}", f"is a {kind} record, but the file's first "
                               "record is text, so the file is read as raw text (a text field "
                               "a line)", "put a conversation or prompt/completion record "
                               "first to read every record as an example, or keep text and "
                               "examples in separate files")
            reason, _, fix = no_fields_text(record).partition("; ")
            raise _BadFile(f"{file}:{number}", reason, fix)
        if record[text_field].strip():
            yield Document(f"{file.name}:{number}", record[text_field])


def is_validation(name: str, val_fraction: float) -> bool:
    return zlib.crc32(name.encode()) % 10_000 < val_fraction * 10_000


def split_token_shards(shards: TokenShards, val_fraction: float, window: int,
                       batch_size: int = 1, vocab_size: int | None = None,
                       spec: str = "") -> TokenSplits:
    """Hold out whole documents (named `shard.bin:i`, i-th document of the shard) by the same
    name hash as text documents; keep the rest as the train stream. Both are TokenStreams over
    the mapped shards: ranges of documents, never copies of the tokens. `spec`: the data as
    the run was given it, which a refusal names."""
    bases = _cumulative([len(s) for s in shards.shards])
    train_parts, val_parts = [], []
    for shard, base in zip(shards.shards, bases.tolist(), strict=False):
        if vocab_size is not None and (bad := shard.max_id) >= vocab_size:
            raise ConfigError("data", f"{shard.path} holds token id {bad}, beyond the model's "
                              f"vocab ({vocab_size}): tokenized with another tokenizer? "
                              "(tokenize it with the teacher's)")
        held = _held_documents(shard.name, len(shard.ends), val_fraction)
        # runs of consecutive documents on the same side become one range each
        first = torch.ones(len(held), dtype=torch.bool)
        first[1:] = held[1:] != held[:-1]
        run_first = first.nonzero().flatten()
        run_last = torch.cat([run_first[1:] - 1, torch.tensor([len(held) - 1])])
        doc_start = torch.cat([torch.tensor([0]), shard.ends[:-1] + 1])
        starts = doc_start[run_first] + base
        stops = shard.ends[run_last] + 1 + base
        side = held[run_first]
        train_parts.append(torch.stack([starts[~side], stops[~side]], 1))
        val_parts.append(torch.stack([starts[side], stops[side]], 1))
    train = TokenStream(shards.shards, torch.cat(train_parts))
    val = TokenStream(shards.shards, torch.cat(val_parts))
    if len(val) < window + 1:  # few documents: hold out the tail instead
        total = int(bases[-1])
        cut, _ = _tail_cut(total, val_fraction, window)
        train = TokenStream(shards.shards, torch.tensor([[0, cut]]))
        val = TokenStream(shards.shards, torch.tensor([[cut, total]]))
    _check_sizes(train, val, window, batch_size, spec)
    return TokenSplits(train, val, shards.eos_id)


def _held_documents(name: str, count: int, val_fraction: float) -> torch.Tensor:
    """is_validation(f"{name}:{i}") for i < count, with the crc of the name's prefix computed
    once (zlib.crc32 continues from a running value: the same number, a few times faster)."""
    prefix, limit = zlib.crc32(f"{name}:".encode()), val_fraction * 10_000
    return torch.tensor([zlib.crc32(str(i).encode(), prefix) % 10_000 < limit
                         for i in range(count)], dtype=torch.bool)


def _cumulative(lengths: list[int]) -> torch.Tensor:
    """[0, l0, l0 + l1, ...]: start offsets, one more than lengths."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    if lengths:
        out[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    return out


def _tail_cut(length: int, val_fraction: float, window: int) -> tuple[int, int]:
    cut = int(length * (1 - max(val_fraction, 0.05)))
    cut = min(cut, length - (window + 1))
    return max(cut, 0), length


def _tail_split(stream: torch.Tensor, val_fraction: float,
                window: int) -> tuple[torch.Tensor, torch.Tensor]:
    cut, _ = _tail_cut(len(stream), val_fraction, window)
    return stream[:cut], stream[cut:]


def _check_sizes(train: Stream, val: Stream, window: int, batch_size: int,
                 spec: str = "") -> None:
    check_split_sizes(len(train), len(val), window, batch_size, spec)


def enough_tokens(window: int, batch_size: int) -> tuple[int, int]:
    """(train, validation) tokens a run needs at least: one training batch of distinct windows
    and one validation sequence."""
    return batch_size * (window - 1) + 2, window + 1  # batch_size windows, hop window - 1


def check_split_sizes(train: int, val: int, window: int, batch_size: int,
                      spec: str = "") -> None:
    """Refuse splits of `train` and `val` tokens shorter than enough_tokens(), naming the data
    `spec` (its path)."""
    need, need_val = enough_tokens(window, batch_size)
    if train < need or val < need_val:
        raise ConfigError("data", f"{spec + ' ' if spec else ''}has "
                          f"{counted(train + val, 'token')} ({train} train, {val} validation), "
                          f"shorter than one batch: batch_size x (seq_len + 1) needs about "
                          f"{need} train tokens and one validation sequence of {need_val} (give "
                          "more data, or a smaller --seq-len or --batch-size)")


def pack(token_lists: Iterable[torch.Tensor], eos_id: int) -> torch.Tensor:
    """One stream: each document followed by the end-of-document token."""
    parts: list[torch.Tensor] = []
    eos = torch.tensor([eos_id], dtype=torch.int64)
    for tokens in token_lists:
        parts += [tokens, eos]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


# Documents this long on average are packed from a view of each (cheap per token), shorter ones
# all at once through masks (cheap per document: a view costs microseconds, a million seconds).
VIEW_TOKENS = 256


def pack_flat(ids: torch.Tensor, lengths: torch.Tensor, eos_id: int,
              keep: torch.Tensor | None = None) -> torch.Tensor:
    """pack() of documents laid end to end in `ids` (document i has lengths[i] of them), or of
    those `keep` (bool, a document) marks: each followed by the end-of-document token."""
    if len(ids) >= VIEW_TOKENS * max(len(lengths), 1):
        docs = ids.split(lengths.tolist())
        return pack(docs if keep is None else
                    (d for d, k in zip(docs, keep.tolist(), strict=True) if k), eos_id)
    if keep is not None:
        ids, lengths = ids[keep.repeat_interleave(lengths)], lengths[keep]
    # document i's eos comes after its own and all earlier ids, and the i earlier eos tokens
    ends = lengths.cumsum(0) + torch.arange(len(lengths))
    out = torch.empty(len(ids) + len(lengths), dtype=torch.int64)
    is_eos = torch.zeros(len(out), dtype=torch.bool)
    is_eos[ends] = True
    out[ends] = eos_id
    out[~is_eos] = ids
    return out


class TokenStream:
    """A 1-D token stream over mapped shards, without a copy: the concatenation of `ranges`
    ([start, stop) rows in the shards' joint coordinates: shard 0's tokens, then shard 1's, ...,
    an added eos counted in its shard). It reads exactly like the int64 tensor that packing those
    ranges would give: len(), stream[positions] (an int64 tensor of the same shape), stream[a:b]
    and stream[i]; only the tokens asked for are read and converted to int64."""

    def __init__(self, shards: list[MappedShard], ranges: torch.Tensor) -> None:
        ranges = ranges.reshape(-1, 2).to(torch.int64)
        ranges = ranges[ranges[:, 1] > ranges[:, 0]]  # empty ranges would confuse the search
        self.shards = shards
        self.shard_starts = _cumulative([len(s) for s in shards])
        self.range_starts = ranges[:, 0].contiguous()
        self.offsets = _cumulative((ranges[:, 1] - ranges[:, 0]).tolist())
        self._length = int(self.offsets[-1])

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return (f"TokenStream({self._length} tokens in {len(self.range_starts)} ranges of "
                f"{len(self.shards)} shards)")

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            return self.take(key)
        if isinstance(key, slice):
            start, stop, step = key.indices(self._length)
            if step != 1:
                raise IndexError("a TokenStream slices with step 1 only")
            return self.read(start, max(start, stop))
        index = int(key) + (self._length if int(key) < 0 else 0)
        if not 0 <= index < self._length:
            raise IndexError(f"position {key} outside a stream of {self._length} tokens")
        return self.take(torch.tensor(index))

    def _locate(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shard index and position inside it of each stream position."""
        rng = torch.searchsorted(self.offsets, positions, right=True) - 1
        joint = self.range_starts[rng] + (positions - self.offsets[rng])
        shard = torch.searchsorted(self.shard_starts, joint, right=True) - 1
        return shard, joint - self.shard_starts[shard]

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        """Tokens at `positions` (any shape, 0 <= p < len) as int64: the random-access path,
        through the mappings, a handful of searchsorted and one gather per shard touched."""
        flat = positions.reshape(-1).to(torch.int64)
        if len(flat) and (int(flat.min()) < 0 or int(flat.max()) >= self._length):
            raise IndexError(f"positions outside a stream of {self._length} tokens")
        shard, local = self._locate(flat)
        out = torch.empty_like(flat)
        for s in shard.unique().tolist():
            mask = shard == s
            out[mask] = self.shards[s].take(local[mask])
        return out.reshape(positions.shape)

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        """[len(starts), length] int64: row i is stream[starts[i]:starts[i] + length]. The same
        tokens as take(starts[:, None] + arange(length)), faster: a row inside one range of
        one shard's file (most rows) is one slice of the mapping; only rows that cross a range
        or shard boundary (or reach an added eos) go through take()."""
        starts = starts.to(torch.int64)
        if len(starts) and (int(starts.min()) < 0 or int(starts.max()) + length > self._length):
            raise IndexError(f"windows outside a stream of {self._length} tokens")
        rng = torch.searchsorted(self.offsets, starts, right=True) - 1
        inside = starts + length <= self.offsets[rng + 1]
        shard, local = self._locate(starts)
        out = torch.empty(len(starts), length, dtype=torch.int64)
        for i, (s, at, fits) in enumerate(zip(shard.tolist(), local.tolist(), inside.tolist(),
                                              strict=True)):
            tokens = self.shards[s].tokens
            if fits and at + length <= len(tokens):
                out[i].copy_(tokens[at:at + length])
            else:
                out[i] = self.take(starts[i] + torch.arange(length))
        return out

    def read(self, start: int, stop: int, out: torch.Tensor | None = None,
             scratch: bytearray | None = None) -> torch.Tensor:
        """Tokens [start, stop) as int64, by sequential file reads (for scans and tests), into
        `out` when given (see MappedShard.read)."""
        out = torch.empty(stop - start, dtype=torch.int64) if out is None else out[:stop - start]
        done = 0
        while start + done < stop:
            at = start + done
            rng = int(torch.searchsorted(self.offsets, torch.tensor(at), right=True)) - 1
            joint = int(self.range_starts[rng]) + at - int(self.offsets[rng])
            s = int(torch.searchsorted(self.shard_starts, torch.tensor(joint), right=True)) - 1
            local = joint - int(self.shard_starts[s])
            # up to the end of this range, of this shard and of the request
            count = min(stop, int(self.offsets[rng + 1])) - at
            count = min(count, len(self.shards[s]) - local)
            self.shards[s].read(local, local + count, out[done:done + count], scratch)
            done += count
        return out

    def chunks(self, size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset, int64 tokens) pieces of at most `size` (SCAN_TOKENS) tokens, in order. Each
        piece is a view of one reused buffer, valid until the next: use it, don't keep it."""
        size = min(size or SCAN_TOKENS, max(self._length, 1))
        out = torch.empty(size, dtype=torch.int64)
        scratch = bytearray(size * 4)  # room for uint32
        for start in range(0, self._length, size):
            yield start, self.read(start, min(start + size, self._length), out, scratch)

    def tensor(self) -> torch.Tensor:
        """The whole stream as one int64 tensor: 8 bytes a token, for small data and tests."""
        return self.read(0, self._length)


Stream = torch.Tensor | TokenStream


@dataclass
class TokenSplits:
    """Train and validation streams: 1-D int64 tensors (text, built in memory) or TokenStreams
    (pre-tokenized shards, mapped); both give len(), stream[positions] and a fingerprint."""

    train: Stream
    val: Stream
    eos_id: int
    skipped: list[list[str]] = field(default_factory=list)  # [file, reason], on_bad_file=skip


def split_documents(docs: list[Document], tokenize, eos_id: int, val_fraction: float,
                    window: int, batch_size: int = 1, spec: str = "") -> TokenSplits:
    """Tokenize and split; the validation split always gets at least one window of tokens.
    `window` is seq_len; a ConfigError says so when the data is shorter than one batch."""
    tokens = [tokenize(d.text) for d in docs]
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    ids = torch.cat(tokens) if tokens else torch.empty(0, dtype=torch.int64)
    return split_tokens([d.name for d in docs], ids, offsets, eos_id, val_fraction, window,
                        batch_size, spec)


def split_tokens(names: list[str], ids: torch.Tensor, offsets: torch.Tensor, eos_id: int,
                 val_fraction: float, window: int, batch_size: int = 1,
                 spec: str = "") -> TokenSplits:
    """split_documents of documents already tokenized and laid end to end (document i, named
    names[i], is ids[offsets[i]:offsets[i + 1]]; kdengine.data.text_cache keeps them across
    runs): the same streams, packed without a tensor per document (millions of them cost
    seconds)."""
    lengths = offsets.diff()
    held, _, _ = plan_split(list(zip(names, lengths.tolist(), strict=True)), val_fraction,
                            window)
    if held is None:
        train, val = _tail_split(pack_flat(ids, lengths, eos_id), val_fraction, window)
    else:
        val_docs = torch.tensor(held, dtype=torch.bool)
        train = pack_flat(ids, lengths, eos_id, ~val_docs)
        val = pack_flat(ids, lengths, eos_id, val_docs)
    _check_sizes(train, val, window, batch_size, spec)
    return TokenSplits(train, val, eos_id)


def held_out(names: list[str], val_fraction: float) -> list[bool]:
    """Which documents the validation split holds out whole, by name: is_validation, or the
    last document when a small corpus has none."""
    held = [is_validation(name, val_fraction) for name in names]
    if not any(held) and len(names) > 1:  # tiny corpora: hold out the last document
        held[-1] = True
    return held


def plan_split(docs: list[tuple[str, int]], val_fraction: float,
               window: int) -> tuple[list[bool] | None, int, int]:
    """How split_documents splits documents of these (name, token count)s: which are held out
    whole for validation (None: the stream's tail is held out instead), and the train and
    validation lengths, end-of-document tokens included. Sizes only, so the run's preflight
    applies the same rule to counts without building the streams."""
    held = held_out([name for name, _ in docs], val_fraction)
    val = sum(n + 1 for (_, n), h in zip(docs, held, strict=True) if h)
    train = sum(n + 1 for (_, n), h in zip(docs, held, strict=True) if not h)
    if val < window + 1 or all(held):
        # too few documents to hold some out whole: hold out the tail of the stream instead
        cut, total = _tail_cut(train + val, val_fraction, window)
        return None, cut, total - cut
    return held, train, val


def stream_fingerprint(stream: Stream) -> str:
    """crc32 and length of a token stream: a resume on other data is caught, not trained on.

    A position-weighted sum in wrapping int64 arithmetic (torch only, no numpy,
    order-sensitive), taken in chunks: wrapping sums are sums modulo 2**64, so the chunked total
    equals the one-pass sum of the whole stream and the fingerprint of checkpoints written before
    streams were chunked."""
    pieces = (stream.chunks() if isinstance(stream, TokenStream) else
              ((start, stream[start:start + SCAN_TOKENS])
               for start in range(0, len(stream), SCAN_TOKENS)))
    size = min(SCAN_TOKENS, max(len(stream), 1))
    weights, data = torch.empty(size, dtype=torch.int64), torch.empty(size, dtype=torch.int64)
    total = 0
    for start, piece in pieces:
        # (piece + 1) * ((start + i) * 2654435761 + 97), wrapping, in two reused buffers
        w = torch.arange(start, start + len(piece), dtype=torch.int64, out=weights[:len(piece)])
        d = data[:len(piece)].copy_(piece).add_(1)
        total += int(w.mul_(2654435761).add_(97).mul_(d).sum())
    return f"{len(stream)}:{total & 0xFFFFFFFFFFFF:012x}"


def refuse_changed_position(saved: dict[str, object], now: dict[str, object]) -> None:
    """Refuse to resume on data or sampling that differ from the checkpoint's (a sampler's
    `position` then and now)."""
    changed = [k for k in now if saved.get(k) != now[k]]
    if changed:
        raise ConfigError("data", f"differs from the checkpoint's ({', '.join(changed)}: "
                          f"saved {[saved.get(k) for k in changed]}, now "
                          f"{[now[k] for k in changed]}); resume on the same data")


class BatchSampler:
    """Random windows of `seq_len + 1` tokens from a stream; step k's batch depends on (seed, k)
    only. Returns (input_ids, labels) [batch, seq_len], labels shifted by one."""

    def __init__(self, stream: Stream, batch_size: int, seq_len: int, seed: int) -> None:
        self.stream, self.batch_size, self.seq_len, self.seed = stream, batch_size, seq_len, seed
        self.max_start = len(stream) - (seq_len + 1)
        self._fingerprint: str | None = None

    def position(self, step: int) -> dict[str, object]:
        """The data position after `step` optimizer steps, for a checkpoint."""
        if self._fingerprint is None:
            self._fingerprint = stream_fingerprint(self.stream)
        return {"next_step": step + 1, "seed": self.seed, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "stream": self._fingerprint}

    def check_position(self, saved: dict[str, object], step: int) -> None:
        refuse_changed_position(saved, self.position(step))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**63))
        starts = torch.randint(0, self.max_start + 1, (self.batch_size,), generator=gen)
        return self._windows(starts)

    def _windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.stream, TokenStream):
            rows = self.stream.windows(starts, self.seq_len + 1)
        else:
            rows = self.stream[starts.unsqueeze(1) + torch.arange(self.seq_len + 1)]
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def fixed_batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`count` evenly spread, always identical batches: the held-out evaluation set."""
        n = count * self.batch_size
        starts = torch.linspace(0, self.max_start, n).long()
        return [self._windows(starts[i * self.batch_size:(i + 1) * self.batch_size])
                for i in range(count)]


__all__ = ["IGNORE_INDEX", "BatchSampler", "ByteTokenizer", "Document", "MappedShard",
           "TokenShards", "TokenSplits", "TokenStream", "check_split_sizes", "enough_tokens",
           "held_out", "is_token_shards", "iter_documents", "plan_split", "read_documents",
           "read_token_shards", "shard_files", "split_documents", "split_token_shards",
           "stream_fingerprint"]
