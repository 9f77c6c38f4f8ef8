"""Debian's and Ubuntu's ssh writes known_hosts hashed (`HashKnownHosts yes`: `|1|salt|hash`
instead of the host's name). docs/remote.md's host-key promises hold for such a file too: the
key it lists is trusted, and another key for the host is refused as CHANGED, never taken for a
first-time `unknown` key whose fix is only to append it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import replace

import pytest

from kdtui.remote.connect import RemoteError, open_connection
from kdtui.remote.hosts import get_host

pytestmark = pytest.mark.ssh


def kdtest_through(sshd, tmp_path, known_hosts: str):
    """kdtest with `known_hosts` (a file of the test sshd) hashed by ssh-keygen -H."""
    hashed = tmp_path / known_hosts
    shutil.copy(sshd.dir / known_hosts, hashed)
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert hashed.read_text().startswith("|1|")
    config = tmp_path / f"{known_hosts}.ssh_config"
    block = sshd.ssh_config.read_text().split("\n\n")[0]
    config.write_text(block.replace(str(sshd.dir / "known_hosts"), str(hashed)))
    return replace(get_host("kdtest"), ssh_config=(str(config),))


def test_a_hashed_known_hosts_file_trusts_its_key_and_refuses_a_changed_one(
        remote_env, sshd, tmp_path):
    async def connect_and_close(host) -> None:
        conn = await open_connection(host)
        conn.close()
        await conn.wait_closed()

    asyncio.run(connect_and_close(kdtest_through(sshd, tmp_path, "known_hosts")))
    with pytest.raises(RemoteError) as refused:
        asyncio.run(open_connection(kdtest_through(sshd, tmp_path, "known_hosts_changed")))
    assert "CHANGED" in str(refused.value) and "ssh-keygen -R" in str(refused.value)
