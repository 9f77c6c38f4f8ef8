"""Open an SSH connection the safe way and run RemoteCommands on it.

The host key is always checked against known_hosts (the ssh config's UserKnownHostsFile, else
~/.ssh/known_hosts); an unknown or changed key is refused with its fingerprint and how to trust
it. Authentication is keys or the agent, as ssh(1) does it; kdtui never asks for, stores or logs
a password or key. Connect timeout and keepalive are always set, so a dead link is noticed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncssh
import asyncssh.config

from kdtui.remote.command import RemoteCommand
from kdtui.remote.hosts import HostConfig, HostsFileError, get_host

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


class SSHConfigError(RemoteError):
    """The ssh config (or a file it names) is wrong: never retried, it will not fix itself."""


def _config_paths(host: HostConfig) -> list[str]:
    return list(host.ssh_config) if host.ssh_config else []


@dataclass(frozen=True)
class SSHTarget:
    """What the ssh config resolves an alias to, read without loading a key or a known_hosts."""

    alias: str
    hostname: str
    port: int
    config_files: tuple[str, ...]  # the ssh config files read ((): none, asyncssh's defaults)
    known_hosts: tuple[str, ...] | None  # UserKnownHostsFile; None: unset, () for `none`
    global_known_hosts: tuple[str, ...]  # GlobalKnownHostsFile
    identity_files: tuple[str, ...]
    proxied: bool = False  # a ProxyJump or ProxyCommand: the HostName resolves over there
    proxy_jump: str = ""  # the ProxyJump hops, "[user@]host[:port],...", as the config has them

    @property
    def where(self) -> str:
        """'gpu1 (10.0.0.5:2222)': the alias and what it resolves to, for messages."""
        return f"{self.alias} ({self.hostname}:{self.port})"

    def setting_source(self, setting: str) -> str:
        """'UserKnownHostsFile in /home/u/.ssh/config': the file that sets `setting` (the first
        config file when none visibly does, e.g. it comes through an Include)."""
        pattern = re.compile(rf"^\s*{setting}\b", re.IGNORECASE | re.MULTILINE)
        for path in self.config_files:
            try:
                if pattern.search(Path(path).expanduser().read_text(errors="replace")):
                    return f"{setting} in {path}"
            except OSError:
                continue
        return f"{setting} in {self.config_files[0]}" if self.config_files else setting


def _default_config() -> list[str]:
    path = Path("~", ".ssh", "config").expanduser()
    return [str(path)] if os.access(path, os.R_OK) else []


def resolve_target(host: HostConfig, port: int | None = None) -> SSHTarget:
    """The alias's HostName, Port, known_hosts and identity files as ssh config gives them (a
    ProxyJump hop's `:port` given as `port`); a config file that is missing or does not parse
    raises SSHConfigError naming it."""
    paths = _config_paths(host) or _default_config()
    try:
        # client_keys=None, known_hosts=None: read the settings, load none of the files they name
        opts = asyncssh.SSHClientConnectionOptions(
            host=host.alias, port=port or (), config=paths, client_keys=None,
            known_hosts=None)
    except asyncssh.config.ConfigParseError as exc:
        raise SSHConfigError(f"{host.alias}: the ssh config does not parse: {exc}; fix that "
                             "line") from None
    except OSError as exc:
        where = exc.filename or ", ".join(paths)
        what = "does not exist" if isinstance(exc, FileNotFoundError) else \
            f"cannot be read ({exc.strerror or exc})"
        raise SSHConfigError(f"{host.alias}: the ssh config {where} {what}: fix ssh_config in "
                             "the hosts file or $KDTUI_SSH_CONFIG") from None
    config = opts.config

    def files(setting: str) -> tuple[str, ...]:
        return tuple(os.path.expanduser(str(k)) for k in config.get(setting, ()))

    known = config.get("UserKnownHostsFile", None)  # [] is `UserKnownHostsFile none`
    return SSHTarget(host.alias, str(opts.host or host.alias), int(opts.port or 22),
                     tuple(paths), None if known is None else files("UserKnownHostsFile"),
                     files("GlobalKnownHostsFile"), files("IdentityFile"),
                     proxied=bool(config.get("ProxyJump") or config.get("ProxyCommand")),
                     proxy_jump=str(config.get("ProxyJump") or ""))


class UnknownHost(HostsFileError):
    """A --host no ssh config names and whose name does not resolve (a typo): said before
    anything is written or connected to, by a dry run as by a launch."""


def refuse_unknown_host(alias: str, flag: str = "--host") -> None:
    """Raise UnknownHost when `alias` is no Host of the ssh config it is read with (no
    HostName, no proxy) and its name does not resolve: the launch would only fail to reach it
    (`Name or service not known`). A host the ssh config names is left to the connect, and so
    is a broken ssh config (the connect says what is wrong with it)."""
    import socket

    try:
        target = resolve_target(get_host(alias))
    except SSHConfigError:
        return
    if target.hostname != alias or target.proxied:
        return
    try:
        socket.getaddrinfo(alias, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        config = target.config_files[0] if target.config_files else "~/.ssh/config"
        named = f"{flag} {alias}" if flag.startswith("-") else f"{flag}={alias}"
        raise UnknownHost(
            f"{named}: no such host: no ssh config names it and the name does not resolve "
            f"({reason}); check the spelling, or add `Host {alias}` with its HostName (and "
            f"User, Port) to {config}") from None


def _known_hosts_files(target: SSHTarget) -> list[str]:
    """The known_hosts files the host key is checked against, as ssh(1) picks them (the first
    is the one `ssh` adds keys to)."""
    user = [str(Path("~", ".ssh", "known_hosts").expanduser())] if target.known_hosts is None \
        else list(target.known_hosts)
    return user + list(target.global_known_hosts)


def _trusted(target: SSHTarget) -> asyncssh.SSHKnownHosts:
    """The known_hosts entries to check the host key against. A missing file trusts nothing (as
    ssh(1) does; the key is then "unknown"); an unreadable one is an SSHConfigError. Always an
    object, never None or empty bytes: asyncssh reads None as "check nothing" and b'' as "use
    ~/.ssh/known_hosts", and a UserKnownHostsFile that names another file must not do that."""
    text = []
    for path in _known_hosts_files(target):
        try:
            text.append(Path(path).read_text())
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SSHConfigError(
                f"{target.where}: the known_hosts file {path} "
                f"({target.setting_source('UserKnownHostsFile')}) cannot be read: "
                f"{exc.strerror or exc}; fix its permissions (chmod 600 {path})") from None
    try:
        return asyncssh.import_known_hosts("\n".join(text))
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise SSHConfigError(
            f"{target.where}: a known_hosts file of "
            f"{target.setting_source('UserKnownHostsFile')} does not parse: {exc}") from None


def _identity_problem(target: SSHTarget, path: str, exc: BaseException) -> SSHConfigError:
    source = target.setting_source("IdentityFile")
    if isinstance(exc, FileNotFoundError):
        return SSHConfigError(
            f"{target.where}: the key file {path} ({source}) does not exist: correct the path "
            f"there, or make the key (ssh-keygen -t ed25519 -f {path}) and add {path}.pub to "
            "the box's ~/.ssh/authorized_keys")
    if isinstance(exc, OSError):
        return SSHConfigError(
            f"{target.where}: the key file {path} ({source}) cannot be read: "
            f"{exc.strerror or exc}; fix its permissions (chmod 600 {path})")
    return SSHConfigError(f"{target.where}: the key file {path} ({source}) is not a private key "
                          f"kdtui can read: {exc}")


DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")  # what ssh(1) offers unconfigured


def _locked_keys(target: SSHTarget) -> list[str]:
    """The key files that would be offered (IdentityFile, else ssh's defaults) whose private key
    is encrypted: kdtui never asks for a passphrase, so only an ssh-agent holding them can."""
    paths = target.identity_files or tuple(
        str(Path("~", ".ssh", name).expanduser()) for name in DEFAULT_IDENTITIES)
    locked = []
    for path in paths:
        try:
            asyncssh.read_private_key(path)
        except asyncssh.KeyImportError as exc:
            if "passphrase" in str(exc).lower():
                locked.append(path)
        except OSError:
            continue
    return locked


def _refused_message(target: SSHTarget) -> str:
    locked = _locked_keys(target)
    if locked:
        agent = ("the ssh-agent does not hold it" if os.environ.get("SSH_AUTH_SOCK")
                 else "no ssh-agent runs here (SSH_AUTH_SOCK is unset)")
        return (f"{target.where} refused our keys: {locked[0]} is encrypted and {agent}; kdtui "
                f"never asks for a passphrase: load it with `ssh-add {locked[0]}` in an agent "
                "(eval $(ssh-agent)) and start kdtui from that shell")
    return (f"{target.where} refused our keys: add your public key to the box's "
            "~/.ssh/authorized_keys, or load it into ssh-agent (ssh-add)")


async def _auth_refused_message(host: HostConfig, target: SSHTarget,
                                options: asyncssh.SSHClientConnectionOptions,
                                tunnel: asyncssh.SSHClientConnection | None) -> str:
    """Why the box refused us: a box that takes no keys at all (only a password) says so, as
    no key added to authorized_keys would help; otherwise _refused_message."""
    try:
        methods = await asyncio.wait_for(asyncssh.get_server_auth_methods(
            target.hostname, target.port, options.username, tunnel=tunnel,
            config=list(target.config_files)), host.connect_timeout)
    except Exception:  # the usual message is still right more often than not
        methods = ["publickey"]
    if "publickey" in methods:
        return _refused_message(target)
    offered = ", ".join(methods) or "nothing"
    return (f"{target.where} takes no keys for {options.username} (it offers {offered}): kdtui "
            "never sends a password; on the box, set `PubkeyAuthentication yes` in "
            "/etc/ssh/sshd_config (or ask its admin), then add your public key with "
            f"`ssh-copy-id {target.alias}`")


def _key_file_problem(path: str) -> BaseException | None:
    """Why an IdentityFile cannot be offered (asyncssh would skip a file that is no key without
    a word, and the server's refusal would then blame the box). An encrypted key is fine: its
    passphrase is the agent's business, as with ssh(1); so is a public key the agent holds."""
    try:
        asyncssh.read_private_key(path)
    except OSError as exc:
        return exc
    except asyncssh.KeyImportError as exc:
        if "passphrase" in str(exc).lower():
            return None
        try:
            asyncssh.read_public_key(path)
        except (OSError, asyncssh.KeyImportError):
            return exc
    return None


def _options(host: HostConfig, target: SSHTarget, *, user: str | None = None,
             port: int | None = None) -> asyncssh.SSHClientConnectionOptions:
    for path in target.identity_files:
        problem = _key_file_problem(path)
        if problem is not None:
            raise _identity_problem(target, path, problem) from None
    try:
        return asyncssh.SSHClientConnectionOptions(
            host=host.alias, config=list(target.config_files), known_hosts=_trusted(target),
            username=user or (), port=port or (),
            connect_timeout=host.connect_timeout, keepalive_interval=host.keepalive_interval,
            keepalive_count_max=host.keepalive_count_max,
            # never offer a password prompt: kdtui runs unattended and stores no secrets
            password=None, kbdint_auth=False, agent_forwarding=False,
        )
    except (OSError, asyncssh.KeyImportError) as exc:
        path = getattr(exc, "filename", None) or ", ".join(target.identity_files) or "?"
        raise _identity_problem(target, str(path), exc) from None


def _known_hosts_note(target: SSHTarget) -> str:
    """Why nothing is trusted, when that is the ssh config's doing ('' otherwise)."""
    if target.known_hosts == ():
        return (f" ({target.setting_source('UserKnownHostsFile')} is `none`: set it to a file, "
                "kdtui always checks host keys)")
    files = _known_hosts_files(target)
    if any(Path(f).exists() for f in files):
        return ""
    if target.known_hosts is None:
        return f" ({files[0]} does not exist yet)"
    return f" ({target.setting_source('UserKnownHostsFile')}: {files[0]} does not exist yet)"


async def _host_key_message(host: HostConfig, target: SSHTarget,
                            tunnel: asyncssh.SSHClientConnection | None = None) -> str:
    hostname, port = target.hostname, target.port
    port_part = f"-p {port} " if port != 22 else ""
    target_name = f"[{hostname}]:{port}" if port != 22 else hostname
    files = _known_hosts_files(target) or [str(Path("~", ".ssh", "known_hosts").expanduser())]
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(
            target.hostname, target.port, tunnel=tunnel if tunnel is not None else None,
            config=list(target.config_files)), host.connect_timeout)
        fingerprint = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}" if key else "?"
    except Exception as exc:  # the message is still useful without the fingerprint
        fingerprint = f"(could not read it: {exc})"
    changed = False
    try:
        trusted = _trusted(target).match(hostname, "", port if port != 22 else None)
        changed = bool(trusted[0])
    except Exception:
        changed = False
    if changed:
        return (f"the host key of {host.alias} ({target_name}) CHANGED: it is now {fingerprint}, "
                f"which {files[0]} does not list. If the box was reinstalled, remove the old key "
                f"(ssh-keygen -R '{target_name}' -f {files[0]}) and trust the new one "
                f"(ssh-keyscan {port_part}{hostname} >> {files[0]}, after comparing it with "
                "`ssh-keygen -lf` on the box); otherwise someone may be intercepting the "
                "connection")
    mkdir = "" if Path(files[0]).parent.is_dir() else f"mkdir -p {Path(files[0]).parent} && "
    return (f"the host key of {host.alias} ({target_name}) is unknown: {fingerprint}"
            f"{_known_hosts_note(target)}. If that is the key you expect, trust it: "
            f"{mkdir}ssh-keyscan {port_part}{hostname} >> {files[0]} "
            f"(then compare with `ssh-keygen -lf` on the box), or `ssh {host.alias}` once and "
            "answer yes")


def _unreachable(exc: OSError, target: SSHTarget) -> str:
    """Why a connection could not be opened, in words that say what to check."""
    if isinstance(exc, ConnectionRefusedError):
        return (f"connection refused: no SSH server listens on port {target.port} there (is "
                f"sshd running on it? is the port right: {target.setting_source('Port')}?)")
    if isinstance(exc, socket.gaierror):
        return (f"no such host name ({exc.strerror}): check "
                f"{target.setting_source('HostName')} for {target.alias}")
    return exc.strerror or str(exc)


MAX_JUMPS = 8  # ProxyJump hops (through the jumps' own ProxyJump too): more is a loop


def _hop(spec: str) -> tuple[str, str | None, int | None]:
    """'user@host:port' (a ProxyJump hop) as (host, user, port)."""
    user, _, rest = spec.rpartition("@")
    name, colon, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    return name, user or None, int(port) if colon and port.isdigit() else None


async def _open_jumps(host: HostConfig, target: SSHTarget,
                      depth: int) -> asyncssh.SSHClientConnection | None:
    """The connection to tunnel through: the ProxyJump hops, each opened by _connect as a host
    of its own (its ssh config block, its host key checked, its errors its own line, naming the
    host that jumps through it), the later hops through the earlier ones as ssh(1) does."""
    conn = None
    for spec in (h.strip() for h in target.proxy_jump.split(",") if h.strip()):
        name, user, port = _hop(spec)
        try:
            if depth >= MAX_JUMPS:
                raise SSHConfigError(f"more than {MAX_JUMPS} ProxyJump hops: is there a loop?")
            jump = await _connect(replace(host, alias=name), user=user, port=port,
                                  tunnel=conn, depth=depth + 1)
        except RemoteError as exc:  # _connect closed the hops before it
            if str(exc).startswith(f"{target.alias}'s ProxyJump"):
                raise
            raise type(exc)(f"{target.alias}'s ProxyJump {spec} "
                            f"({target.setting_source('ProxyJump')}): {exc}") from None
        conn = jump  # it closes the hops before it when it closes
    return conn


async def _connect(host: HostConfig, *, user: str | None = None, port: int | None = None,
                   tunnel: asyncssh.SSHClientConnection | None = None,
                   depth: int = 0) -> asyncssh.SSHClientConnection:
    target = resolve_target(host, port)
    where = target.where
    options = _options(host, target, user=user, port=port)
    if tunnel is None and target.proxy_jump:
        tunnel = await _open_jumps(host, target, depth)
    try:
        # connect's own host, port and tunnel replace the options' ones; tunnel None: none of
        # asyncssh's making, which would open the config's ProxyJump with asyncssh's defaults
        # (under `UserKnownHostsFile none`, no host key checked there)
        conn = await asyncssh.connect(host.alias, port or (), tunnel=tunnel, options=options)
    except asyncssh.HostKeyNotVerifiable:
        message = await _host_key_message(host, target, tunnel)
        _close(tunnel)
        raise HostKeyRefused(message) from None
    except asyncssh.PermissionDenied:
        message = await _auth_refused_message(host, target, options, tunnel)
        _close(tunnel)
        raise ConnectFailed(message) from None
    except (asyncio.TimeoutError, TimeoutError):
        _close(tunnel)
        raise ConnectFailed(f"{where} did not answer within {host.connect_timeout:g}s "
                            "(connect_timeout in the hosts file)") from None
    except OSError as exc:
        _close(tunnel)
        raise ConnectFailed(f"cannot reach {where}: {_unreachable(exc, target)}") from None
    except asyncssh.Error as exc:
        _close(tunnel)
        raise ConnectFailed(f"SSH to {host.alias} failed: {exc.reason}") from None
    except BaseException:
        _close(tunnel)
        raise
    if tunnel is not None:
        conn.set_tunnel(tunnel)  # closing the connection closes its jumps
    return conn


def _close(conn: asyncssh.SSHClientConnection | None) -> None:
    if conn is not None:
        conn.close()


async def open_connection(host: HostConfig) -> asyncssh.SSHClientConnection:
    """Connect to `host`, or raise HostKeyRefused / SSHConfigError / ConnectFailed with a
    one-line reason. The ssh config and the files it names are read first, so a problem there
    is reported as itself, never as "cannot reach". A ProxyJump host is connected to the same
    way (its host key checked against its known_hosts, keys only), and its problem is its own
    line, naming the host that jumps through it."""
    return await _connect(host)


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
