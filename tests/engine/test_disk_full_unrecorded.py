"""A disk so full that the engine cannot even write its failure down (another process took the
last byte while a checkpoint was written) still ends in one line on the terminal, exit 1, no
traceback: the failure is reported where it can be, and the run's files closed without a
second error. Runs on a real, small tmpfs (root, as in the CI sandbox; skipped elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The real CLI; just before the checkpoint of step KD_FILL_BEFORE is written, a file takes
# every free byte of the run's file system.
FILL_EVERYTHING_CLI = r"""
import os, shutil, sys
import kdengine.checkpoint_writer as W

write_checkpoint = W.write_checkpoint
def filling_checkpoint(run_dir, step, *args, **kwargs):
    if str(step) == os.environ["KD_FILL_BEFORE"]:
        try:
            with open(os.environ["KD_FILLER"], "wb") as fh:
                fh.write(b"\0" * shutil.disk_usage(run_dir).free)
        except OSError:
            pass
    return write_checkpoint(run_dir, step, *args, **kwargs)
W.write_checkpoint = filling_checkpoint
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def small_fs(tmp_path: Path):
    where = tmp_path / "fs"
    where.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8388608", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here ({out.stderr.strip()}); "
                    "this test needs root")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_disk_too_full_to_record_the_failure_is_still_one_line(
        tiny_run_inputs, tiny_args, small_fs: Path) -> None:
    run_dir, filler = small_fs / "run", small_fs / "someone-elses-file"
    env = {**os.environ, "KD_FILL_BEFORE": "10", "KD_FILLER": str(filler)}
    out = subprocess.run([sys.executable, "-c", FILL_EVERYTHING_CLI,
                          *tiny_args(tiny_run_inputs, run_dir, steps=20)],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "Exception ignored" not in out.stderr  # no file left to flush at exit
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("kdengine train: error: [train] failed: disk full")
    assert f"(not recorded in {run_dir}: its disk is full)" in lines[0]
