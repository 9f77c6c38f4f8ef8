"""`kdtui cancel` (and watch, and the dashboard) upload the agent when a newer kdtui meets a run
an older one dispatched. That upload wrote the agent file in place: a link cut mid-write left a
truncated agent that every later command ran (its name exists, so never uploaded again), and a
full disk answered with SFTP's bare 'Failure', taken for a dropped link and retried. It now goes
through the same temporary-name-and-rename upload as the dispatch's. The full disk is a real
1 MiB tmpfs (root only: skipped where it cannot be mounted)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kdtui.cli import main

from .conftest import fill_up, tmpfs

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(120)]


@pytest.fixture
def full_disk(tmp_path: Path):
    with tmpfs(tmp_path / "full", "1m") as mount:
        (mount / "w" / "runs" / "old-1").mkdir(parents=True)
        fill_up(mount)
        yield mount


def test_cancel_on_a_full_disk_that_needs_the_agent_says_the_disk_is_full_at_once(
        remote_env, full_disk, launched_on_down_host, capsys):
    manifest = launched_on_down_host("old-1")
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "host": "kdtest",
                                    "remote_run_dir": str(full_disk / "w" / "runs" / "old-1")}))
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace(str(remote_env["work"]), str(full_disk / "w")))
    capsys.readouterr()
    started = time.monotonic()
    code = main(["cancel", "old-1"])
    took = time.monotonic() - started
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 1, captured
    assert err.startswith("kdtui cancel: error: cannot cancel old-1 on kdtest: ") and \
        "\n" not in err, err
    assert f"cannot write {full_disk}/w/.kdtui/agent-" in err and \
        "the disk there is full" in err, err
    assert took < 15, took  # not retried as a dropped link
    assert not list((full_disk / "w" / ".kdtui").glob("agent-*"))  # no half agent left
