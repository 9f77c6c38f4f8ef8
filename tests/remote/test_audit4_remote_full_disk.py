"""A host whose disk is full: the first upload (kdtui's agent) failed with OpenSSH's bare SFTP
'Failure' ('gpu1: preflight failed: Failure'), which says nothing of why or what to do. Now one
line names the file, the free space and the fix. The full disk is a real 1 MiB tmpfs (root
only: skipped where it cannot be mounted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtui.cli import main

from .conftest import fill_up, tmpfs

pytestmark = pytest.mark.ssh


@pytest.fixture
def full_disk(tmp_path: Path):
    with tmpfs(tmp_path / "full", "1m") as mount:
        fill_up(mount)
        yield mount


def test_a_full_host_disk_is_one_line_naming_the_file_and_the_fix(
        remote_env, full_disk, tiny_run_inputs, capsys):
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace(str(remote_env["work"]), str(full_disk / "w")))
    code = main(["launch", "--headless", "--host", "kdtest", "--run-name", "full-1",
                 "--teacher", tiny_run_inputs["teacher"], "--student", tiny_run_inputs["student"],
                 "--data", tiny_run_inputs["data"], "--steps", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 2, out
    failed = [line for line in out.splitlines() if line.startswith("[preflight] failed")]
    assert len(failed) == 1, out
    assert f"kdtest: cannot write {full_disk}/w/.kdtui/agent-" in failed[0]
    assert "the disk there is full (0.0 MiB free)" in failed[0]
    assert "set the host's work_dir to a disk with room" in failed[0]
    assert ": Failure" not in out
    assert not list((full_disk / "w" / ".kdtui").glob("*.part"))  # no half file left
