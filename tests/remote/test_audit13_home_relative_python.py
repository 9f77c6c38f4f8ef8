"""A hosts file's `python = "~/miniconda3/envs/torch/bin/python"`, the way a conda python under
the home is usually written (and the way work_dir takes `~/x`): every command quoted the `~`, so
the box's shell looked for a directory named `~` and preflight failed with `bash: line 1:
~/miniconda3/envs/torch/bin/python: No such file or directory`, of a python that is there.
`~/` now means the remote home in `python` as in `work_dir`."""

from __future__ import annotations

import os
import pwd
import sys

import pytest

from kdtui.cli import main as kdtui_main

from .conftest import launch_flags

pytestmark = pytest.mark.ssh


def test_a_python_under_the_remote_home_written_with_a_tilde_is_found_there(
        remote_env, tiny_run_inputs, capsys):
    home = pwd.getpwuid(os.getuid()).pw_dir  # the test sshd logs in as this user
    python = "~/" + os.path.relpath(sys.executable, home)
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace(f'python = "{sys.executable}"',
                                               f'python = "{python}"'))
    # the engine's check stops the dispatch (a missing teacher): preflight and sync, the stages
    # that run the hosts file's python, are what this is about, and it stays fast
    flags = launch_flags({**tiny_run_inputs, "teacher": "/nonexistent/teacher"}, 2, 2)
    code = kdtui_main(["launch", "--headless", "--host", "kdtest", "--run-name", "tilde-py",
                       *flags])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "No such file" not in out, out
    assert "[preflight] done" in out and "[check] failed" in out, out
    assert "/nonexistent/teacher" in out.split("[check] failed", 1)[1], out
