"""docs/remote.md's `sync = "git"`: the box clones `git_url`, checks `git_ref` out detached,
installs it into the matching venv and runs the engine from it; a second dispatch of the same
commit skips the sync. A real git repo (this checkout's committed tree), a real dispatch."""

from __future__ import annotations

import json
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
    # the engine's check stops each dispatch (a missing teacher): it ran from the git venv,
    # and the sync is what this is about
    flags = launch_flags({**tiny_run_inputs, "teacher": "/nonexistent/teacher"}, 2, 2)
    code = kdtui_main(["launch", "--headless", "--host", "kdtest", "--run-name", "git-1", *flags])
    out = capsys.readouterr().out
    assert code == 2, out
    env_dir = git_host["work"] / "envs" / next(p.name for p in (git_host["work"] / "envs")
                                                .iterdir() if p.is_dir())
    assert "[sync] done" in out and f"in {env_dir}" in out, out
    check = next(line for line in out.splitlines() if "--check" in line)
    assert check.split(" -m kdengine", 1)[0].endswith(f"{env_dir}/bin/python"), check
    assert "[check] failed" in out and "/nonexistent/teacher" in out, out
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                            "import kdengine; print(kdengine.__file__)"], capture_output=True,
                           text=True, check=True, cwd=git_host["work"]).stdout.strip()
    assert where.startswith(str(env_dir)), where  # the ref's code, not this checkout's
    code = kdtui_main(["launch", "--headless", "--host", "kdtest", "--run-name", "git-2", *flags])
    second = capsys.readouterr().out
    assert code == 2, second
    sync = [line for line in second.splitlines() if line.startswith("[sync] ")]
    assert sync[-1].startswith("[sync] skipped") and git_host["commit"][:12] in sync[-1], sync
