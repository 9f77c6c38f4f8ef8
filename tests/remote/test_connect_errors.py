"""Each reason a connection cannot be opened is its own one-line message, against the real test
sshd: a problem in the ssh config (a missing known_hosts or key file, a missing config) names
the file, the setting and the fix, never "cannot reach"; a missing or empty known_hosts never
trusts the key; a host that is down is still "cannot reach HostName:Port", with what to check."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import asyncssh
import pytest

from kdtui.cli import main as kdtui_main
from kdtui.remote.connect import ConnectFailed, HostKeyRefused, SSHConfigError, open_connection
from kdtui.remote.hosts import HostConfig
from kdtui.remote.source import SSHRunSource

pytestmark = pytest.mark.ssh


def ssh_config(sshd, tmp_path: Path, *, known_hosts: str | None = None,
               identity: str | None = None, port: int | None = None) -> Path:
    """An ssh config with one alias, `loc`, for the test sshd (its own settings overridable)."""
    path = tmp_path / "ssh_config"
    lines = ["Host loc", "  HostName 127.0.0.1", f"  Port {port or sshd.port}",
             f"  IdentityFile {identity or sshd.dir / 'client_key'}", "  IdentitiesOnly yes",
             f"  UserKnownHostsFile {known_hosts or sshd.dir / 'known_hosts'}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def connect(config: Path) -> asyncssh.SSHClientConnection:
    async def go() -> None:
        conn = await open_connection(HostConfig("loc", ssh_config=(str(config),),
                                                connect_timeout=10))
        conn.close()
    return asyncio.run(go())


def fingerprint(sshd) -> str:
    return asyncssh.import_public_key(sshd.host_key_pub).get_fingerprint("sha256")


def test_a_missing_known_hosts_file_is_an_unknown_host_key_naming_the_setting(sshd, tmp_path):
    missing = tmp_path / "no-dir" / "known_hosts"
    config = ssh_config(sshd, tmp_path, known_hosts=str(missing))
    with pytest.raises(HostKeyRefused) as refused:
        connect(config)
    message = str(refused.value)
    assert "\n" not in message and "cannot reach" not in message
    assert f"the host key of loc ([127.0.0.1]:{sshd.port}) is unknown" in message
    assert fingerprint(sshd) in message
    assert f"UserKnownHostsFile in {config}: {missing} does not exist yet" in message
    assert f"mkdir -p {missing.parent} && ssh-keyscan -p {sshd.port} 127.0.0.1 >> {missing}" \
        in message
    assert not missing.exists()  # nothing was written, nothing trusted


def test_a_missing_known_hosts_file_does_not_fall_back_to_the_default_one(sshd, tmp_path,
                                                                          monkeypatch):
    # ~/.ssh/known_hosts trusts the key, but the ssh config names another file: ssh(1) would
    # not read ~/.ssh/known_hosts, so neither does kdtui
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text((sshd.dir / "known_hosts").read_text())
    monkeypatch.setenv("HOME", str(home))
    config = ssh_config(sshd, tmp_path, known_hosts=str(tmp_path / "missing_known_hosts"))
    with pytest.raises(HostKeyRefused, match="is unknown"):
        connect(config)


def test_user_known_hosts_file_none_never_trusts_the_key(sshd, tmp_path):
    config = ssh_config(sshd, tmp_path, known_hosts="none")
    with pytest.raises(HostKeyRefused) as refused:
        connect(config)
    assert "is unknown" in str(refused.value)
    assert f"UserKnownHostsFile in {config} is `none`" in str(refused.value)


def test_an_empty_known_hosts_file_is_an_unknown_host_key(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyRefused) as refused:
        connect(ssh_config(sshd, tmp_path, known_hosts=str(empty)))
    assert "is unknown" in str(refused.value) and fingerprint(sshd) in str(refused.value)
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in str(refused.value)


def test_a_known_hosts_file_made_by_the_suggested_keyscan_line_lets_it_connect(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    config = ssh_config(sshd, tmp_path, known_hosts=str(known))
    with pytest.raises(HostKeyRefused):
        connect(config)
    known.write_text((sshd.dir / "known_hosts").read_text())  # what ssh-keyscan would add
    connect(config)


def test_a_missing_identity_file_names_the_file_the_setting_and_the_real_address(sshd, tmp_path):
    key = tmp_path / "no_such_key"
    config = ssh_config(sshd, tmp_path, identity=str(key))
    with pytest.raises(SSHConfigError) as failed:
        connect(config)
    message = str(failed.value)
    assert "\n" not in message and "cannot reach" not in message and "loc:22" not in message
    assert message.startswith(f"loc (127.0.0.1:{sshd.port}): the key file {key} "
                              f"(IdentityFile in {config}) does not exist")
    assert f"ssh-keygen -t ed25519 -f {key}" in message


def test_an_identity_file_that_is_no_key_says_so(sshd, tmp_path):
    key = tmp_path / "not_a_key"
    key.write_text("hello\n")
    config = ssh_config(sshd, tmp_path, identity=str(key))
    with pytest.raises(SSHConfigError) as failed:
        connect(config)
    assert f"the key file {key} (IdentityFile in {config}) is not a private key" \
        in str(failed.value)


def test_an_encrypted_key_no_agent_holds_names_ssh_add(sshd, tmp_path, monkeypatch):
    """kdtui never asks for a passphrase: an encrypted key works only through an agent, and
    the refusal says so rather than blaming the box's authorized_keys."""
    import subprocess

    key = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(key)],
                   check=True)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(ConnectFailed) as failed:
        connect(ssh_config(sshd, tmp_path, identity=str(key)))
    message = str(failed.value)
    assert "\n" not in message and "cannot reach" not in message
    assert message.startswith(f"loc (127.0.0.1:{sshd.port}) refused our keys: {key} is "
                              "encrypted and no ssh-agent runs here")
    assert f"ssh-add {key}" in message


def test_a_missing_ssh_config_file_names_it(tmp_path):
    with pytest.raises(SSHConfigError) as failed:
        connect(tmp_path / "nope")
    assert str(failed.value).startswith(f"loc: the ssh config {tmp_path / 'nope'} does not exist")


def test_a_host_that_is_down_is_still_cannot_reach_its_hostname_and_port(sshd, tmp_path):
    with socket_port() as port:
        config = ssh_config(sshd, tmp_path, port=port)
    with pytest.raises(ConnectFailed) as failed:
        connect(config)
    assert str(failed.value) == (
        f"cannot reach loc (127.0.0.1:{port}): connection refused: no SSH server listens on "
        f"port {port} there (is sshd running on it? is the port right: Port in {config}?)")


def test_a_host_name_that_does_not_resolve_says_which_setting_to_check(tmp_path):
    # the resolver's own answer, without asking a DNS server (none in CI)
    from kdtui.remote.connect import _unreachable, resolve_target

    config = tmp_path / "ssh_config"
    config.write_text("Host gpu1\n  HostName gpu1.example.invalid\n")
    target = resolve_target(HostConfig("gpu1", ssh_config=(str(config),)), None)
    reason = _unreachable(socket.gaierror(-2, "Name or service not known"), target)
    assert reason == (f"no such host name (Name or service not known): check HostName in "
                      f"{config} for gpu1")


def test_a_config_problem_is_not_retried_as_a_lost_link(sshd, tmp_path):
    config = ssh_config(sshd, tmp_path, identity=str(tmp_path / "no_such_key"))
    source = SSHRunSource(HostConfig("loc", ssh_config=(str(config),)), str(tmp_path / "run"),
                          give_up_after=60)
    began = time.monotonic()
    with pytest.raises(SSHConfigError, match="IdentityFile"):
        asyncio.run(source.read("events.jsonl", 0, 100))
    assert time.monotonic() - began < 5


def test_headless_dispatch_prints_the_config_problem_in_one_line(sshd, remote_env, tmp_path,
                                                                 monkeypatch, capsys):
    config = ssh_config(sshd, tmp_path, known_hosts=str(tmp_path / "missing"))
    monkeypatch.setenv("KDTUI_SSH_CONFIG", str(config))  # loc is not in the hosts file
    code = kdtui_main(["launch", "--headless", "--host", "loc", "--demo", "--run-name", "cfg-1"])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "host key of loc" in out and "is unknown" in out and "cannot reach" not in out


class socket_port:
    """A port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
