"""Token data: read documents, tokenize, hold out a validation split, and sample batches.

Sources: a text file, a .jsonl file (one `text` field a line), a directory of them, or a
directory of pre-tokenized uint16/uint32 shards (`tokens.json` + `*.bin`, see docs/data.md).
Documents are split into train and validation by a hash of their name, so the split is the same
on every machine and run. Each split is one packed token stream with an end-of-document token
after each document. The batch of step k is a pure function of (seed, k): the data position a
checkpoint saves is the step, plus a fingerprint of the stream so a resume on changed data fails.
"""

from __future__ import annotations

import json
import sys
import sysconfig
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from kdengine.config import DEMO_DATA, ConfigError
from kdengine.losses import IGNORE_INDEX

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")
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


def read_documents(spec: str, text_field: str = "text") -> list[Document]:
    """Documents of a text file, a .jsonl file (one `text_field` per line) or a directory."""
    if spec == DEMO_DATA:
        return demo_documents()
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError("data", f"{spec} does not exist (give a file, a directory or "
                          f"{DEMO_DATA})")
    if is_token_shards(path):
        raise ConfigError("data", f"{spec} holds pre-tokenized shards: read it with "
                          "read_token_shards")
    files = sorted(p for p in path.rglob("*") if p.is_file() and
                   (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise ConfigError("data", f"{spec} holds no {', '.join(TEXT_SUFFIXES)} or .jsonl files "
                          f"(or, for pre-tokenized data, a {SHARD_META} beside *.bin shards)")
    docs: list[Document] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("data", f"cannot read {file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("data", f"cannot read {file}: not UTF-8 text (byte {exc.start}); "
                              "give UTF-8 text, or pre-tokenized shards") from None
        if file.suffix == ".jsonl":
            docs.extend(_jsonl_documents(file, text, text_field))
        elif text.strip():
            docs.append(Document(str(file.relative_to(path) if path.is_dir() else file.name), text))
    if not docs:
        raise ConfigError("data", f"{spec} is empty: no text to train on")
    return docs


def is_token_shards(path: Path) -> bool:
    return path.is_dir() and (path / SHARD_META).is_file()


@dataclass
class TokenShards:
    """A pre-tokenized corpus: one int64 stream per shard, each document ended by `eos_id`."""

    streams: dict[str, torch.Tensor]
    eos_id: int


def read_token_shards(spec: str) -> TokenShards:
    """Read `tokens.json` ({"format": "kdengine-tokens", "dtype": "uint16"|"uint32",
    "eos_id": N}) and every `*.bin` beside it: raw little-endian token ids."""
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
    files = sorted(path.glob("*.bin"))
    if not files:
        raise ConfigError("data", f"{spec} has {SHARD_META} but no *.bin shards")
    streams: dict[str, torch.Tensor] = {}
    for file in files:
        size = file.stat().st_size
        if size % width:
            raise ConfigError("data", f"{file} has {size} bytes, not a whole number of "
                              f"{meta['dtype']} tokens (truncated or the wrong dtype?)")
        if size == 0:
            continue
        try:
            raw = torch.from_file(str(file), shared=False, size=size // width, dtype=dtype)
        except (OSError, RuntimeError) as exc:
            raise ConfigError("data", f"cannot read {file}: {exc}") from None
        stream = raw.to(torch.int64)
        if stream[-1].item() != eos_id:  # the last document ends at the end of the shard
            stream = torch.cat([stream, torch.tensor([eos_id])])
        streams[file.name] = stream
    if not streams:
        raise ConfigError("data", f"{spec} is empty: every *.bin shard has 0 tokens")
    return TokenShards(streams, eos_id)


def _jsonl_documents(file: Path, text: str, text_field: str) -> Iterator[Document]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError("data", f"{file}:{number} is not JSON: {exc.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise ConfigError("data", f"{file}:{number} has no text field {text_field!r}")
        if record[text_field].strip():
            yield Document(f"{file.name}:{number}", record[text_field])


def is_validation(name: str, val_fraction: float) -> bool:
    return zlib.crc32(name.encode()) % 10_000 < val_fraction * 10_000


def split_token_shards(shards: TokenShards, val_fraction: float, window: int,
                       batch_size: int = 1, vocab_size: int | None = None) -> TokenSplits:
    """Hold out whole documents (named `shard.bin:i`, i-th document of the shard) by the same
    name hash as text documents; keep the rest as the packed train stream."""
    train_parts, val_parts, docs = [], [], []
    for name, stream in shards.streams.items():
        if vocab_size is not None and (bad := int(stream.max())) >= vocab_size:
            raise ConfigError("data", f"{name} holds token id {bad}, beyond the model's vocab "
                              f"({vocab_size}): tokenized with another tokenizer?")
        ends = (stream == shards.eos_id).nonzero().flatten()
        held = torch.tensor([is_validation(f"{name}:{i}", val_fraction)
                             for i in range(len(ends))], dtype=torch.bool)
        # document index of every token: the eos closes its own document
        doc_of = torch.zeros(len(stream), dtype=torch.int64)
        doc_of[ends[:-1] + 1] = 1
        doc_of = doc_of.cumsum(0)
        mask = held[doc_of]
        train_parts.append(stream[~mask])
        val_parts.append(stream[mask])
        docs.append(len(ends))
    train, val = torch.cat(train_parts), torch.cat(val_parts)
    if len(val) < window + 1:  # few documents: hold out the tail instead
        stream = torch.cat(list(shards.streams.values()))
        train, val = _tail_split(stream, val_fraction, window)
    _check_sizes(train, val, window, batch_size)
    return TokenSplits(train, val, shards.eos_id)


def _tail_split(stream: torch.Tensor, val_fraction: float,
                window: int) -> tuple[torch.Tensor, torch.Tensor]:
    cut = int(len(stream) * (1 - max(val_fraction, 0.05)))
    cut = min(cut, len(stream) - (window + 1))
    return stream[:max(cut, 0)], stream[max(cut, 0):]


def _check_sizes(train: torch.Tensor, val: torch.Tensor, window: int, batch_size: int) -> None:
    """One training batch of distinct windows and one validation sequence, at least."""
    need = batch_size * (window - 1) + 2  # batch_size windows of window tokens, hop window-1
    if len(train) < need or len(val) < window + 1:
        raise ConfigError("data", f"has {len(train) + len(val)} tokens ({len(train)} train, "
                          f"{len(val)} validation), shorter than one batch: batch_size x "
                          f"(seq_len + 1) needs about {need} train tokens and one "
                          f"validation sequence {window + 1} (give more data, or a smaller "
                          "seq_len or batch_size)")


def pack(token_lists: Iterable[torch.Tensor], eos_id: int) -> torch.Tensor:
    """One stream: each document followed by the end-of-document token."""
    parts: list[torch.Tensor] = []
    eos = torch.tensor([eos_id], dtype=torch.int64)
    for tokens in token_lists:
        parts += [tokens, eos]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


@dataclass
class TokenSplits:
    train: torch.Tensor  # 1-D int64 stream
    val: torch.Tensor
    eos_id: int


def split_documents(docs: list[Document], tokenize, eos_id: int, val_fraction: float,
                    window: int, batch_size: int = 1) -> TokenSplits:
    """Tokenize and split; the validation split always gets at least one window of tokens.
    `window` is seq_len; a ConfigError says so when the data is shorter than one batch."""
    held = [d for d in docs if is_validation(d.name, val_fraction)]
    kept = [d for d in docs if not is_validation(d.name, val_fraction)]
    if not held and len(kept) > 1:  # tiny corpora: hold out the last document
        held, kept = kept[-1:], kept[:-1]
    train = pack((tokenize(d.text) for d in kept), eos_id)
    val = pack((tokenize(d.text) for d in held), eos_id)
    if len(val) < window + 1 or len(kept) == 0:
        # too few documents to hold some out whole: hold out the tail of the stream instead
        stream = pack((tokenize(d.text) for d in docs), eos_id)
        train, val = _tail_split(stream, val_fraction, window)
    _check_sizes(train, val, window, batch_size)
    return TokenSplits(train, val, eos_id)


def stream_fingerprint(stream: torch.Tensor) -> str:
    """crc32 and length of a token stream: a resume on other data is caught, not trained on."""
    data = stream.to(torch.int64)
    # position-weighted sum in wrapping int64 arithmetic: torch only, no numpy, order-sensitive
    weights = torch.arange(len(data), dtype=torch.int64) * 2654435761 + 97
    return f"{len(data)}:{int(((data + 1) * weights).sum()) & 0xFFFFFFFFFFFF:012x}"


class BatchSampler:
    """Random windows of `seq_len + 1` tokens from a stream; step k's batch depends on (seed, k)
    only. Returns (input_ids, labels) [batch, seq_len], labels shifted by one."""

    def __init__(self, stream: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> None:
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
        """Refuse to resume on data or sampling that differ from the checkpoint's."""
        now = self.position(step)
        changed = [k for k in now if saved.get(k) != now[k]]
        if changed:
            raise ConfigError("data", f"differs from the checkpoint's ({', '.join(changed)}: "
                              f"saved {[saved.get(k) for k in changed]}, now "
                              f"{[now[k] for k in changed]}); resume on the same data")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**63))
        starts = torch.randint(0, self.max_start + 1, (self.batch_size,), generator=gen)
        return self._windows(starts)

    def _windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts.unsqueeze(1) + torch.arange(self.seq_len + 1)
        rows = self.stream[idx]
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def fixed_batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`count` evenly spread, always identical batches: the held-out evaluation set."""
        n = count * self.batch_size
        starts = torch.linspace(0, self.max_start, n).long()
        return [self._windows(starts[i * self.batch_size:(i + 1) * self.batch_size])
                for i in range(count)]


__all__ = ["IGNORE_INDEX", "BatchSampler", "ByteTokenizer", "Document", "TokenShards",
           "TokenSplits", "is_token_shards", "read_documents", "read_token_shards",
           "split_documents", "split_token_shards", "stream_fingerprint"]
