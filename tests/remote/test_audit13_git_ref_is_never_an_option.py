"""A git ref that starts with '-' (`git_ref` of a hosts file, the apr profile's ref) reached
`git fetch origin REF` as an option: `--upload-pack=touch x; git-upload-pack` ran `touch x` on
the box, a value run as a command, where docs/remote.md promises every value arrives as one
literal word. The agent's gitsync now refuses such a ref in one line, runs nothing; the hosts
file refuses it too, before anything is connected to. A real git repository, the real agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdtui.remote import agent
from kdtui.remote.hosts import HostsFileError, load_hosts


def test_a_git_ref_starting_with_a_dash_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bare = tmp_path / "src.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    ref = f"--upload-pack=touch {marker}; git-upload-pack"
    done = subprocess.run([sys.executable, agent.__file__, "gitsync", "--src-dir",
                           str(tmp_path / "src"), "--url", str(bare), "--ref", ref],
                          capture_output=True, text=True, timeout=60)
    assert not marker.exists()
    assert done.returncode != 0
    said = json.loads(done.stdout.splitlines()[-1])
    assert said["ok"] is False and "starts with '-'" in said["error"], said


def test_a_hosts_file_git_ref_starting_with_a_dash_is_refused_naming_it(tmp_path: Path):
    path = tmp_path / "hosts.toml"
    path.write_text('[hosts.gpu]\nsync = "git"\ngit_url = "https://example.org/kd.git"\n'
                    'git_ref = "--upload-pack=sh x"\n')
    with pytest.raises(HostsFileError, match=r"git_ref .*starts with '-'"):
        load_hosts(path)
