"""A host disk that fills up while the sync stage makes the run's venv (the wheel fits, its
install does not): what `kdtui launch` says, and what is left there. The disk is a real tmpfs
sized for the agent and the wheel and little more (root only: skipped where it cannot be
mounted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdtui.cli import main
from kdtui.remote.stages import agent_source
from kdtui.remote.wheel import build_wheel

from .conftest import tmpfs

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(120)]


@pytest.fixture
def small_disk(tmp_path: Path):
    size = len(agent_source()) + len(build_wheel().data) + 256 * 1024
    with tmpfs(tmp_path / "small", size) as mount:
        yield mount


def test_a_disk_that_fills_up_making_the_venv_is_one_line_naming_it_and_the_fix(
        remote_env, small_disk, tiny_run_inputs, capsys):
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace(str(remote_env["work"]), str(small_disk / "w")))
    code = main(["launch", "--headless", "--host", "kdtest", "--run-name", "full-2",
                 "--teacher", tiny_run_inputs["teacher"], "--student", tiny_run_inputs["student"],
                 "--data", tiny_run_inputs["data"], "--steps", "4", "--device", "cpu"])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 2, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("[sync] failed")]
    env = next(ln for ln in out.splitlines() if " mkenv --env-dir " in ln).split(
        " mkenv --env-dir ")[1].split()[0]
    assert re.search(f"make the per-version venv: cannot make {re.escape(env)}: the disk "
                     r"there is full \(\d+\.\d MiB free\); free some space on it, or set the "
                     "host's work_dir to a disk with room$", line), line
    assert "needs pip" not in out and "Traceback" not in out
    # pip's lines streamed as they came, and are not shown a second time with the failure
    no_space = "  | ERROR: Could not install packages due to an OSError: [Errno 28] No space " \
        "left on device"
    assert out.splitlines().count(no_space) == 1, out
    assert not Path(env).exists()  # the half-made venv is gone, its space free again
    manifest = json.loads((remote_env["evidence"] / "full-2" / "dispatch.json").read_text())
    assert manifest["launched"] is False and "the disk there is full" in manifest["error"]
