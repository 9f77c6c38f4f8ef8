"""The run's log under torchrun: rank 0 writes events and relays the other ranks' failures
(RelayLog), the others write only their errors (RankLog), and every rank stops at the same step
on a signal any one of them received (AgreedStop). `dist` below is the process's
kdengine.distributed.Dist (typed Any: ranks.py, where it lives, imports this module)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from kdengine import events as ev

RANK_NOTES = ".rank-failures"  # RUN_DIR/.rank-failures/rank-N.json: a failed rank's last words


class RankLog:
    """The log of a rank other than 0: no events, no progress lines; an error goes to launch.log
    prefixed `[rank N]` and into a note rank 0 turns into a `log` event with a `rank` field."""

    def __init__(self, run_dir: Path, rank: int, dist: Any = None) -> None:
        self.run_dir, self.rank, self._dist = Path(run_dir), rank, dist
        if dist is not None:
            dist.barrier()  # rank 0 clears the old notes first
        self.events = _EventsPath(self.run_dir / ev.EVENTS_FILE)

    def line(self, text: str, *, terminal: bool = True) -> None:
        pass

    def stage(self, name: str, state: str, detail: str = "", *, terminal: bool = True,
              **fields: Any) -> None:
        pass

    def message(self, level: str, text: str) -> None:
        if level == "error":
            self._report(text, "")

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        if type_ == ev.LOG and payload.get("level") == "error":
            self._report(str(payload.get("message", "")), str(payload.get("traceback", "")))
        return {}

    def _report(self, message: str, tb: str) -> None:
        if self._dist is not None:
            self._dist.failed = True
        prefix = f"[rank {self.rank}] "
        text = prefix + "ERROR: " + message + "\n" + "".join(
            prefix + line + "\n" for line in tb.rstrip().splitlines())
        # stdout may already be launch.log (a launcher redirected torchrun there): write once
        from kdengine.runlog import _same_file

        log_path = self.run_dir / ev.LOG_FILE
        if _same_file(sys.stdout, log_path):
            sys.stdout.write(text)
            sys.stdout.flush()
        else:  # the terminal gets the one line, launch.log the traceback too
            sys.stderr.write(prefix + "ERROR: " + message + "\n")
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(text)
        notes = self.run_dir / RANK_NOTES
        notes.mkdir(exist_ok=True)
        tmp = notes / f".rank-{self.rank}.tmp"
        tmp.write_text(json.dumps({"rank": self.rank, "message": message, "traceback": tb}))
        os.replace(tmp, notes / f"rank-{self.rank}.json")

    def close(self) -> None:
        pass


class _EventsPath:
    def __init__(self, path: Path) -> None:
        self.path = path


class RelayLog:
    """Rank 0's RunLog behind a lock, with a watcher thread for the other ranks' failure notes.

    A failed rank exits; rank 0 may then sit in a collective that never returns (NCCL) until
    torchrun kills it. The watcher runs beside it: it emits each note as a `log` event with a
    `rank` field at once and, if the main thread has not ended the run `grace` seconds later,
    ends it (stage failed, run_finished failed) and exits the process.
    """

    def __init__(self, log: Any, dist: Any, poll: float = 0.2, grace: float = 5.0) -> None:
        self._log, self._lock, self._dist = log, threading.RLock(), dist
        self.run_dir, self.events = log.run_dir, log.events
        self._notes = Path(log.run_dir) / RANK_NOTES
        self._reported: set[int] = set()
        self._finished = False
        self._stage: str | None = None
        self._poll, self._grace = poll, grace
        self._stop = threading.Event()
        self._failed_at: float | None = None
        self._thread = threading.Thread(target=self._watch, name="kdengine-rank-watch",
                                        daemon=True)
        self._thread.start()

    def line(self, text: str, *, terminal: bool = True) -> None:
        with self._lock:
            self._log.line(text, terminal=terminal)

    def message(self, level: str, text: str) -> None:
        with self._lock:
            self._log.message(level, text)

    def stage(self, name: str, state: str, detail: str = "", *, terminal: bool = True,
              **fields: Any) -> None:
        with self._lock:
            self._stage = name
            self._log.stage(name, state, detail, terminal=terminal, **fields)

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        with self._lock:
            if type_ == ev.LOG and payload.get("level") == "error":
                self._dist.failed = True
                # rank 0's own error is often the echo of another rank's (a closed connection):
                # report the other ranks first, so the root cause leads
                self._drain(wait=2.0)
            if self._finished:
                return {}
            if type_ == ev.RUN_FINISHED:
                self._finished = True
            return self._log.emit(type_, **payload)

    def _drain(self, wait: float = 0.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            found = False
            for note in sorted(self._notes.glob("rank-*.json")) if self._notes.is_dir() else []:
                try:
                    data = json.loads(note.read_text())
                except (OSError, ValueError):
                    continue
                if data["rank"] in self._reported:
                    continue
                self._reported.add(data["rank"])
                self._dist.failed = True
                found = True
                self._log.emit(ev.LOG, level="error", rank=data["rank"],
                               message=f"rank {data['rank']} failed: {data['message']}",
                               traceback=data.get("traceback", ""))
                self._log.line(f"ERROR: rank {data['rank']} failed: {data['message']}")
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                with self._lock:
                    if self._finished:
                        return
                    if self._drain() and self._failed_at is None:
                        self._failed_at = time.monotonic()
                    if self._failed_at is not None and \
                            time.monotonic() - self._failed_at > self._grace:
                        self._end_run()
            except Exception:  # the watcher must never take the run down by itself
                traceback.print_exc()
                return

    def _end_run(self) -> None:
        """The main thread is stuck in a collective with a dead peer: finish the run here."""
        ranks = sorted(self._reported)
        reason = f"rank {', '.join(map(str, ranks))} failed"
        if self._stage:
            self._log.stage(self._stage, "failed", reason)
        self._log.emit(ev.RUN_FINISHED, status="failed", exit_code=1, error=reason,
                       stage=self._stage, failed_ranks=ranks)
        self._finished = True
        self._log.line(f"ERROR: {reason}; rank 0 stops too")
        self._log.close()
        os._exit(1)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._log.close()


class AgreedStop:
    """A stop flag (kdengine.stop.StopSignals) whose check() raises on every rank when any rank
    received a signal: one small all-reduce between the processes at each check."""

    def __init__(self, stop: Any, dist: Any) -> None:
        self._stop, self._dist = stop, dist

    def __enter__(self) -> AgreedStop:
        self._stop.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.__exit__(*exc)

    @property
    def received(self) -> str | None:
        return self._stop.received

    def agreed(self) -> bool:
        """Whether any rank received a signal: the same answer on every rank (every rank must
        ask, at the same point of the loop)."""
        if self._dist.any_rank(bool(self._stop.received)):
            if not self._stop.received:
                self._stop.received = "SIGTERM"  # another rank's signal: name the usual one
            return True
        return False

    def check(self) -> None:
        if self.agreed():
            self._stop.check()
