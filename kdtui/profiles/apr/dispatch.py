"""Dispatch aprender's `apr distill` to a GPU host over SSH, on kdtui's remote machinery.

    preflight  connect (host key checked), upload kdtui's agent, find git/cargo/python, run state
    sync       the agent fetches GIT_REF of the aprender repo; `cargo build --release -p apr-cli
               --features cuda,training` (skipped with build = false: apr as installed)
    version    `apr --version`
    check      `apr distill --help` must list every flag kdtui passes (schema.check_against_help)
    models     `apr pull` of teacher and student; the path apr prints is the checkpoint used
    launch     the agent starts `apr distill ...` detached, output into RUN_DIR/launch.log, then
               the run must still be alive a few seconds later, else the log tail is the error
    manifest   dispatch.json: the run, the exact apr command, applied and NOT-applied values

Connection, quoting (`remote_command`: argv lists, every word shlex-quoted), the stage runner,
the agent's gitsync/launch/tail and the manifest writer are kdtui.remote's. What is apr's own:
apr writes no events.jsonl (kdtui.profiles.apr.watch parses launch.log instead), and its process
is recognised by a marker word in its wrapper's argv, not by the kdengine module name. The small
shell scripts below are constants; every value reaches them as a quoted positional argument.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from kdengine.config import RunConfig
from kdtui.launch.base import StageUpdate
from kdtui.profiles.apr.schema import (
    AprInvocation,
    AprSettings,
    build_invocation,
    check_against_help,
)
from kdtui.profiles.apr.watch import ALIVE_CHECK_EVERY, AprEventsSource, AprRunFollower
from kdtui.remote.command import RemoteCommand, remote_command
from kdtui.remote.connect import RemoteError, open_connection, run_agent, run_command
from kdtui.remote.hosts import HostConfig, get_host
from kdtui.remote.manifest import (
    FALSIFIER,
    local_git_commit,
    manifest_path,
    read_manifest,
    utc_now,
    write_manifest,
)
from kdtui.remote.source import SSHRunSource
from kdtui.remote.stages import (
    TAIL_LINES,
    HostAttempt,
    StageFailed,
    StageRecord,
    StageRunner,
    agent_filename,
    agent_source,
)

STAGES = ("preflight", "sync", "version", "check", "models", "launch", "manifest")
PROFILE = "apr"
EXIT_FILE = "apr.exit"
MARKER = "kdtui-apr-run"  # the wrapper shell's $0: how a pid is known to be this run's apr
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PULLED_PATH = re.compile(r"^\s*Path:\s*(\S.*?)\s*$")

# Started detached by the agent: runs apr, then writes its exit code beside launch.log. $1 is the
# run dir, the rest is apr's argv; `"$@"` runs it with every word exactly as sent.
WRAPPER_SH = 'd=$1; shift; "$@"; code=$?; echo "$code" > "$d/apr.exit"; exit "$code"'

# $1 run dir, $2 "cancel" or nothing. Alive = the pid in engine.pid lives, is no zombie, and its
# argv holds the marker (a recycled pid belongs to someone else).
STATUS_SH = r"""d=$1
pid=$(cat "$d/engine.pid" 2>/dev/null)
case "$pid" in ''|*[!0-9]*) pid='' ;; esac
alive=0
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  if [ -r "/proc/$pid/cmdline" ]; then
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    if [ "$state" != Z ] && tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qx 'kdtui-apr-run'
    then alive=1; fi
  else
    alive=1
  fi
fi
sent=0
# the wrapper leads its process group (the agent starts it in a new session); dash's kill takes
# no "--", and "-PID" names the group. SIGTERM kills the wrapper before it can write apr.exit,
# so apr.cancelled says, to every later watch, that the run was cancelled (not killed)
if [ "$2" = cancel ] && [ "$alive" = 1 ]; then
  : > "$d/apr.cancelled" 2>/dev/null
  if kill -TERM "-$pid" 2>/dev/null; then sent=1; else rm -f "$d/apr.cancelled"; fi
fi
dir=0; [ -d "$d" ] && dir=1
cancelled=0; [ -e "$d/apr.cancelled" ] && cancelled=1
printf 'pid=%s\nalive=%s\nexit=%s\nlog_bytes=%s\nsent=%s\nrun_dir=%s\ncancelled=%s\n' \
  "$pid" "$alive" "$(cat "$d/apr.exit" 2>/dev/null)" \
  "$(wc -c < "$d/launch.log" 2>/dev/null | tr -d ' ')" "$sent" "$dir" "$cancelled"
"""

# $@ = tool names; answers tool.NAME=path (empty when missing), host and home.
PROBE_SH = r"""for tool in "$@"; do
  printf 'tool.%s=%s\n' "$tool" "$(command -v "$tool" 2>/dev/null)"
done
printf 'host=%s\nhome=%s\n' "$(uname -n)" "$HOME"
"""


def parse_key_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def status_from_text(text: str) -> dict[str, Any]:
    """STATUS_SH's answer as {pid, alive, exit_code, log_bytes, sent, run_dir_exists,
    cancelled}."""
    kv = parse_key_values(text)

    def num(key: str) -> int | None:
        value = kv.get(key, "")
        return int(value) if value.lstrip("-").isdigit() else None
    return {"pid": num("pid"), "alive": kv.get("alive") == "1", "exit_code": num("exit"),
            "log_bytes": num("log_bytes"), "sent": kv.get("sent") == "1",
            "run_dir_exists": kv.get("run_dir", "1") == "1",
            "cancelled": kv.get("cancelled") == "1"}


def is_host_path(spec: str) -> bool:
    """A model spec that names a file on the host (used as is) rather than a ref to `apr pull`."""
    return spec.startswith(("/", "./", "../", "~/"))


def pulled_path(lines: list[str]) -> str | None:
    """The checkpoint `apr pull` reports: its last `  Path: ...` line (colours stripped)."""
    found = None
    for line in lines:
        match = _PULLED_PATH.match(_ANSI.sub("", line))
        if match:
            found = match.group(1)
    return found


@dataclass(frozen=True)
class AprPlan:
    """Every path and command of one apr run on one host; pure data, touches nothing."""

    host: HostConfig
    config: RunConfig  # run_name and run_dir set
    settings: AprSettings

    @classmethod
    def make(cls, host: HostConfig, config: RunConfig, settings: AprSettings) -> AprPlan:
        if not config.run_name:
            raise ValueError("the plan needs a run name (stamp it first)")
        if not config.run_dir:
            config = config.with_values(run_dir=host.run_dir(config.run_name))
        plan = cls(host, config, settings)
        plan.invocation()  # bad input fails here, before any connection, naming the field
        return plan

    # -- paths ---------------------------------------------------------------------------------
    @property
    def run_dir(self) -> str:
        return self.config.run_dir

    @property
    def src_dir(self) -> str:
        key = hashlib.sha256(self.settings.repo_url.encode()).hexdigest()[:12]
        return self.host.path("apr-src", key)

    @property
    def apr_bin(self) -> str:
        if self.settings.apr_bin:
            return self.settings.apr_bin
        return f"{self.src_dir}/target/release/apr" if self.settings.build else "apr"

    @property
    def agent_path(self) -> str:
        return self.host.path(".kdtui", agent_filename())

    def invocation(self, *, teacher: str | None = None, student: str | None = None,
                   omit_optional: frozenset[str] = frozenset()) -> AprInvocation:
        return build_invocation(self.config, self.settings, teacher=teacher, student=student,
                                omit_optional=omit_optional)

    # -- commands ------------------------------------------------------------------------------
    def _cmd(self, purpose: str, argv: list[str], *, env: bool = True) -> RemoteCommand:
        return remote_command(purpose, argv, setup=self.host.env_setup,
                              env=dict(self.host.env) if env else None)

    def probe(self) -> RemoteCommand:
        tools = [self.host.python] + (["git", "cargo"] if self.settings.build else
                                      [self.apr_bin])
        return self._cmd("probe the host", ["sh", "-c", PROBE_SH, "kdtui-probe", *tools],
                         env=False)

    def gitsync(self) -> RemoteCommand:
        return self._cmd(f"fetch {self.settings.git_ref} of {self.settings.repo_url}",
                         [self.host.python, self.agent_path, "gitsync", "--src-dir",
                          self.src_dir, "--url", self.settings.repo_url, "--ref",
                          self.settings.git_ref], env=False)

    def build(self) -> RemoteCommand:
        argv = ["cargo", "build", "--release", "--manifest-path", f"{self.src_dir}/Cargo.toml",
                "-p", self.settings.cargo_package]
        if self.settings.cargo_features:
            argv += ["--features", self.settings.cargo_features]
        return self._cmd("build apr", argv)

    def version(self) -> RemoteCommand:
        return self._cmd("apr --version", [self.apr_bin, "--version"])

    def help(self) -> RemoteCommand:
        return self._cmd("apr distill --help", [self.apr_bin, "distill", "--help"])

    def pull(self, spec: str) -> RemoteCommand:
        return self._cmd(f"apr pull {spec}", [self.apr_bin, "pull", spec])

    def exists(self, path: str) -> RemoteCommand:
        return self._cmd(f"is {path} there", ["test", "-f", path], env=False)

    def launch(self, invocation: AprInvocation) -> RemoteCommand:
        env = ["env", *(f"{k}={v}" for k, v in self.host.env)] if self.host.env else []
        # `env K=V` execs the wrapper (same pid): apr inherits the host's env, and no value of
        # it (a token) stays in the wrapper's argv, which `ps` shows for the run's whole life
        argv = [self.host.python, self.agent_path, "launch", "--run-dir", self.run_dir, "--",
                *env, "sh", "-c", WRAPPER_SH, MARKER, self.run_dir, self.apr_bin,
                *invocation.args]
        return self._cmd("start apr distill detached", argv, env=False)

    def status(self, *, cancel: bool = False) -> RemoteCommand:
        return self._cmd("cancel the run" if cancel else "run status",
                         ["sh", "-c", STATUS_SH, "kdtui-status", self.run_dir,
                          "cancel" if cancel else ""], env=False)

    def tail(self, lines: int = TAIL_LINES) -> RemoteCommand:
        return self._cmd("log tail", [self.host.python, self.agent_path, "tail", "--run-dir",
                                      self.run_dir, "--lines", str(lines)], env=False)

    def dry_run(self) -> list[str]:
        """The whole plan, each remote command exactly as it will be sent."""
        inv = self.invocation()
        lines = [f"host {self.host.alias}: work dir {self.host.work_dir}, apr profile",
                 f"  run {self.config.run_name} in {self.run_dir}",
                 "  [preflight] connect (host key checked against known_hosts)",
                 f"  [preflight] sftp put kdtui agent -> {self.agent_path}",
                 f"  [preflight] $ {self.probe().shown}",
                 f"  [preflight] $ {self.status().shown}"]
        if self.settings.build:
            lines += [f"  [sync] $ {self.gitsync().shown}", f"  [sync] $ {self.build().shown}"]
        else:
            lines.append(f"  [sync] skipped: build = false, {self.apr_bin} as installed")
        lines += [f"  [version] $ {self.version().shown}",
                  f"  [check] $ {self.help().shown}  (must list: "
                  + ", ".join(a for a in inv.args if a.startswith("--")) + ")"]
        for name in ("teacher", "student"):
            spec = getattr(self.config, name)
            lines.append(f"  [models] $ {self.exists(spec).shown}" if is_host_path(spec) else
                         f"  [models] $ {self.pull(spec).shown}  (then the printed Path)")
        lines.append(f"  [launch] $ {self.launch(inv).shown}")
        lines.append(f"  [launch] after {self.host.alive_check_s:g}s: $ {self.status().shown}")
        lines.append(f"  [launch] if it died: $ {self.tail().shown}")
        lines += [f"  {line}" for line in inv.lines()]
        return lines


# -- the stages ----------------------------------------------------------------------------------
class AprStageRunner(StageRunner):
    """kdtui.remote's StageRunner (reporting, records, connection) with apr's stages."""

    plan: AprPlan  # type: ignore[assignment]

    def __init__(self, plan: AprPlan, on_stage: Callable[[StageUpdate], None]) -> None:
        super().__init__(plan, on_stage)  # type: ignore[arg-type]
        self.omit_optional: frozenset[str] = frozenset()
        self.models: dict[str, str] = {}
        self.apr_version: str | None = None
        self.run_state: dict[str, Any] = {}

    async def _run(self, command: RemoteCommand, sink: Callable[[str], None] | None,
                   timeout: float | None, *, show: bool = True):
        assert self.conn is not None
        if show and sink:
            sink(f"$ {command.shown}")
        return await run_command(self.conn, command, sink, timeout=timeout)

    async def preflight(self) -> dict[str, Any]:  # type: ignore[override]
        async def body(started: float):
            sink = self.line_sink("preflight", started)
            plan = self.plan
            try:
                self.conn = await open_connection(plan.host)
            except RemoteError as exc:
                raise StageFailed(str(exc), fallback_ok=True) from None
            sink(f"connected to {plan.host.alias} as {self.conn.get_extra_info('username')}")
            try:
                async with self.conn.start_sftp_client() as sftp:
                    await sftp.makedirs(plan.host.agent_dir, exist_ok=True)
                    if not await sftp.exists(plan.agent_path):
                        await _put_bytes(sftp, agent_source(), plan.agent_path,
                                         plan.host.alias)
                probe = await self._run(plan.probe(), None, 60, show=False)
                state = await self._run(plan.status(), None, 60, show=False)
            except (asyncssh.Error, OSError) as exc:
                raise StageFailed(f"{plan.host.alias}: preflight failed: {exc}",
                                  fallback_ok=True) from None
            except RemoteError as exc:  # the agent upload's own line (a full disk)
                raise StageFailed(str(exc), exc.output, fallback_ok=True) from None
            info = parse_key_values(probe.stdout)
            tools = {k[5:]: v for k, v in info.items() if k.startswith("tool.")}
            for tool, path in tools.items():
                sink(f"{tool}: {path or 'NOT FOUND'}")
            missing = [t for t, p in tools.items() if not p]
            if missing:
                raise StageFailed(
                    f"{plan.host.alias} lacks {', '.join(missing)} on PATH: install "
                    + ("it" if len(missing) == 1 else "them")
                    + ", or add its directory to PATH in the host's env_setup "
                    "(e.g. \"export PATH=$HOME/.cargo/bin:$PATH\")", fallback_ok=True)
            self.run_state = status_from_text(state.stdout)
            self.attempt.probe = {"host": info.get("host"), "home": info.get("home"),
                                  "tools": tools, "run": self.run_state}
            if not self.run_state["alive"] and (self.run_state["log_bytes"] or 0) > 0:
                # a run dir the user gave is not changed by another name: name what is
                other = ("--run-name" if plan.run_dir == plan.host.run_dir(plan.config.run_name)
                         else "--run-dir")
                raise StageFailed(f"{plan.run_dir} on {plan.host.alias} already holds a run "
                                  f"(its launch.log is not empty): pick another {other}")
            return "done", f"{info.get('host')}: " + ", ".join(tools), self.attempt.probe
        return await self.stage("preflight", body)

    async def sync(self) -> None:  # type: ignore[override]
        async def body(started: float):
            plan = self.plan
            if not plan.settings.build:
                return "skipped", f"build = false: {plan.apr_bin} as installed"
            sink = self.line_sink("sync", started)
            sink(f"$ {plan.gitsync().shown}")
            answer = await run_agent(self.conn, plan.gitsync(), sink, timeout=900)
            self.attempt.commit = answer.get("commit")
            result = await self._run(plan.build(), sink, None)
            if result.exit_status != 0:
                raise StageFailed(f"cargo build failed on {plan.host.alias} (exit "
                                  f"{result.exit_status}): {_last(result.stderr_lines)}",
                                  result.stderr_lines[-TAIL_LINES:])
            return "done", (f"{plan.settings.git_ref} = {str(self.attempt.commit)[:12]}, built "
                            f"{plan.apr_bin} (--features {plan.settings.cargo_features})")
        await self.stage("sync", body)

    async def version(self) -> None:
        async def body(started: float):
            sink = self.line_sink("version", started)
            result = await self._run(self.plan.version(), sink, 60)
            lines = result.stdout.strip().splitlines()
            for line in lines:
                sink(line)
            if result.exit_status != 0 or not lines:
                raise StageFailed(f"`{self.plan.apr_bin} --version` failed on "
                                  f"{self.plan.host.alias} (exit {result.exit_status}): "
                                  f"{_last(result.stderr_lines)}", result.stderr_lines)
            self.apr_version = lines[0].strip()
            return "done", self.apr_version
        await self.stage("version", body)

    async def check(self) -> None:  # type: ignore[override]
        async def body(started: float):
            sink = self.line_sink("check", started)
            result = await self._run(self.plan.help(), sink, 60)
            if result.exit_status != 0:
                raise StageFailed(f"`apr distill --help` failed on {self.plan.host.alias} "
                                  f"(exit {result.exit_status}): {_last(result.stderr_lines)}",
                                  result.stderr_lines)
            check = check_against_help(result.stdout)
            message = check.message(self.plan.host.alias)
            if not check.ok:
                raise StageFailed(message, result.stdout.splitlines()[-TAIL_LINES:])
            self.omit_optional = frozenset(check.missing)
            for line in self.plan.invocation(omit_optional=self.omit_optional).lines():
                sink(line)  # what reaches apr and what does not, before anything starts
            return "done", message
        await self.stage("check", body)

    async def pull_models(self) -> None:
        async def body(started: float):
            sink = self.line_sink("models", started)
            done: list[str] = []
            for name in ("teacher", "student"):
                spec = getattr(self.plan.config, name)
                if is_host_path(spec):
                    path = spec
                else:
                    result = await self._run(self.plan.pull(spec), sink, None)
                    out_lines = result.stdout.splitlines()
                    for line in out_lines:
                        sink(_ANSI.sub("", line))
                    if result.exit_status != 0:
                        raise StageFailed(f"{name}: `apr pull {spec}` failed (exit "
                                          f"{result.exit_status}): "
                                          f"{_last(result.stderr_lines or out_lines)}",
                                          (result.stderr_lines or out_lines)[-TAIL_LINES:])
                    path = pulled_path(out_lines)
                    if path is None:
                        raise StageFailed(f"{name}: `apr pull {spec}` printed no 'Path:' line, "
                                          "so the checkpoint is unknown; give the "
                                          f"{name} as a path on the host instead")
                found = await self._run(self.plan.exists(path), None, 60, show=False)
                if found.exit_status != 0:
                    raise StageFailed(f"{name}: {path} is not a file on {self.plan.host.alias}")
                if not path.endswith(".apr"):
                    sink(f"warning: {name} {path} is not an .apr file; apr distill --backend "
                         "cuda reads .apr checkpoints")
                self.models[name] = path
                done.append(f"{name} {path}")
            return "done", "; ".join(done)
        await self.stage("models", body)

    async def launch(self, invocation: AprInvocation) -> int:  # type: ignore[override]
        async def body(started: float):
            sink = self.line_sink("launch", started)
            plan = self.plan
            command = plan.launch(invocation)
            sink(f"$ {command.shown}")
            answer = await run_agent(self.conn, command, sink, timeout=60)
            pid = int(answer["pid"])
            self.attempt.pid = pid
            sink(f"apr pid {pid}; checking it is alive in {plan.host.alive_check_s:g}s")
            await asyncio.sleep(plan.host.alive_check_s)
            state = status_from_text((await self._run(plan.status(), None, 60,
                                                      show=False)).stdout)
            if state["alive"]:
                return "done", f"pid {pid}, alive after {plan.host.alive_check_s:g}s", pid
            tail = (await run_agent(self.conn, plan.tail(), timeout=60)).get("lines", [])
            if state["exit_code"] == 0:
                return "done", f"pid {pid}, already finished (exit 0)", pid
            last = next((line for line in reversed(tail) if line.strip()), "no output")
            code = state["exit_code"]
            raise StageFailed(f"apr distill exited within {plan.host.alive_check_s:g}s"
                              + (f" (exit code {code})" if code is not None else "")
                              + f": {last}", tail)
        return await self.stage("launch", body)


def _last(lines: list[str]) -> str:
    return next((line for line in reversed(lines) if line.strip()), "no output")


async def _put_bytes(sftp: asyncssh.SFTPClient, data: bytes, path: str,
                     where: str = "the host") -> None:
    from kdtui.remote.stages import _put_bytes as put  # temp name + rename, as the agent upload

    await put(sftp, data, path, where)


def apr_resume_refusal(manifest: Path) -> str | None:
    """Why `kdtui resume` (or R) cannot continue the run of `manifest`, when it is an apr run
    (None for any other): apr distill has no resume from its checkpoints that kdtui drives."""
    try:
        data = read_manifest(manifest)
    except (OSError, ValueError):
        return None  # the resumer says what is wrong with the file
    if data.get("profile") != PROFILE:
        return None
    return (f"{data.get('run_id')} is an apr distill run: apr has no resume from its "
            "checkpoints that kdtui can drive; start it again under a new name "
            "(kdtui launch --profile apr --run-name NEW ...)")


# -- the launcher and its handle -------------------------------------------------------------------
class AprDispatchError(RemoteError):
    """The apr dispatch failed; the message says on which stage and why."""


@dataclass
class AprRunHandle:
    """An apr run on an SSH host: follow its launch.log, ask its status, cancel it."""

    run_id: str
    host: str
    run_dir: str
    plan: AprPlan
    link: SSHRunSource  # SFTP reads and commands, reconnecting by itself
    epochs: int
    pid: int | None = None
    manifest: Path | None = None
    attempts: list[HostAttempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        # what the run screen and RunFollower read: launch.log as is, events.jsonl parsed from it
        self.source = AprEventsSource(self.link, epochs=self.epochs, status=self.status)

    async def _sh(self, command: RemoteCommand) -> dict[str, Any]:
        result = await self.link.with_link(lambda conn: run_command(conn, command, timeout=60))
        return status_from_text(result.stdout)

    async def status(self) -> dict[str, Any]:
        """{pid, alive, exit_code (None while running or when killed), log_bytes}."""
        return await self._sh(self.plan.status())

    async def cancel(self) -> dict[str, Any]:
        """SIGTERM to apr's process group (the wrapper leads it); answers the status before."""
        state = await self._sh(self.plan.status(cancel=True))
        if state["alive"] and not state["sent"]:
            raise RemoteError(f"could not signal apr (pid {state['pid']}) on {self.host}")
        return state

    async def log_tail(self, lines: int = TAIL_LINES) -> list[str]:
        answer = await self.link.with_link(
            lambda conn: run_agent(conn, self.plan.tail(lines), timeout=60))
        return answer.get("lines", [])

    def follower(self, alive_every: float = ALIVE_CHECK_EVERY) -> AprRunFollower:
        """A fresh follower of the whole run (its own parse of launch.log from the start)."""
        return AprRunFollower(self.link, epochs=self.epochs, status=self.status,
                              alive_every=alive_every)

    def reattach_hint(self) -> str:
        return f"kdtui watch {self.run_id}"

    def extra(self) -> dict[str, Any]:
        return {"pid": self.pid, "manifest": str(self.manifest) if self.manifest else None,
                "remote_run_dir": self.run_dir, "reconnects": self.link.reconnects,
                "profile": PROFILE}

    async def close(self) -> None:
        await self.link.close()

    @classmethod
    def from_manifest(cls, path: Path,
                      on_status: Callable[[str], None] | None = None) -> AprRunHandle:
        """Reattach to a dispatched apr run from its dispatch.json."""
        data = read_manifest(path)
        if data.get("profile") != PROFILE:
            raise AprDispatchError(f"{path} is not an apr run's manifest")
        if not data.get("launched"):
            raise AprDispatchError(f"{path}: this dispatch never started a run "
                                   f"({data.get('error') or 'no launch recorded'})")
        host = get_host(data["host"])
        plan = AprPlan.make(host, RunConfig.from_mapping(data["config"]),
                            AprSettings.from_mapping(data["apr_settings"]))
        source = SSHRunSource(host, data["remote_run_dir"], on_status=on_status)
        return cls(run_id=data["run_id"], host=host.alias, run_dir=data["remote_run_dir"],
                   plan=plan, link=source, epochs=int(data.get("epochs") or 0) or 1,
                   pid=data.get("pid"), manifest=path)


class AprLauncher:
    """kdtui's Launcher for `apr distill` on an SSH host. `stages` are shown before start."""

    stages: tuple[str, ...] = STAGES

    def __init__(self, config: RunConfig, host: str | HostConfig,
                 settings: AprSettings | None = None, *, evidence_dir: Path | None = None,
                 on_status: Callable[[str], None] | None = None) -> None:
        from kdtui.launch.remote import stamp_run_name

        self.config = stamp_run_name(config)
        self.host = host if isinstance(host, HostConfig) else get_host(host)
        self.settings = settings or AprSettings()
        # bad input (teacher == student, device=cpu...) raises ConfigError here, naming the field
        self.plan = AprPlan.make(self.host, self.config, self.settings)
        self.evidence_dir = evidence_dir
        self.on_status = on_status
        self.attempts: list[HostAttempt] = []
        self.invocation: AprInvocation | None = None

    @property
    def run_id(self) -> str:
        return self.config.run_name

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.run_id, self.evidence_dir)

    def dry_run(self) -> list[str]:
        return [f"run {self.run_id}: apr distill (profile apr)", *self.plan.dry_run(),
                f"manifest: {self.manifest_path}"]

    async def start(self, on_stage: Callable[[StageUpdate], None]) -> AprRunHandle:
        runner = AprStageRunner(self.plan, on_stage)
        self.attempts.append(runner.attempt)
        try:
            await runner.preflight()
            if runner.run_state.get("alive"):
                pid = int(runner.run_state["pid"])
                for stage in ("sync", "version", "check", "models"):
                    runner.skip(stage, f"{self.run_id} is already running")
                runner.attempt.pid = pid
                runner.attempt.reattached = True
                runner.skip("launch", f"already running as pid {pid}: reattached, no copy "
                            "started")
                self.invocation = self.plan.invocation()
            else:
                await runner.sync()
                await runner.version()
                await runner.check()
                await runner.pull_models()
                self.invocation = self.plan.invocation(
                    teacher=runner.models.get("teacher"), student=runner.models.get("student"),
                    omit_optional=runner.omit_optional)
                pid = await runner.launch(self.invocation)
        except (RemoteError, OSError, asyncssh.Error) as exc:
            runner.attempt.error = str(exc)
            await runner.close()
            self._write(runner, None, error=str(exc))
            raise AprDispatchError(str(exc), getattr(exc, "output", None)) from None
        started = time.monotonic()
        on_stage(StageUpdate("manifest", "running", host=self.host.alias))
        path = self._write(runner, pid)
        elapsed = time.monotonic() - started
        on_stage(StageUpdate("manifest", "done", elapsed, str(path), host=self.host.alias))
        runner.attempt.stages.append(StageRecord("manifest", "done", elapsed, str(path)))
        write_manifest(path, {**read_manifest(path),
                              "attempts": [a.to_dict() for a in self.attempts]})
        source = SSHRunSource(self.host, self.plan.run_dir, conn=runner.conn,
                              on_status=self.on_status)
        runner.conn = None  # the source owns the connection from here on
        return AprRunHandle(run_id=self.run_id, host=self.host.alias, run_dir=self.plan.run_dir,
                            plan=self.plan, link=source, epochs=self.invocation.epochs,
                            pid=pid, manifest=path, attempts=self.attempts)

    def _write(self, runner: AprStageRunner, pid: int | None, *,
               error: str | None = None) -> Path:
        path = self.manifest_path
        if runner.attempt.reattached and path.is_file():
            previous = read_manifest(path)
            if previous.get("launched"):
                previous.setdefault("reattached_at", []).append(utc_now())
                return write_manifest(path, previous)
        plan = self.plan
        home = (runner.attempt.probe or {}).get("home")
        remote_run_dir = plan.run_dir if plan.run_dir.startswith("/") or not home else \
            f"{home}/{plan.run_dir}"
        invocation = self.invocation or plan.invocation()
        git = local_git_commit()
        data = {
            "run_id": self.run_id,
            "profile": PROFILE,
            "engine": "apr distill",
            "falsifier": FALSIFIER,
            "loss_kind": "train_batch",  # apr has no held-out eval: the verdict says so
            "launched": pid is not None,
            "error": error,
            "host": plan.host.alias,
            "remote_host": (runner.attempt.probe or {}).get("host"),
            "remote_run_dir": remote_run_dir,
            "remote_log": f"{remote_run_dir}/launch.log",
            "pid": pid,
            "apr_version": runner.apr_version,
            "apr_settings": plan.settings.to_dict(),
            "remote_git_commit": runner.attempt.commit,
            "git_commit": git["commit"],
            "git_dirty": git["dirty"],
            "engine_command": [plan.apr_bin, *invocation.args],
            "models": runner.models,
            "config": plan.config.to_dict(),
            **{k: v for k, v in invocation.manifest().items() if k != "engine"},
            "attempts": [a.to_dict() for a in self.attempts],
            "dispatched_at": utc_now(),
            "verdict": None,
        }
        return write_manifest(path, data)
