"""`kdtui runs | head -1` and `kdengine train --check | head -2` (a reader that stops reading)
end quietly with 141, as a command killed by SIGPIPE does, instead of a BrokenPipeError
traceback from the next print."""

from __future__ import annotations

import subprocess
import sys


def test_kdtui_runs_into_a_closed_pipe_is_quiet() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kdtui", "runs"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line (PYTHONUNBUFFERED: written
    err = proc.stderr.read()  # at once, so the very first print meets the closed pipe)
    assert proc.wait(timeout=60) == 141, err
    assert err == ""


def test_kdengine_into_a_closed_pipe_is_quiet() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kdengine", "version"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""
