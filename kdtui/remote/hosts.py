"""GPU hosts: how to reach them comes from ~/.ssh/config (asyncssh reads it); what to do there
comes from kdtui's hosts file: the remote work dir, the python to use, env setup lines.

    # ~/.config/kdtui/hosts.toml  ($KDTUI_HOSTS_FILE, or hosts.toml in $KDTUI_CONFIG_DIR)
    [hosts.gpu1]                 # an alias from ~/.ssh/config (HostName, User, Port, keys)
    work_dir = "kdtui"           # relative to the remote home, or absolute
    python = "python3"           # has torch (and CUDA); "~/x" is under the remote home
    env_setup = ["source /opt/conda/etc/profile.d/conda.sh", "conda activate torch"]
    env = { HF_HOME = "/data/hf" }
    sync = "wheel"               # or "git" with git_url and git_ref

A host missing from the file gets the defaults, and so does every host when there is no file
at the default place. $KDTUI_HOSTS_FILE naming a file that does not exist is an error naming the
variable (a typo must not mean the defaults), unless it names the default place. Unknown keys
are an error naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from kdtui.settings import config_dir

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

LOCAL = "local"
SYNC_MODES = ("wheel", "git")


class HostsFileError(ValueError):
    """The hosts file is unreadable or names a key/value it cannot take."""


@dataclass(frozen=True)
class HostConfig:
    alias: str
    work_dir: str = "kdtui"
    python: str = "python3"
    env_setup: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    sync: str = "wheel"
    git_url: str = ""
    git_ref: str = "main"
    ssh_config: tuple[str, ...] = ()  # empty: asyncssh's default, ~/.ssh/config
    connect_timeout: float = 15.0
    keepalive_interval: float = 10.0
    keepalive_count_max: int = 3
    alive_check_s: float = 3.0  # how long after launch the engine must still be alive
    from_file: bool = field(default=False, compare=False)

    # -- remote paths (relative ones are relative to the remote home: SSH and SFTP start there)
    def path(self, *parts: str) -> str:
        return str(PurePosixPath(self.work_dir, *parts))

    def env_dir(self, build_id: str) -> str:
        return self.path("envs", build_id)

    @property
    def agent_dir(self) -> str:
        return self.path(".kdtui")

    def run_dir(self, run_name: str) -> str:
        return self.path("runs", run_name)


HOSTS_ENV = "KDTUI_HOSTS_FILE"


def hosts_file() -> Path:
    env = os.environ.get(HOSTS_ENV)
    return Path(env).expanduser() if env else config_dir() / "hosts.toml"


def _remote_path(value: str) -> str:
    # "~" does not expand inside a quoted word, and SSH/SFTP already start in the home dir
    if value in ("~", "~/"):
        return "."
    if value.startswith("~/"):
        return value[2:]
    return value


def _remote_program(value: str) -> str:
    # a program under the home ("~/miniconda3/bin/python"): quoted, "~" would be a directory
    # named "~"; "./" keeps a path without another slash from being looked up on PATH
    return "./" + value[2:] if value.startswith("~/") else value


def host_from_mapping(alias: str, values: Mapping[str, Any], where: str = "") -> HostConfig:
    known = {f.name for f in fields(HostConfig)} - {"alias", "from_file"}
    prefix = f"{where}: [hosts.{alias}]" if where else f"host {alias}"
    for key in values:
        if key not in known:
            raise HostsFileError(f"{prefix}: unknown key {key!r} "
                                 f"(known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("env_setup", "ssh_config"):
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise HostsFileError(f"{prefix}: {key} must be a list of strings")
            kwargs[key] = tuple(os.path.expanduser(i) if key == "ssh_config" else i
                                for i in items)
        elif key == "env":
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and k.isidentifier() and isinstance(v, str)
                    for k, v in value.items()):
                raise HostsFileError(f"{prefix}: env must be a table of NAME = \"value\"")
            kwargs[key] = tuple(value.items())
        elif key in ("connect_timeout", "keepalive_interval", "alive_check_s",
                     "keepalive_count_max"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise HostsFileError(f"{prefix}: {key} must be a positive number")
            kwargs[key] = value
        else:
            if not isinstance(value, str) or not value:
                raise HostsFileError(f"{prefix}: {key} must be a non-empty string")
            kwargs[key] = _remote_path(value) if key == "work_dir" else \
                _remote_program(value) if key == "python" else value
    host = HostConfig(alias=alias, from_file=bool(where), **kwargs)
    if host.sync not in SYNC_MODES:
        raise HostsFileError(f"{prefix}: sync must be one of {', '.join(SYNC_MODES)} "
                             f"(got {host.sync!r})")
    if host.sync == "git" and not host.git_url:
        raise HostsFileError(f"{prefix}: sync = \"git\" needs git_url (and git_ref)")
    if host.git_ref.startswith("-"):  # git would take it for an option (--upload-pack=CMD)
        raise HostsFileError(f"{prefix}: git_ref {host.git_ref!r} starts with '-', which no "
                             "branch, tag or commit does: give a branch, tag or commit")
    return host


def load_hosts(path: Path | None = None) -> dict[str, HostConfig]:
    """Every host of the hosts file: none when there is no file at the default place (every
    host gets the defaults), HostsFileError when $KDTUI_HOSTS_FILE names one that is not there."""
    default = config_dir() / "hosts.toml"
    path = path or hosts_file()
    # the variable naming the default place (as test and CI set-ups do) is the default
    named = path == hosts_file() and bool(os.environ.get(HOSTS_ENV)) and path != default
    try:
        text = path.read_text()
    except FileNotFoundError:
        if named:
            raise HostsFileError(
                f"{HOSTS_ENV}={path}: no such file: create it ([hosts.NAME] tables, see "
                f"docs/remote.md), or unset {HOSTS_ENV} to use {default}") from None
        return {}
    except OSError as exc:
        raise HostsFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostsFileError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"hosts"})
    if unknown:
        raise HostsFileError(f"{path}: unknown table {unknown[0]!r} (hosts go under [hosts.NAME])")
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        raise HostsFileError(f"{path}: hosts must be tables, [hosts.NAME]")
    return {alias: host_from_mapping(alias, values, str(path))
            for alias, values in hosts.items()}


def get_host(alias: str, path: Path | None = None) -> HostConfig:
    """The host's settings from the hosts file, or the defaults for an ssh-config-only host.

    $KDTUI_SSH_CONFIG (a path) replaces ~/.ssh/config for hosts that do not name their own.
    """
    if not alias or alias == LOCAL:
        raise HostsFileError("'local' is this machine, not an SSH host")
    host = load_hosts(path).get(alias) or HostConfig(alias=alias)
    env_config = os.environ.get("KDTUI_SSH_CONFIG")
    if env_config and not host.ssh_config:
        from dataclasses import replace

        host = replace(host, ssh_config=(os.path.expanduser(env_config),))
    return host
