"""Follow an apr run: its launch.log through any RunSource, turned into kdengine events.

`AprRunFollower` has RunFollower's interface (poll, follow, offsets, rewind_partial), so the run
screen and headless mode can follow an apr run as they follow a kdengine one; the events come
from AprLogParser instead of events.jsonl. `follow_apr_to_verdict` is the headless watch: the log
lines as they come, errors (panics, CUDA) called out, then the training-batch verdict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO

from kdengine.events import LOG, RUN_FINISHED
from kdtui.profiles.apr.parser import AprLogParser
from kdtui.watch import RunFollower, RunSource, RunUpdate

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
ALIVE_CHECK_EVERY = 5.0  # seconds without a new line before asking whether apr still lives


class AprRunFollower:
    """launch.log by byte offset -> RunUpdates whose events are parsed from the log lines."""

    def __init__(self, source: RunSource, *, epochs: int | None = None) -> None:
        self.source = source
        # events.jsonl is followed too: apr writes none, so it stays empty
        self._inner = RunFollower(source)
        self.parser = AprLogParser(epochs=epochs)

    @property
    def offsets(self) -> tuple[int, int]:
        return self._inner.offsets

    def rewind_partial(self) -> None:
        self._inner.rewind_partial()

    async def poll(self) -> RunUpdate:
        update = await self._inner.poll()
        events = list(update.events)
        for line in update.log_lines:
            events += self.parser.feed(line)
        if not update.log_lines:
            events += self.parser.flush()  # a panic's block is complete once the log pauses
        return RunUpdate(events, update.log_lines)

    def finish(self, exit_code: int | None, why: str = "") -> list[dict[str, Any]]:
        """apr is gone: end the run from what the log showed (see AprLogParser.finish)."""
        return self.parser.finish(exit_code, why)

    async def follow(self, interval: float = 0.2) -> AsyncIterator[RunUpdate]:
        while True:
            update = await self.poll()
            if update:
                yield update
                continue
            await asyncio.sleep(interval)


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
    """Print the run's log lines until it ends, then the verdict; `handle` is an AprRunHandle
    (or anything with `follower()` and an async `status()` giving alive and exit_code)."""
    follower: AprRunFollower = handle.follower()
    events: list[dict[str, Any]] = []
    finished: dict[str, Any] | None = None
    printed = 0
    last_news = time.monotonic()

    def take(update_events: list[dict[str, Any]], lines: list[str]) -> None:
        nonlocal finished, printed
        printed += len(lines)
        for line in lines:
            print(line, file=out, flush=True)
        for event in update_events:
            events.append(event)
            if event.get("type") == LOG and event.get("level") == "error":
                print(f"ERROR [{event.get('kind')}] {event.get('message')}", file=out,
                      flush=True)
            if event.get("type") == RUN_FINISHED and finished is None:
                finished = event

    while finished is None:
        update = await follower.poll()
        take(update.events, update.log_lines)
        if update:
            last_news = time.monotonic()
            continue
        if time.monotonic() - last_news > alive_every:
            last_news = time.monotonic()
            state = await handle.status()
            if not state.get("alive"):
                update = await follower.poll()  # what it wrote just before it went
                take(update.events, update.log_lines)
                if finished is None:
                    code = state.get("exit_code")
                    why = (f"apr exited (code {code}) without its completion line" if
                           code is not None else "apr is gone without an exit code (killed, "
                           "or the host rebooted)")
                    take(follower.finish(code, why), [])
                    print(f"ERROR: {why}; see the log above", file=out, flush=True)
                break
        await asyncio.sleep(interval)
    while (update := await follower.poll()):  # lines after the end (the output path, say)
        take(update.events, update.log_lines)

    verdict = follower.parser.verdict
    print(verdict_line(verdict), file=out, flush=True)
    status = (verdict or {}).get("status")
    code = {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(str(status), EXIT_ERROR)
    return AprWatchResult(code, verdict, finished, events, printed)
