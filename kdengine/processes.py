"""Whether a process still runs, for what finds others' pids in files: the dashboard's runs list
(engine.pid) and a CPU run's note of who holds the cores (kdengine.cpu_threads). No torch."""

from __future__ import annotations

import os


def pid_alive(pid: int, named: bytes | None = None) -> bool:
    """`pid` runs and is not a zombie (a zombie never writes another event); with `named`, its
    command line must hold those bytes too (a recycled pid belongs to something else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
        if named is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return named in fh.read()
    except OSError:  # no /proc (macOS): the signal's answer stands
        return True
    return True
