"""How many threads a run on the CPU takes when other kdengine runs share the machine.

torch gives every process all the cores. Two CPU runs at once then each wait, at every parallel
op, for threads the other holds: two demo runs on 2 cores took 124 s each, against 29 s alone
(docs/performance.md, "Two CPU runs at once"). So a run on the CPU takes the cores the running
ones leave, at least one, and keeps that count for its whole life and for its resumes: the
count changes the order of the float sums, and a CPU run is bit-reproducible at one count only.

While it runs, each CPU engine notes its pid and thread count in CACHE/cpu-threads/PID.json
(CACHE: KDENGINE_CACHE or the user cache dir); entries whose process is gone are removed when
seen. OMP_NUM_THREADS, when set, is the user's choice and is kept as torch read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kdengine.events import EVENTS_FILE, RUN_STARTED, EventReader
from kdengine.processes import pid_alive

REGISTRY = "cpu-threads"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str  # one line for the run's log ("" when the run takes what torch gave it)


def choose_threads(cores: int, others: list[int], *, explicit: bool,
                   first_start: int | None) -> ThreadChoice:
    """`cores`: the threads torch gives a process alone; `others`: the threads each running
    CPU engine holds; `explicit`: OMP_NUM_THREADS is set (kept); `first_start`: the count the
    run had at its first start (a resume keeps it)."""
    if explicit:
        return ThreadChoice(cores, "")
    if first_start is not None:
        return ThreadChoice(first_start, "" if first_start == cores else
                            f"cpu: {first_start} thread{_s(first_start)}, as at the run's first "
                            "start (the count changes the float sums: a resume keeps it)")
    held = sum(others)
    if not held:
        return ThreadChoice(cores, "")
    threads = max(1, cores - held)
    return ThreadChoice(threads, f"cpu: {threads} thread{_s(threads)} of {cores}: "
                        f"{len(others)} other kdengine run{_s(len(others))} on this machine "
                        f"hold{'s' if len(others) == 1 else ''} {held} (runs sharing cores "
                        "wait on each other at every op)")


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def registry_dir() -> Path:
    from kdengine.cache_dir import cache_root

    return cache_root() / REGISTRY


def running_threads(directory: Path) -> list[int]:
    """The thread counts of the CPU engines that are running now (other than this process);
    entries of processes that are gone are removed."""
    counts = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        try:
            pid = int(path.stem)
            entry = json.loads(path.read_text())
        except (ValueError, OSError):
            continue  # another engine's half-written entry, or not one of ours
        if pid == os.getpid():
            continue
        if not pid_alive(pid, named=b"kdengine"):  # a recycled pid is not an engine
            path.unlink(missing_ok=True)
            continue
        if isinstance(entry.get("threads"), int) and entry["threads"] > 0:
            counts.append(entry["threads"])
    return counts


def first_start_threads(run_dir: Path) -> int | None:
    """The thread count a run recorded at its first start (its run_started event's env: the
    events file's first line, so a long run's file is not read whole)."""
    try:
        with open(run_dir / EVENTS_FILE, "rb") as fh:
            first = fh.readline()
    except OSError:
        return None
    for event in EventReader().feed(first):
        if event.get("type") == RUN_STARTED:
            threads = (event.get("env") or {}).get("threads")
            return threads if isinstance(threads, int) and threads > 0 else None
    return None


def note(directory: Path, threads: int) -> Path | None:
    """This process noted as holding `threads` (written whole: a reader never sees half); None
    where the directory cannot be written (the run goes on unnoted)."""
    path = directory / f"{os.getpid()}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"threads": threads}))
        os.replace(tmp, path)
    except OSError:
        return None
    return path


@contextmanager
def sharing(directory: Path, cores: int, *, explicit: bool,
            first_start: int | None) -> Iterator[ThreadChoice]:
    """This run's ThreadChoice beside the running CPU engines, noted for the block's length.
    It notes itself before it looks (at `cores`), so two runs starting at the same moment see
    each other and both take less, rather than neither."""
    path = note(directory, cores)
    try:
        choice = choose_threads(cores, running_threads(directory), explicit=explicit,
                                first_start=first_start)
        if choice.threads != cores:
            path = note(directory, choice.threads) or path
        yield choice
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
