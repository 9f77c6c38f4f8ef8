"""The run's event stream: versioned JSON lines in RUN_DIR/events.jsonl.

The engine appends with `EventWriter`; the dashboard, the verdict and the remote watcher read with
`EventReader`, which takes bytes in any chunking (a local file, an SSH channel), keeps a torn last
line until its newline arrives, skips lines that are not events, and drops sequence numbers it
has already seen, so a reconnect that re-reads a few bytes never shows an event twice.
docs/events.md is the protocol's description. Imports no torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
# the keys every event carries (docs/events.md, "Every event"); the rest is its payload
ENVELOPE = ("v", "seq", "t", "type")
EVENTS_FILE = "events.jsonl"
LOG_FILE = "launch.log"

# The types this version writes. Readers pass others through; consumers ignore what they don't know.
RUN_STARTED = "run_started"
STAGE = "stage"
STEP = "step"
EVAL = "eval"
CHECKPOINT = "checkpoint"
LOG = "log"
VERDICT = "verdict"
RUN_FINISHED = "run_finished"
SAMPLE = "sample"  # a completion an on-policy run sampled, and what the teacher thinks of it
KNOWN_TYPES = frozenset(
    {RUN_STARTED, STAGE, STEP, EVAL, CHECKPOINT, LOG, VERDICT, RUN_FINISHED, SAMPLE}
)


def run_id_of(run_dir: str | Path) -> str:
    """The id a run goes by: its directory's name, whichever flag chose the directory
    (--run-name in the runs dir, --run-dir anywhere, --resume). It is what `kdtui runs` lists
    and `kdtui watch` / `kdtui resume` take, so run_started's run_id is this, not --run-name
    (which stays in the config). Absolute first: `--run-dir .` names the folder, not ''."""
    return Path(os.path.abspath(Path(run_dir).expanduser())).name


class EventWriter:
    """Appends events to RUN_DIR/events.jsonl, one flushed line each.

    On resume the sequence continues from the last event already in the file.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        last = last_event(self.path)
        self._seq = (last.get("seq", -1) + 1) if last else 0
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the run
        if self._file.tell() > 0 and not _ends_with_newline(self.path):
            # a crash tore the last line: end it, or the next event would be glued onto it
            self._file.write("\n")

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        event = {"v": PROTOCOL_VERSION, "seq": self._seq, "t": round(time.time(), 3),
                 "type": type_, **payload}
        line = json.dumps(event, allow_nan=True, separators=(",", ":"), default=_jsonable)
        # One write() per line keeps a concurrent reader from seeing half an event, but for a torn
        # tail after a crash, which the reader tolerates.
        self._file.write(line + "\n")
        self._file.flush()
        self._seq += 1
        return event

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:  # closed even when a full disk fails the flush: no retry at exit
                self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # a 0-d tensor or numpy scalar
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


@dataclass
class EventReader:
    """Incremental, tolerant parser of the event stream.

    `feed(chunk)` returns the complete new events. `offset` is the byte offset just past the last
    complete line consumed: a follower resumes reading the file there after a reconnect.
    """

    offset: int = 0
    last_seq: int = -1
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (expected seq, got seq)
    bad_lines: int = 0
    duplicates: int = 0
    _pending: bytes = b""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        events: list[dict[str, Any]] = []
        for raw in lines:
            self.offset += len(raw) + 1
            event = self._parse(raw)
            if event is not None:
                events.append(event)
        return events

    def _parse(self, raw: bytes) -> dict[str, Any] | None:
        if not raw.strip():
            return None
        try:
            event = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.bad_lines += 1  # a line torn by a crash, later appended past
            return None
        if not isinstance(event, dict) or "type" not in event:
            self.bad_lines += 1
            return None
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= self.last_seq:
                self.duplicates += 1
                return None
            if seq != self.last_seq + 1:
                self.gaps.append((self.last_seq + 1, seq))
            self.last_seq = seq
        return event


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All complete events of a file (a missing file has none)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return EventReader().feed(data)


def iter_run_events(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    yield from read_events(Path(run_dir) / EVENTS_FILE)


def last_event(path: str | Path) -> dict[str, Any] | None:
    """The last complete event of a file, reading only its tail."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    with open(path, "rb") as fh:
        back = min(size, 1 << 16)
        while True:
            fh.seek(size - back)
            tail = fh.read(back)
            lines = tail.split(b"\n")
            # the first piece may be cut in half unless we read from byte 0
            candidates = lines if back == size else lines[1:]
            for raw in reversed(candidates):
                try:
                    event = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(event, dict) and "type" in event:
                    return event
            if back == size:
                return None
            back = min(size, back * 4)
