"""Follow a run's two files, events.jsonl and launch.log, from byte offsets.

The same follower serves local runs and remote ones: only the `RunSource` differs (a local
directory here, an SSH channel in kdtui.remote). Offsets only advance past complete lines, so
after a dropped connection the follower resumes exactly where it was: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kdengine.events import EVENTS_FILE, LOG_FILE, EventReader

READ_LIMIT = 4 << 20  # bytes per file per poll: a huge backlog arrives in slices, UI stays live


class RunSource(Protocol):
    """Where a run's files live. `read` returns up to `limit` bytes from `offset` (b"" when there
    is nothing new or the file does not exist yet)."""

    label: str

    async def read(self, name: str, offset: int, limit: int) -> bytes: ...

    async def close(self) -> None:
        """Let go of what reading holds (a connection); reading again opens it anew."""


@dataclass
class LocalRunSource:
    run_dir: Path
    label: str = "local"

    async def read(self, name: str, offset: int, limit: int) -> bytes:
        return await asyncio.to_thread(self._read, name, offset, limit)

    def _read(self, name: str, offset: int, limit: int) -> bytes:
        try:
            with open(Path(self.run_dir) / name, "rb") as fh:
                fh.seek(offset)
                return fh.read(limit)
        except FileNotFoundError:
            return b""

    async def close(self) -> None:
        """Nothing to let go: each read opens the file anew."""


@dataclass
class LineReader:
    """Bytes in any chunking -> complete text lines; `offset` is past the last complete line."""

    offset: int = 0
    _pending: bytes = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        self.offset += sum(len(line) + 1 for line in lines)
        # a carriage return rewrites a terminal line (progress bars): keep what it ended as
        return [line.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1]
                for line in lines]


@dataclass
class RunUpdate:
    events: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.log_lines)


class RunFollower:
    def __init__(self, source: RunSource, events_offset: int = 0, log_offset: int = 0) -> None:
        self.source = source
        self.events = EventReader(offset=events_offset)
        self.log = LineReader(offset=log_offset)

    @property
    def offsets(self) -> tuple[int, int]:
        return self.events.offset, self.log.offset

    async def poll(self) -> RunUpdate:
        """Everything new since the last poll (at most READ_LIMIT bytes of each file)."""
        ev_chunk = await self.source.read(EVENTS_FILE, self._read_offset(self.events), READ_LIMIT)
        log_chunk = await self.source.read(LOG_FILE, self._read_offset(self.log), READ_LIMIT)
        return RunUpdate(self.events.feed(ev_chunk), self.log.feed(log_chunk))

    @staticmethod
    def _read_offset(reader: EventReader | LineReader) -> int:
        # reading resumes after the bytes already buffered as a partial line
        return reader.offset + len(reader._pending)

    def rewind_partial(self) -> None:
        """Forget buffered partial lines (after a reconnect they are read again whole)."""
        self.events._pending = b""
        self.log._pending = b""

    async def follow(self, interval: float = 0.2) -> AsyncIterator[RunUpdate]:
        """Poll forever; yields only non-empty updates, and keeps reading while a backlog lasts."""
        while True:
            update = await self.poll()
            if update:
                yield update
                continue
            await asyncio.sleep(interval)


def run_finished(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e.get("type") == "run_finished"), None)
