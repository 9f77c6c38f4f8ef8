"""A box reached through a ProxyJump host, against the real test sshd: the jump host is
connected to as a host of its own (its host key checked against its known_hosts, keys only), so
`UserKnownHostsFile none` or a missing known_hosts on the jump host trusts nothing there either,
and each of its problems is one line naming the jump host and the host that jumps through it,
never the target's key "CHANGED" or "cannot reach" the target."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kdtui.remote.connect import ConnectFailed, HostKeyRefused, open_connection
from kdtui.remote.hosts import HostConfig

pytestmark = pytest.mark.ssh


def jump_config(sshd, tmp_path: Path, *, jump_known_hosts: str, jump_port: int | None = None,
                hop: str = "jump") -> Path:
    """`box` (the test sshd, its key trusted) through ProxyJump `hop`; `jump` is the test sshd
    too, with its own known_hosts (and port)."""
    key, known = sshd.dir / "client_key", sshd.dir / "known_hosts"
    path = tmp_path / "ssh_config"
    path.write_text(
        f"Host jump\n  HostName 127.0.0.1\n  Port {jump_port or sshd.port}\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {jump_known_hosts}\n\n"
        f"Host box\n  HostName 127.0.0.1\n  Port {sshd.port}\n  IdentityFile {key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  ProxyJump {hop}\n")
    return path


def run_on_box(config: Path) -> str:
    async def go() -> str:
        conn = await open_connection(HostConfig("box", ssh_config=(str(config),),
                                                connect_timeout=10))
        try:
            return (await conn.run("echo through", check=True)).stdout.strip()
        finally:
            conn.close()
    return asyncio.run(go())


def test_a_proxy_jump_whose_key_is_trusted_reaches_the_box(sshd, tmp_path):
    config = jump_config(sshd, tmp_path, jump_known_hosts=str(sshd.dir / "known_hosts"))
    assert run_on_box(config) == "through"
    # a hop with its user and port, as ProxyJump writes them
    config = jump_config(sshd, tmp_path, jump_known_hosts=str(sshd.dir / "known_hosts"),
                         jump_port=1, hop=f"jump:{sshd.port}")
    assert run_on_box(config) == "through"


@pytest.mark.parametrize("known_hosts", ["none", "missing"])
def test_a_proxy_jump_host_whose_key_no_file_trusts_is_refused_naming_it(sshd, tmp_path,
                                                                         known_hosts):
    # before: asyncssh opened the ProxyJump itself: `none` trusted any key there (the box was
    # reached through an unchecked host), and a missing file was "cannot reach box: No such
    # file or directory"; an unknown key there was the box's key "CHANGED"
    jump_known = "none" if known_hosts == "none" else str(tmp_path / "nope" / "known_hosts")
    config = jump_config(sshd, tmp_path, jump_known_hosts=jump_known)
    with pytest.raises(HostKeyRefused) as refused:
        run_on_box(config)
    message = str(refused.value)
    assert "\n" not in message and "CHANGED" not in message and "cannot reach" not in message
    assert message.startswith(f"box's ProxyJump jump (ProxyJump in {config}): the host key of "
                              f"jump ([127.0.0.1]:{sshd.port}) is unknown: ssh-ed25519 SHA256:")
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> " in message


def test_an_empty_known_hosts_on_the_jump_host_is_its_unknown_key_not_the_boxs_changed_one(
        sshd, tmp_path):
    config = jump_config(sshd, tmp_path, jump_known_hosts=str(sshd.dir / "known_hosts_empty"))
    with pytest.raises(HostKeyRefused) as refused:
        run_on_box(config)
    message = str(refused.value)
    assert "CHANGED" not in message and "intercepting" not in message
    assert f"the host key of jump ([127.0.0.1]:{sshd.port}) is unknown" in message
    assert f">> {sshd.dir / 'known_hosts_empty'}" in message


def test_a_proxy_jump_host_that_is_down_is_named_not_the_box(sshd, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        down = s.getsockname()[1]
    config = jump_config(sshd, tmp_path, jump_known_hosts=str(sshd.dir / "known_hosts"),
                         jump_port=down)
    with pytest.raises(ConnectFailed) as failed:
        run_on_box(config)
    assert str(failed.value).startswith(
        f"box's ProxyJump jump (ProxyJump in {config}): cannot reach jump (127.0.0.1:{down}): ")
