"""Token data: read documents, tokenize, hold out a validation split, and sample batches.

Documents are split into train and validation by a hash of their name, so the split is the same
on every machine and run. Each split is one packed token stream with an end-of-document token
between documents. The batch of step k is a pure function of (seed, k): resuming at step k needs
no saved data position beyond the step itself.
"""

from __future__ import annotations

import json
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
    files = sorted(p for p in path.rglob("*") if p.is_file() and
                   (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise ConfigError("data", f"{spec} holds no .txt, .md or .jsonl files")
    docs: list[Document] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("data", f"cannot read {file}: {exc}") from None
        if file.suffix == ".jsonl":
            docs.extend(_jsonl_documents(file, text, text_field))
        elif text.strip():
            docs.append(Document(str(file.relative_to(path) if path.is_dir() else file.name), text))
    if not docs:
        raise ConfigError("data", f"{spec} is empty: no text to train on")
    return docs


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
                    window: int) -> TokenSplits:
    """Tokenize and split; the validation split always gets at least one window of tokens."""
    held = [d for d in docs if is_validation(d.name, val_fraction)]
    kept = [d for d in docs if not is_validation(d.name, val_fraction)]
    if not held and len(kept) > 1:  # tiny corpora: hold out the last document
        held, kept = kept[-1:], kept[:-1]
    train = pack((tokenize(d.text) for d in kept), eos_id)
    val = pack((tokenize(d.text) for d in held), eos_id)
    if len(val) < window + 1 or len(kept) == 0:
        # too few documents to hold some out whole: hold out the tail of the stream instead
        stream = pack((tokenize(d.text) for d in docs), eos_id)
        cut = int(len(stream) * (1 - max(val_fraction, 0.05)))
        cut = min(cut, len(stream) - (window + 1))
        train, val = stream[:cut], stream[cut:]
    if len(train) < window + 1 or len(val) < window + 1:
        raise ConfigError("data", f"has {len(train) + len(val)} tokens, too few for one training "
                          f"and one validation sequence of seq_len + 1 = {window + 1} tokens "
                          "(give more text or a smaller seq_len)")
    return TokenSplits(train, val, eos_id)


class BatchSampler:
    """Random windows of `seq_len + 1` tokens from a stream; step k's batch depends on (seed, k)
    only. Returns (input_ids, labels) [batch, seq_len], labels shifted by one."""

    def __init__(self, stream: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> None:
        self.stream, self.batch_size, self.seq_len, self.seed = stream, batch_size, seq_len, seed
        self.max_start = len(stream) - (seq_len + 1)

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


__all__ = ["IGNORE_INDEX", "BatchSampler", "ByteTokenizer", "Document", "TokenSplits",
           "read_documents", "split_documents"]
