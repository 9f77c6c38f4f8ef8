"""docs/remote.md: "a box that refuses our keys while the key to offer is encrypted says so,
with the `ssh-add FILE` that lets an ssh-agent offer it" and "Authentication is keys or
ssh-agent only". The refusal had its test; the fix it names had none: after `ssh-add`, with the
ssh config's IdentityFile still the encrypted file (IdentitiesOnly yes), kdtui connects through
the agent and asks for no passphrase. A real ssh-agent and the test sshd."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest

from kdtui.remote.connect import open_connection
from kdtui.remote.hosts import HostConfig

pytestmark = pytest.mark.ssh


def test_an_encrypted_key_held_by_an_ssh_agent_connects_without_a_passphrase(
        sshd, tmp_path, monkeypatch):
    key = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with open(sshd.dir / "authorized_keys", "a") as fh:
        fh.write((tmp_path / "locked_key.pub").read_text())
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            asyncio.run(asyncio.sleep(0.02))
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
        # the file is encrypted now, as a user's is; the agent holds the key in the clear
        subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "a passphrase", "-f", str(key)],
                       check=True, capture_output=True)
        config = tmp_path / "ssh_config"
        config.write_text(f"Host loc\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
                          f"  IdentityFile {key}\n  IdentitiesOnly yes\n"
                          f"  UserKnownHostsFile {sshd.dir / 'known_hosts'}\n")
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))

        async def whoami() -> str:
            conn = await open_connection(HostConfig("loc", ssh_config=(str(config),),
                                                    connect_timeout=10))
            try:
                return (await conn.run("echo via-agent", check=True)).stdout.strip()
            finally:
                conn.close()
        assert asyncio.run(whoami()) == "via-agent"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(5)
    assert Path(key).read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
