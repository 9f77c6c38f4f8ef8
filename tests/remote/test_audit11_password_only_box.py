"""A box whose sshd takes no keys (PubkeyAuthentication no: only a password or
keyboard-interactive) is said as that, one line, naming what it offers and the fix on the box:
kdtui never sends a password, and adding a key to authorized_keys, the advice for a box that
refuses our keys, would change nothing there."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import pytest

from kdtui.remote.connect import ConnectFailed, open_connection
from kdtui.remote.hosts import HostConfig

pytestmark = pytest.mark.ssh
SSHD = "/usr/sbin/sshd"  # as tests/remote/conftest.py (its `sshd` fixture skips without it)


@pytest.fixture(scope="module")
def password_only_sshd(sshd, tmp_path_factory):
    """A second sshd (the test sshd's host key) that offers password and keyboard-interactive
    only; its port."""
    d = tmp_path_factory.mktemp("sshd-password")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {sshd.dir}/host_key\nStrictModes no\n"
        "PubkeyAuthentication no\nPasswordAuthentication yes\nKbdInteractiveAuthentication yes\n"
        f"UsePAM no\nPidFile {d}/sshd.pid\n")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(5)


def test_a_box_that_takes_no_keys_is_said_as_that(sshd, password_only_sshd, tmp_path):
    # before: "box (127.0.0.1:PORT) refused our keys: add your public key to the box's
    # ~/.ssh/authorized_keys", which cannot help on a box that takes no keys
    port = password_only_sshd
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {sshd.host_key_pub}\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host box\n  HostName 127.0.0.1\n  Port {port}\n  User kd\n"
                      f"  IdentityFile {sshd.dir / 'client_key'}\n  UserKnownHostsFile {known}\n")

    async def go() -> None:
        await open_connection(HostConfig("box", ssh_config=(str(config),), connect_timeout=10))

    with pytest.raises(ConnectFailed) as failed:
        asyncio.run(go())
    message = str(failed.value)
    assert "\n" not in message and "authorized_keys" not in message
    assert message.startswith(f"box (127.0.0.1:{port}) takes no keys for kd (it offers password, "
                              "keyboard-interactive): kdtui never sends a password")
    assert "PubkeyAuthentication yes" in message and "ssh-copy-id box" in message


def test_a_box_that_refuses_our_key_still_says_to_add_it(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host box\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
                      f"  IdentityFile {sshd.dir / 'other_host_key'}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {sshd.dir / 'known_hosts'}\n")

    async def go() -> None:
        await open_connection(HostConfig("box", ssh_config=(str(config),), connect_timeout=10))

    with pytest.raises(ConnectFailed, match=r"refused our keys: add your public key to the box's "
                                            r"~/.ssh/authorized_keys"):
        asyncio.run(go())


