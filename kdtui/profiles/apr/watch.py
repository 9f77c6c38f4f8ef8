"""Follow an apr run: its launch.log, turned into the events.jsonl apr never writes.

`AprEventsSource` wraps any RunSource (a local directory, SFTP with reconnect). It passes
`launch.log` through and serves `events.jsonl` as a byte stream it writes itself: every complete
log line goes through AprLogParser, every event it yields becomes one JSON line. So whatever
follows kdengine runs (RunFollower, the run screen, headless watch) follows an apr run unchanged,
by the same byte offsets. When the log has been quiet for `alive_every` seconds it asks
`status()` whether apr still lives; if not, the run is ended from what the log showed
(AprLogParser.finish), so a killed apr still gets its run_finished.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from kdengine.events import EVENTS_FILE, LOG, LOG_FILE, RUN_FINISHED
from kdtui.profiles.apr.parser import AprLogParser
from kdtui.watch import READ_LIMIT, LineReader, RunFollower, RunSource

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
ALIVE_CHECK_EVERY = 5.0  # seconds without a new line before asking whether apr still lives

StatusFn = Callable[[], Awaitable[dict[str, Any]]]


class AprEventsSource:
    """A RunSource whose events.jsonl is parsed from the wrapped source's launch.log."""

    def __init__(self, inner: RunSource, *, epochs: int | None = None,
                 status: StatusFn | None = None,
                 alive_every: float = ALIVE_CHECK_EVERY) -> None:
        self.inner = inner
        self.label = inner.label
        self.parser = AprLogParser(epochs=epochs)
        self.status = status
        self.alive_every = alive_every
        self._log = LineReader()  # our own pass over launch.log, apart from the follower's
        self._events = bytearray()  # the synthesized events.jsonl: append-only, like a file
        self._quiet_since: float | None = None
        self._lock = asyncio.Lock()
        # the line for a run directory gone from the host (removed, /tmp cleaned at a reboot):
        # nothing was killed and nothing ended, so no run_finished is made up for it
        self.missing: str | None = None

    async def read(self, name: str, offset: int, limit: int) -> bytes:
        if name == EVENTS_FILE:
            async with self._lock:
                await self._pump()
            return bytes(self._events[offset:offset + limit])
        return await self.inner.read(name, offset, limit)

    async def close(self) -> None:
        await self.inner.close()

    async def try_connect(self) -> str | None:
        """One attempt at the host (SSH sources): None when it answers, else why not; a watch
        of an ended run shows its recorded outcome instead of waiting for the host."""
        try_connect = getattr(self.inner, "try_connect", None)
        return await try_connect() if try_connect is not None else None

    def _append(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self._events += (json.dumps(event, allow_nan=True, separators=(",", ":"))
                             + "\n").encode()

    async def _pump(self) -> None:
        lines = await self._read_lines()
        if lines:
            self._quiet_since = None
            return
        self._append(self.parser.flush())  # a panic's block is complete once the log pauses
        if self.parser.finished is not None or self.status is None or self.missing:
            return
        now = time.monotonic()
        self._quiet_since = self._quiet_since or now
        if now - self._quiet_since < self.alive_every:
            return
        self._quiet_since = now
        state = await self.status()
        if state.get("alive"):
            return
        if state.get("run_dir_exists") is False:
            where = getattr(self.inner, "run_dir", None) or "the run directory"
            self.missing = (f"the run directory {where} does not exist on {self.label} "
                            "(removed, or cleaned with the box's /tmp at a reboot): nothing to "
                            "follow")
            self._append([self.parser._event("log", level="error", kind="missing",
                                             message=self.missing)])
            return
        await self._read_lines()  # what it wrote just before it went
        if self.parser.finished is None and state.get("cancelled"):
            self._append(self.parser.finish(state.get("exit_code"), cancelled=True))
        elif self.parser.finished is None:
            code = state.get("exit_code")
            why = (f"apr exited (code {code}) without its completion line" if code is not None
                   else "apr is gone without an exit code (killed, or the host rebooted)")
            self._append(self.parser.finish(code, why))

    async def _read_lines(self) -> list[str]:
        out: list[str] = []
        while True:
            chunk = await self.inner.read(LOG_FILE, self._log.offset + len(self._log._pending),
                                          READ_LIMIT)
            if not chunk:
                return out
            lines = self._log.feed(chunk)
            for line in lines:
                self._append(self.parser.feed(line))
            out += lines
            if len(chunk) < READ_LIMIT:
                return out

    def finish(self, exit_code: int | None, why: str = "") -> list[dict[str, Any]]:
        """End the run now (apr is known to be gone); the events also go into the stream."""
        events = self.parser.finish(exit_code, why)
        self._append(events)
        return events


class AprRunFollower(RunFollower):
    """RunFollower over AprEventsSource: launch.log lines in, kdengine events out."""

    def __init__(self, source: RunSource, *, epochs: int | None = None,
                 status: StatusFn | None = None,
                 alive_every: float = ALIVE_CHECK_EVERY) -> None:
        self.apr = source if isinstance(source, AprEventsSource) else AprEventsSource(
            source, epochs=epochs, status=status, alive_every=alive_every)
        super().__init__(self.apr)

    @property
    def parser(self) -> AprLogParser:
        return self.apr.parser

    def finish(self, exit_code: int | None, why: str = "") -> list[dict[str, Any]]:
        """apr is gone: end the run from what the log showed (see AprLogParser.finish). The
        events are returned, and also delivered by the next poll's events.jsonl read, where the
        reader's seq check drops them as already seen when they were returned here first."""
        events = self.apr.finish(exit_code, why)
        if events:
            self.events.last_seq = max(self.events.last_seq, events[-1]["seq"])
        return events


@dataclass
class AprWatchResult:
    code: int  # 0 pass, 1 fail, 2 error or inconclusive
    verdict: dict[str, Any] | None
    finished: dict[str, Any] | None
    events: list[dict[str, Any]]
    log_lines: int


def verdict_line(verdict: dict[str, Any] | None) -> str:
    if verdict is None:
        return "verdict F-DISTILL-SMOKE-001 INCONCLUSIVE: no verdict"
    head = f"verdict {verdict.get('id')} {str(verdict.get('status')).upper()}"
    initial, final = verdict.get("initial_loss"), verdict.get("final_loss")
    if isinstance(initial, (int, float)) and isinstance(final, (int, float)):
        head += f": training-batch loss {initial:.4f} -> {final:.4f}"
        if verdict.get("final_step") is not None:
            head += f" (step {verdict['final_step']})"
    return f"{head}. {verdict.get('reason')}"


async def follow_apr_to_verdict(handle: Any, *, out: TextIO,
                                alive_every: float = ALIVE_CHECK_EVERY,
                                interval: float = 0.3) -> AprWatchResult:
    """Print the run's log lines until it ends, then the verdict. `handle` is an AprRunHandle
    (anything with `follower(alive_every=...)` giving an AprRunFollower)."""
    follower: AprRunFollower = handle.follower(alive_every=alive_every)
    events: list[dict[str, Any]] = []
    finished: dict[str, Any] | None = None
    printed = 0
    while finished is None:
        if follower.apr.missing:  # said as it is; not an end to record over the manifest's
            print(f"ERROR: {follower.apr.missing}", file=out, flush=True)
            return AprWatchResult(EXIT_ERROR, None, None, events, printed)
        update = await follower.poll()
        printed += len(update.log_lines)
        for line in update.log_lines:
            print(line, file=out, flush=True)
        for event in update.events:
            events.append(event)
            if event.get("type") == LOG and event.get("level") == "error" and \
                    event.get("kind") != "missing":  # said once, below
                print(f"ERROR [{event.get('kind')}] {event.get('message')}", file=out,
                      flush=True)
            if event.get("type") == RUN_FINISHED and finished is None:
                finished = event
                if event.get("status") != "completed" and event.get("error") and \
                        event.get("exit_code") != 101:  # a panic was reported above
                    print(f"ERROR: {event['error']}; see the log above", file=out, flush=True)
        if not update:
            await asyncio.sleep(interval)
    while (update := await follower.poll()):  # lines after the end (the output path, say)
        printed += len(update.log_lines)
        for line in update.log_lines:
            print(line, file=out, flush=True)
        events += update.events

    verdict = follower.parser.verdict
    print(verdict_line(verdict), file=out, flush=True)
    status = (verdict or {}).get("status")
    code = {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(str(status), EXIT_ERROR)
    return AprWatchResult(code, verdict, finished, events, printed)
