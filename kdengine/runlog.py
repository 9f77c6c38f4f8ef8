"""The run's two outputs side by side: structured events and the human launch.log.

Every human line goes to stdout and RUN_DIR/launch.log, unless stdout already *is* launch.log (a
launcher redirected it there), in which case it is written once. Python-level stderr is teed the
same way, so warnings and tracebacks land in the log when the engine runs in a terminal too. A
failed run's details and traceback go to launch.log only (`terminal=False`): the terminal gets
one line from the CLI.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from kdengine.diskspace import is_disk_full
from kdengine.events import LOG, LOG_FILE, STAGE, EventWriter


def _same_file(stream: TextIO, path: Path) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _Tee:
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
            s.flush()
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.streams[0], name)


# the most characters of a failed stage's `detail`: the stage tracker's one row (docs/events.md)
DETAIL_MAX = 80
_CLAUSE_ENDS = ("; ", ": ")


def short_detail(reason: str, limit: int = DETAIL_MAX) -> str:
    """A failure's reason as a failed stage's short `detail`: its first line up to the end of
    its first clause (one of at least 20 characters: 'disk full' alone says too little), cut
    at a word with '…' past `limit`."""
    text = reason.strip()
    line = text.splitlines()[0] if text else ""
    ends = [i for i in (line.find(sep, 20) for sep in _CLAUSE_ENDS) if i > 0]
    head = line[:min(ends)] if ends else line
    if len(head) <= limit:
        return head
    cut = head[:limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut[limit // 2:] else cut) + "…"


class RunLog:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.events = EventWriter(self.run_dir)
        log_path = self.run_dir / LOG_FILE
        log_path.touch()
        redirected = _same_file(sys.stdout, log_path)
        self._file = None if redirected else open(log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._saved_stderr = sys.stderr
        if self._file is not None and not _same_file(sys.stderr, log_path):
            sys.stderr = _Tee(sys.stderr, self._file)  # type: ignore[assignment]
        self._stage_started: dict[str, float] = {}

    def line(self, text: str, *, terminal: bool = True) -> None:
        """A human line into launch.log and, unless `terminal` is False, onto stdout too (a
        failure's details and traceback: the terminal gets the CLI's one-line summary)."""
        if self._file is None:  # stdout is launch.log: one write, whatever `terminal` says
            print(text, flush=True)
            return
        if terminal:
            print(text, flush=True)
        self._file.write(text + "\n")
        self._file.flush()

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        return self.events.emit(type_, **payload)

    def message(self, level: str, text: str) -> None:
        """A warning or error: a `log` event and a human line that says its level."""
        self.emit(LOG, level=level, message=text)
        prefix = "" if level == "info" else f"{level.upper()}: "
        self.line(prefix + text)

    def stage(self, name: str, state: str, detail: str = "", *, terminal: bool = True,
              **fields: Any) -> None:
        """A stage event (`fields` ride in it: the data stage's counts) and its human line."""
        now = time.monotonic()
        if state == "running":
            self._stage_started[name] = now
        elapsed = round(now - self._stage_started.get(name, now), 3)
        payload: dict[str, Any] = {"stage": name, "state": state, "elapsed": elapsed}
        if detail:  # a failure's whole error is run_finished's `error` and the error event's
            payload["detail"] = short_detail(detail) if state == "failed" else detail
        self.emit(STAGE, **fields, **payload)
        self.line(f"[{name}] {state}" + (f" ({elapsed:.1f}s)" if state != "running" else "")
                  + (f": {detail}" if detail else ""), terminal=terminal)

    def close(self) -> None:
        sys.stderr = self._saved_stderr
        for file in (self.events, self._file):
            try:
                if file is not None:
                    file.close()
            except OSError as exc:  # a full disk loses the last lines; the run has ended
                if not is_disk_full(exc):
                    raise
