"""File modes that bind root too, for the tests of unreadable files and read-only folders.

CI runs as root, and root reads and writes whatever a file's mode says (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH): such tests used to skip there and never ran. As root, the engine runs in
a child whose capability bounding set lacks those two, so after exec it holds neither, its
access() checks fail as a user's would, and its open() and mkdir() get EACCES: the same uid,
files and interpreter (under /root) as the test's, but the modes apply.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from typing import Any

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
AS_ROOT = os.geteuid() == 0


def _drop_dac_capabilities() -> None:  # runs in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def modes_apply() -> dict[str, Any]:
    """subprocess.run keywords under which the child obeys file modes: none for a user, who
    does already; for root, the capabilities that let it ignore them dropped."""
    return {"preexec_fn": _drop_dac_capabilities} if AS_ROOT else {}


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -c code args...` with file modes applying (modes_apply)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, **modes_apply())
