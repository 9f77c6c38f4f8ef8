"""docs/remote.md's `sync = "git"`: the box clones `git_url`, checks `git_ref` out detached,
installs it into the matching venv and runs the engine from it; a second dispatch of the same
commit skips the sync. A real git repo (this checkout's committed tree), a real dispatch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kdtui.cli import main as kdtui_main

from .conftest import launch_flags

pytestmark = pytest.mark.ssh

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def git_host(remote_env, sshd, tmp_path):
    """kdtest with sync = "git" from a bare clone of this checkout's HEAD; its own work dir."""
    bare = tmp_path / "kd.git"
    git("clone", "--quiet", "--bare", "--no-local", str(ROOT), str(bare), cwd=tmp_path)
    work = tmp_path / "git-work"
    hosts = remote_env["hosts"]
    block = hosts.read_text().split("\n\n")[0]
    block = block.replace(f'work_dir = "{remote_env["work"]}"', f'work_dir = "{work}"')
    hosts.write_text(block + f'\nsync = "git"\ngit_url = {json.dumps(str(bare))}\n'
                     'git_ref = "main"\n')
    return {"bare": bare, "work": work, "commit": git("rev-parse", "main", cwd=bare)}


@pytest.mark.timeout(300)
def test_git_sync_installs_the_ref_runs_the_engine_from_it_and_skips_it_the_second_time(
        git_host, tiny_run_inputs, capsys):
    code = kdtui_main(["launch", "--headless", "--host", "kdtest", "--run-name", "git-1",
                       *launch_flags(tiny_run_inputs, 2, 2)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    manifest = json.loads((Path(os.environ["KDTUI_EVIDENCE_DIR"]) / "git-1" /
                           "dispatch.json").read_text())
    assert manifest["remote_git_commit"] == git_host["commit"], manifest
    python = manifest["engine_command"][0]
    assert python.startswith(str(git_host["work"] / "envs")), python
    where = subprocess.run([python, "-c", "import kdengine; print(kdengine.__file__)"],
                           capture_output=True, text=True, check=True,
                           cwd=git_host["work"]).stdout.strip()
    assert where.startswith(str(Path(python).parent.parent)), where
    code = kdtui_main(["launch", "--headless", "--host", "kdtest", "--run-name", "git-2",
                       *launch_flags(tiny_run_inputs, 2, 2)])
    second = capsys.readouterr()
    assert code == 0, second.out + second.err
    sync = [line for line in second.out.splitlines() if "[sync]" in line]
    assert any("skipped" in line and git_host["commit"][:12] in line for line in sync), sync
