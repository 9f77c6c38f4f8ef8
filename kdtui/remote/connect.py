"""Open an SSH connection the safe way and run RemoteCommands on it.

The host key is always checked against known_hosts (the ssh config's UserKnownHostsFile, else
~/.ssh/known_hosts); an unknown or changed key is refused with its fingerprint and how to trust
it. Authentication is keys or the agent, as ssh(1) does it; kdtui never asks for, stores or logs
a password or key. Connect timeout and keepalive are always set, so a dead link is noticed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from kdtui.remote.command import RemoteCommand
from kdtui.remote.hosts import HostConfig

# Errors that mean "the link is gone" (as opposed to "the command failed").
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncssh.DisconnectError, asyncssh.ConnectionLost, asyncssh.ChannelOpenError, OSError,
    asyncio.TimeoutError, EOFError, BrokenPipeError,
)


def link_reason(exc: BaseException) -> str:
    """A dropped link's error as a few words ('ChannelOpenError: SSH connection closed')."""
    text = str(getattr(exc, "reason", "") or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class RemoteError(Exception):
    """A remote step failed; the message is one line that says what and what to do."""

    def __init__(self, message: str, output: list[str] | None = None) -> None:
        super().__init__(message)
        self.output = output or []


class HostKeyRefused(RemoteError):
    pass


class ConnectFailed(RemoteError):
    pass


def _options(host: HostConfig) -> asyncssh.SSHClientConnectionOptions:
    return asyncssh.SSHClientConnectionOptions(
        host=host.alias, config=list(host.ssh_config) if host.ssh_config else (),
        connect_timeout=host.connect_timeout, keepalive_interval=host.keepalive_interval,
        keepalive_count_max=host.keepalive_count_max,
        # never offer a password prompt: kdtui runs unattended and stores no secrets
        password=None, kbdint_auth=False, agent_forwarding=False,
    )


def _where(host: HostConfig) -> tuple[str, int, Any]:
    """HostName, Port and known_hosts files the ssh config resolves the alias to."""
    try:
        opts = asyncssh.SSHClientConnectionOptions(
            host=host.alias, config=list(host.ssh_config) if host.ssh_config else ())
        return str(getattr(opts, "host", host.alias) or host.alias), \
            int(getattr(opts, "port", 22) or 22), getattr(opts, "known_hosts", ())
    except Exception:  # only used for messages
        return host.alias, 22, ()


async def _host_key_message(host: HostConfig) -> str:
    hostname, port, known = _where(host)
    port_part = f"-p {port} " if port != 22 else ""
    target = f"[{hostname}]:{port}" if port != 22 else hostname
    files = [str(k) for k in known] if isinstance(known, (list, tuple)) and known else \
        ["~/.ssh/known_hosts"]
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(
            host.alias, config=list(host.ssh_config) if host.ssh_config else ()),
            host.connect_timeout)
        fingerprint = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}" if key else "?"
    except Exception as exc:  # the message is still useful without the fingerprint
        fingerprint = f"(could not read it: {exc})"
    changed = False
    try:
        known_hosts = asyncssh.read_known_hosts(files)
        trusted = known_hosts.match(hostname, "", port if port != 22 else None)
        changed = bool(trusted[0])
    except Exception:
        changed = False
    if changed:
        return (f"the host key of {host.alias} ({target}) CHANGED: it is now {fingerprint}, "
                f"which {files[0]} does not list. If the box was reinstalled, remove the old key "
                f"(ssh-keygen -R '{target}' -f {files[0]}) and trust the new one; otherwise "
                "someone may be intercepting the connection")
    return (f"the host key of {host.alias} ({target}) is unknown: {fingerprint}. If that is the "
            f"key you expect, trust it: ssh-keyscan {port_part}{hostname} >> {files[0]} "
            f"(then compare with `ssh-keygen -lf` on the box), or `ssh {host.alias}` once and "
            "answer yes")


async def open_connection(host: HostConfig) -> asyncssh.SSHClientConnection:
    """Connect to `host`, or raise HostKeyRefused / ConnectFailed with a one-line reason."""
    hostname, port, _ = _where(host)
    try:
        return await asyncssh.connect(host.alias, options=_options(host))
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyRefused(await _host_key_message(host)) from None
    except asyncssh.PermissionDenied:
        raise ConnectFailed(f"{host.alias} ({hostname}:{port}) refused our keys: add your public "
                            "key to the box's ~/.ssh/authorized_keys, or load it into ssh-agent "
                            "(ssh-add)") from None
    except (asyncio.TimeoutError, TimeoutError):
        raise ConnectFailed(f"{host.alias} ({hostname}:{port}) did not answer within "
                            f"{host.connect_timeout:g}s (connect_timeout in the hosts file)") \
            from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConnectFailed(f"cannot reach {host.alias} ({hostname}:{port}): {reason}") from None
    except asyncssh.Error as exc:
        raise ConnectFailed(f"SSH to {host.alias} failed: {exc.reason}") from None


@dataclass
class CommandResult:
    exit_status: int
    stdout: str
    stderr_lines: list[str]

    def answer(self) -> dict[str, Any]:
        """The agent's JSON answer: its last stdout line."""
        for line in reversed(self.stdout.strip().splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        return {}


async def run_command(conn: asyncssh.SSHClientConnection, command: RemoteCommand,
                      on_line: Callable[[str], None] | None = None,
                      timeout: float | None = None) -> CommandResult:
    """Run one command; stderr lines stream to `on_line` as they come (progress bars too)."""
    process = await conn.create_process(command.text, stdin=asyncssh.DEVNULL, encoding=None)
    stderr_lines: list[str] = []

    async def pump_stderr() -> None:
        pending = b""
        while True:
            chunk = await process.stderr.read(65536)
            if not chunk:
                break
            pending += chunk
            # a carriage return redraws a progress bar: each redraw is a line worth showing
            *parts, pending = pending.replace(b"\r", b"\n").split(b"\n")
            for raw in parts:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    stderr_lines.append(line)
                    if on_line:
                        on_line(line)
        if pending.strip():
            line = pending.decode("utf-8", "replace").rstrip()
            stderr_lines.append(line)
            if on_line:
                on_line(line)

    async def collect() -> tuple[bytes, None]:
        out, _ = await asyncio.gather(process.stdout.read(), pump_stderr())
        await process.wait()
        return out, None

    try:
        out, _ = await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        raise RemoteError(f"{command.purpose}: no answer within {timeout:g}s",
                          stderr_lines[-20:]) from None
    if process.exit_status is None and process.exit_signal is None:
        # the channel closed without an exit status: the link dropped, not the command
        raise asyncssh.ConnectionLost(f"{command.purpose}: the connection closed mid-command")
    status = process.exit_status if process.exit_status is not None else -1
    return CommandResult(status, out.decode("utf-8", "replace"), stderr_lines)


async def run_agent(conn: asyncssh.SSHClientConnection, command: RemoteCommand,
                    on_line: Callable[[str], None] | None = None,
                    timeout: float | None = None) -> dict[str, Any]:
    """Run an agent subcommand and return its JSON answer; a failure raises RemoteError."""
    result = await run_command(conn, command, on_line, timeout)
    answer = result.answer()
    if result.exit_status != 0 or not answer.get("ok"):
        reason = answer.get("error") or (result.stderr_lines[-1] if result.stderr_lines else
                                         f"exit status {result.exit_status}")
        if result.exit_status == 127:
            reason = f"command not found ({reason}); check python/env_setup in the hosts file"
        raise RemoteError(f"{command.purpose}: {reason}", result.stderr_lines[-40:])
    return answer
