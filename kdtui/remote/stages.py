"""The remote dispatch, stage by stage, and the plan that names every command it sends.

    preflight  connect (host key checked), upload the agent, probe python/torch/CUDA/disk/kdengine
    sync       a venv holding exactly this kdengine build (wheel over SFTP, or a git ref)
    check      `kdengine train --check <the exact args>` in that venv: bad args fail here
    models     teacher and student into the remote huggingface_hub cache (no-op when cached)
    launch     start the engine detached (own session, stdin /dev/null, output to launch.log),
               record its pid, and check it is still alive a few seconds later

`RemotePlan` builds every RemoteCommand from the host settings and the run config alone, so the
dry run prints the very strings the stages send. Each stage is idempotent: run again, it finds
its work done and says "skipped".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncssh

from kdengine.config import RunConfig
from kdtui.launch.base import StageUpdate, config_differences, engine_args, engine_launcher
from kdtui.launch.cache_job import launch_ended_note
from kdtui.remote import agent as agent_module
from kdtui.remote.command import RemoteCommand, remote_command
from kdtui.remote.connect import (
    HostKeyRefused,
    RemoteError,
    SSHConfigError,
    link_reason,
    open_connection,
    run_agent,
    run_command,
)
from kdtui.remote.hosts import HostConfig, hosts_file
from kdtui.remote.wheel import WheelBuild

STAGES = ("preflight", "sync", "check", "models", "launch", "manifest")
STAGE_RETRIES = 3  # reconnects within one stage before it fails
RECONNECT_S = 30.0  # how long one reconnect keeps trying
LINK_ERRORS = (asyncssh.Error, OSError, asyncio.TimeoutError, EOFError)
MIN_PYTHON = (3, 10)
TAIL_LINES = 40


def agent_source() -> bytes:
    return Path(agent_module.__file__).read_bytes()


def agent_filename() -> str:
    return f"agent-{hashlib.sha256(agent_source()).hexdigest()[:12]}.py"


class StageFailed(RemoteError):
    """A stage failed. `fallback_ok`: another host could do better (it was the host's fault)."""

    def __init__(self, message: str, output: list[str] | None = None, *,
                 fallback_ok: bool = False, link_lost: bool = False) -> None:
        super().__init__(message, output)
        self.fallback_ok = fallback_ok
        self.link_lost = link_lost  # the link dropped and did not come back: outcome unknown


@dataclass(frozen=True)
class RemotePlan:
    """Every path and command of one run on one host; pure data, touches nothing."""

    host: HostConfig
    config: RunConfig  # effective: run_name and run_dir are set
    wheel: WheelBuild
    gpus: int = 1  # CUDA devices preflight found: more than one launches under torchrun

    @classmethod
    def make(cls, host: HostConfig, config: RunConfig, wheel: WheelBuild) -> RemotePlan:
        if not config.run_name:
            raise ValueError("the plan needs a run name (stamp it first)")
        if not config.run_dir:
            config = config.with_values(run_dir=host.run_dir(config.run_name))
        return cls(host, config, wheel)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def agent_path(self) -> str:
        return self.host.path(".kdtui", agent_filename())

    @property
    def build_id(self) -> str:
        if self.host.sync == "git":
            key = hashlib.sha256(f"{self.host.git_url}\n{self.host.git_ref}".encode()).hexdigest()
            return f"git-{key[:12]}"
        return self.wheel.build_id

    @property
    def env_dir(self) -> str:
        return self.host.env_dir(self.build_id)

    @property
    def engine_python(self) -> str:
        return f"{self.env_dir}/bin/python"

    @property
    def wheel_path(self) -> str:
        return self.host.path(".kdtui", "wheels", self.wheel.build_id, self.wheel.filename)

    @property
    def src_dir(self) -> str:
        return self.host.path("src", self.build_id)

    @property
    def run_dir(self) -> str:
        return self.config.run_dir

    @property
    def engine_argv(self) -> list[str]:
        return [*engine_launcher(self.engine_python, self.gpus, self.config),
                "-m", "kdengine", "train", *engine_args(self.config)]

    # -- commands ------------------------------------------------------------------------------
    def _agent(self, purpose: str, *args: str, python: str | None = None,
               env: bool = False) -> RemoteCommand:
        return remote_command(purpose, [python or self.host.python, self.agent_path, *args],
                              setup=self.host.env_setup, env=dict(self.host.env) if env else None)

    def probe(self) -> RemoteCommand:
        return self._agent("probe the host", "probe", "--work-dir", self.host.work_dir,
                           "--env-dir", self.env_dir, "--build", self.build_id,
                           "--run-dir", self.run_dir)

    def gitsync(self) -> RemoteCommand:
        return self._agent(f"fetch {self.host.git_ref} of {self.host.git_url}", "gitsync",
                           "--src-dir", self.src_dir, "--url", self.host.git_url,
                           "--ref", self.host.git_ref)

    def mkenv(self, build: str | None = None) -> RemoteCommand:
        source = ["--source", self.src_dir] if self.host.sync == "git" else \
            ["--wheel", self.wheel_path]
        return self._agent("make the per-version venv", "mkenv", "--env-dir", self.env_dir,
                           "--build", build or self.build_id, *source)

    def check(self) -> RemoteCommand:
        argv = [self.engine_python, "-m", "kdengine", "train", "--check",
                *engine_args(self.config)]
        return remote_command("check the engine's arguments", argv, setup=self.host.env_setup,
                              env=dict(self.host.env))

    def hub_models(self) -> list[tuple[str, str]]:
        from kdengine.hub import shaped_like_repo_id  # the engine's own notion of a repo id

        return [(name, getattr(self.config, name)) for name in ("teacher", "student")
                if shaped_like_repo_id(getattr(self.config, name))]

    def pull(self) -> RemoteCommand | None:
        models = self.hub_models()
        if not models:
            return None
        return self._agent("pull models into the hub cache", "pull",
                           *(f"{name}={spec}" for name, spec in models),
                           python=self.engine_python, env=True)

    def launch(self, token: str = "", argv: list[str] | None = None) -> RemoteCommand:
        """The detached start; `token` names this launch (sent again after a dropped link, it
        answers the engine it started), `argv` another engine command (a resume's)."""
        token_args = ["--token", token] if token else []
        return self._agent("start the engine detached", "launch", "--run-dir", self.run_dir,
                           *token_args, "--", *self._env_prefix(),
                           *(argv if argv is not None else self.engine_argv))

    def _env_prefix(self) -> list[str]:
        return ["env", *(f"{k}={v}" for k, v in self.host.env)] if self.host.env else []

    def status(self) -> RemoteCommand:
        return self._agent("run status", "status", "--run-dir", self.run_dir)

    def tail(self, lines: int = TAIL_LINES) -> RemoteCommand:
        return self._agent("log tail", "tail", "--run-dir", self.run_dir, "--lines", str(lines))

    def cancel(self) -> RemoteCommand:
        return self._agent("cancel the run", "cancel", "--run-dir", self.run_dir)

    def uploads(self) -> list[tuple[str, str]]:
        """(what, remote path) of each SFTP upload, in order."""
        out = [(f"kdtui agent ({agent_filename()})", self.agent_path)]
        if self.host.sync == "wheel":
            out.append((f"wheel {self.wheel.filename} (sha256 {self.wheel.sha256[:12]})",
                        self.wheel_path))
        return out

    def dry_run(self) -> list[str]:
        """The whole plan for this host, every remote command exactly as it will be sent."""
        up = dict(self.uploads())
        lines = [f"host {self.host.alias}: work dir {self.host.work_dir}, python "
                 f"{self.host.python}, sync {self.host.sync}",
                 f"  run {self.config.run_name} in {self.run_dir} (engine venv {self.env_dir})",
                 "  [preflight] connect (host key checked against known_hosts)",
                 f"  [preflight] sftp put {self.uploads()[0][0]} -> {self.agent_path}",
                 f"  [preflight] $ {self.probe().shown}"]
        if self.host.sync == "git":
            lines.append(f"  [sync] $ {self.gitsync().shown}")
        else:
            wheel_desc = next(k for k in up if k.startswith("wheel"))
            lines.append(f"  [sync] (when the venv is missing) sftp put {wheel_desc} -> "
                         f"{self.wheel_path}")
        lines.append(f"  [sync] (when the venv is missing) $ {self.mkenv().shown}")
        lines.append(f"  [check] $ {self.check().shown}")
        pull = self.pull()
        lines.append(f"  [models] $ {pull.shown}" if pull else
                     "  [models] nothing to pull (no hub repo ids)")
        lines.append(f"  [launch] $ {self.launch().shown}")
        lines.append(f"  [launch] after {self.host.alive_check_s:g}s: $ {self.status().shown}")
        lines.append(f"  [launch] if it died: $ {self.tail().shown}")
        return lines


# -- running the stages ------------------------------------------------------------------------
@dataclass
class StageRecord:
    stage: str
    state: str
    elapsed: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "state": self.state, "elapsed": round(self.elapsed, 3),
                "detail": self.detail}


@dataclass
class HostAttempt:
    """Everything one host's attempt did: its stage results and what preflight learned."""

    host: str
    kind: str = "dispatch"  # or "resume"
    # names this attempt in the manifest: its record is updated, others are never replaced
    id: str = field(default_factory=lambda: f"{time.time():.6f}-{os.getpid()}")
    stages: list[StageRecord] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    pid: int | None = None
    reattached: bool = False
    commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        probe = {k: self.probe.get(k) for k in ("python", "executable", "torch", "cuda",
                                                "cuda_devices", "disk_free_bytes", "kdengine",
                                                "home", "host")}
        return {"id": self.id, "kind": self.kind, "host": self.host, "ok": self.error is None,
                "error": self.error,
                "stages": [s.to_dict() for s in self.stages], "probe": probe, "pid": self.pid,
                "reattached": self.reattached}


class StageRunner:
    """Runs one host's stages, reporting each as StageUpdates and recording it."""

    def __init__(self, plan: RemotePlan, on_stage: Callable[[StageUpdate], None],
                 kind: str = "dispatch") -> None:
        self.plan = plan
        self.on_stage = on_stage
        self.attempt = HostAttempt(plan.host.alias, kind)
        self.conn: asyncssh.SSHClientConnection | None = None
        self._current: tuple[str, float] | None = None
        self._shown: set[str] = set()  # output lines the running stage has already shown

    # -- reporting -----------------------------------------------------------------------------
    def _emit(self, stage: str, state: str, detail: str = "", output: list[str] | None = None,
              started: float | None = None) -> None:
        elapsed = time.monotonic() - started if started is not None else 0.0
        self._shown.update(output or [])
        self.on_stage(StageUpdate(stage, state, elapsed, detail, list(output or []),
                                  self.plan.host.alias))
        if state in ("done", "failed", "skipped"):
            self.attempt.stages.append(StageRecord(stage, state, elapsed, detail))

    def line_sink(self, stage: str, started: float) -> Callable[[str], None]:
        def sink(line: str) -> None:
            # a value may hold a newline (a quoted path): shown as \n, the line stays one line
            self._emit(stage, "running", "", [one_line(line)], started)
        return sink

    async def stage(self, name: str, body: Callable[[float], Any]) -> Any:
        """Run `body(started)`; it returns (state, detail[, value]) or raises StageFailed.

        A dropped link (any asyncssh or OS error) reconnects and runs the body again, up to
        STAGE_RETRIES times: every body is idempotent (the launch by its token), so a stage
        cut in the middle finishes as if it had not been. What still fails is a StageFailed
        with one line, never a traceback."""
        started = time.monotonic()
        self._shown = set()
        self._emit(name, "running", started=started)
        retries = 0
        while True:
            try:
                state, detail, *value = await body(started)
                break
            except RemoteError as exc:
                # the command's stderr streamed as it came: only what was not shown is added
                # (before, every line of a failed command was shown twice)
                unseen = [line for line in exc.output[-TAIL_LINES:]
                          if one_line(line) not in self._shown]
                self._emit(name, "failed", str(exc), unseen, started)
                raise
            except LINK_ERRORS as exc:
                reason = link_reason(exc)
                if self.conn is None or retries >= STAGE_RETRIES:
                    failed = StageFailed(f"{self.plan.host.alias}: the link dropped during "
                                         f"{name} ({reason})", link_lost=True)
                    self._emit(name, "failed", str(failed), started=started)
                    raise failed from None
                retries += 1
                self.line_sink(name, started)(
                    f"the link to {self.plan.host.alias} dropped ({reason}); reconnecting to "
                    f"finish {name}")
                try:
                    await self.reconnect()
                except RemoteError as again:
                    failed = StageFailed(f"{self.plan.host.alias}: the link dropped during "
                                         f"{name} and did not come back: {again}",
                                         link_lost=True)
                    self._emit(name, "failed", str(failed), started=started)
                    raise failed from None
        self._emit(name, state, detail, started=started)
        return value[0] if value else None

    async def reconnect(self) -> None:
        """A new connection after a drop: a few tries over RECONNECT_S (sshd restarting)."""
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        deadline = time.monotonic() + RECONNECT_S
        delay = 0.25
        while True:
            try:
                self.conn = await open_connection(self.plan.host)
                return
            except (HostKeyRefused, SSHConfigError):
                raise  # neither fixes itself in 30s
            except RemoteError:
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- the stages ----------------------------------------------------------------------------
    async def preflight(self) -> dict[str, Any]:
        async def body(started: float):
            sink = self.line_sink("preflight", started)
            try:
                self.conn = await open_connection(self.plan.host)
            except RemoteError as exc:
                raise StageFailed(str(exc), fallback_ok=True) from None
            sink(f"connected to {self.plan.host.alias} as {self.conn.get_extra_info('username')}")
            try:
                async with self.conn.start_sftp_client() as sftp:
                    await sftp.makedirs(self.plan.host.agent_dir, exist_ok=True)
                    if not await sftp.exists(self.plan.agent_path):
                        await put_bytes(sftp, agent_source(), self.plan.agent_path,
                                        self.plan.host.alias)
                probe = await run_agent(self.conn, self.plan.probe(), sink, timeout=180)
            except (asyncssh.Error, OSError) as exc:
                raise StageFailed(f"{self.plan.host.alias}: preflight failed: {exc}",
                                  fallback_ok=True) from None
            except RemoteError as exc:
                # a python too old to run the agent at all (3.6 says only "SyntaxError: future
                # feature annotations is not defined"): its version is the line to say
                old = await self._too_old_python()
                raise StageFailed(old or str(exc), exc.output, fallback_ok=True) from None
            self.attempt.probe = probe
            for line in describe_probe(probe):
                sink(line)
            _require_usable(self.plan, probe)
            self.plan = replace(self.plan, gpus=len(probe.get("cuda_devices") or []) or 1)
            return "done", summary_of_probe(probe), probe
        return await self.stage("preflight", body)

    async def _too_old_python(self) -> str | None:
        """The too-old line when the configured python is older than MIN_PYTHON, else None."""
        command = remote_command("python version", [self.plan.host.python, "-V"],
                                 setup=self.plan.host.env_setup)
        try:
            result = await run_command(self.conn, command, timeout=60)
        except (RemoteError, *LINK_ERRORS):
            return None
        words = (result.stdout + " " + " ".join(result.stderr_lines)).split()
        version = next((w for w, prev in zip(words[1:], words[:-1], strict=True)
                        if prev == "Python"), None)
        if version is None or python_version(version) >= MIN_PYTHON:
            return None
        return too_old_line(self.plan.host, version)

    async def sync(self, probe: dict[str, Any]) -> None:
        async def body(started: float):
            sink = self.line_sink("sync", started)
            host = self.plan.host
            build = self.plan.build_id
            if host.sync == "git":
                sink(f"$ {self.plan.gitsync().shown}")
                answer = await run_agent(self.conn, self.plan.gitsync(), sink, timeout=600)
                build = answer["commit"]
                self.attempt.commit = build
                if probe.get("env_build") == build and not probe.get("env_broken"):
                    return "skipped", f"{host.git_ref} = {build[:12]}, already installed"
            elif probe.get("env_ready"):
                return "skipped", f"{self.plan.build_id} already installed in {self.plan.env_dir}"
            if probe.get("env_broken"):
                sink(f"{self.plan.env_dir} is marked ready but kdengine does not import from "
                     "it: making it again")
            if host.sync == "wheel":
                sink(f"sftp put {self.plan.wheel.filename} -> {self.plan.wheel_path}")
                async with self.conn.start_sftp_client() as sftp:
                    await sftp.makedirs(str(Path(self.plan.wheel_path).parent), exist_ok=True)
                    await put_bytes(sftp, self.plan.wheel.data, self.plan.wheel_path,
                                    host.alias)
            command = self.plan.mkenv(build)
            sink(f"$ {command.shown}")
            answer = await run_agent(self.conn, command, sink, timeout=900)
            return "done", f"kdengine {answer.get('kdengine')} in {self.plan.env_dir}"
        await self.stage("sync", body)

    # what the check stage says of the engine's job (a teacher-cache job's runner changes them)
    checked = "the run"
    checked_config = "the effective config"

    def asked_config(self) -> dict[str, Any]:
        """The config the engine's --check must echo back."""
        return self.plan.config.to_dict()

    def without_config(self, stdout: str) -> tuple[str, str, dict[str, Any]]:
        """The check's outcome when the engine printed no config JSON."""
        raise StageFailed("`kdengine train --check` printed no config JSON: the remote engine "
                          "is too old for this kdtui")

    def accepted(self, answer: dict[str, Any]) -> str:
        """The check stage's detail once the engine's --check `answer` (its JSON) matched."""
        return f"arguments accepted; {self.checked_config} matches"

    def refusal(self, stderr_lines: list[str]) -> str:
        """The engine's refusal as the check stage says it (refusal_line)."""
        return refusal_line(stderr_lines)

    async def check(self) -> dict[str, Any]:
        async def body(started: float):
            sink = self.line_sink("check", started)
            command = self.plan.check()
            sink(f"$ {command.shown}")
            # an hour: on conversation data the check tokenizes the examples into the store the
            # run then reuses (its progress lines come through the sink), which takes a while
            result = await run_command(self.conn, command, sink, timeout=3600)
            if result.exit_status != 0:
                why = self.refusal(result.stderr_lines) or f"exit status {result.exit_status}"
                why += here_not_there(self.plan.config, why, self.plan.host.alias)
                raise StageFailed(f"the engine on {self.plan.host.alias} refused {self.checked}: "
                                  f"{why}", result.stderr_lines[-TAIL_LINES:])
            try:
                answer = json.loads(result.stdout)
                echoed = answer["config"]
            except (ValueError, KeyError, TypeError):
                return self.without_config(result.stdout)
            diffs = config_differences(self.asked_config(), echoed)
            if diffs:
                raise StageFailed("the engine would not run what was asked: " + "; ".join(diffs))
            return "done", self.accepted(answer), echoed
        return await self.stage("check", body)

    async def models(self) -> None:
        async def body(started: float):
            command = self.plan.pull()
            if command is None:
                return "skipped", "no hub models to pull (demo or local paths, checked above)"
            sink = self.line_sink("models", started)
            sink(f"$ {command.shown}")
            answer = await run_agent(self.conn, command, sink, timeout=None)
            models = answer.get("models", [])
            if all(m.get("cached") for m in models):
                return "skipped", "already in the hub cache: " + ", ".join(
                    m["spec"] for m in models)
            return "done", "pulled " + ", ".join(m["spec"] for m in models if m.get("pulled"))
        await self.stage("models", body)

    async def launch(self, token: str = "", argv: list[str] | None = None,
                     name: str = "launch") -> int:
        """Start the engine detached (`argv`: another engine command, a resume's); `token`
        makes it idempotent: sent again after a drop, it finds the engine it started."""
        async def body(started: float):
            sink = self.line_sink(name, started)
            command = self.plan.launch(token, argv)
            sink(f"$ {command.shown}")
            answer = await run_agent(self.conn, command, sink, timeout=60)
            pid = int(answer["pid"])
            self.attempt.pid = pid
            if answer.get("already_running"):
                self.attempt.reattached = True
                return "done", f"already running as pid {pid}: reattached, no copy started", pid
            if answer.get("already_started"):
                sink(f"this launch had already started the engine (pid {pid}) before the link "
                     "dropped: not started again")
            sink(f"engine pid {pid}; checking it is alive in {self.plan.host.alive_check_s:g}s")
            await asyncio.sleep(self.plan.host.alive_check_s)
            state = await run_agent(self.conn, self.plan.status(), timeout=60)
            finished = state.get("finished")
            if finished and state.get("events_bytes", 0) <= answer.get("events_bytes", -1):
                finished = None  # the end of an earlier part: this engine wrote no event
            if state.get("alive") or finished:
                detail = f"pid {pid}, alive after {self.plan.host.alive_check_s:g}s" if \
                    state.get("alive") else \
                    launch_ended_note(pid, finished, self.plan.host.alive_check_s)
                return "done", detail, pid
            tail = (await run_agent(self.conn, self.plan.tail(), timeout=60)).get("lines", [])
            last = next((line for line in reversed(tail) if line.strip()), "no output")
            raise StageFailed(f"the engine exited within {self.plan.host.alive_check_s:g}s: "
                              f"{last}", tail)
        return await self.stage(name, body)

    def skip(self, stage: str, detail: str) -> None:
        self._emit(stage, "skipped", detail)

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            await self.conn.wait_closed()
            self.conn = None


def one_line(text: str) -> str:
    """`text` on one line: newlines shown as \\n (a value may hold one)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


_PATH_FIELDS = ("teacher", "student", "data", "teacher_cache")


def here_not_there(config: RunConfig, refusal: str, alias: str) -> str:
    """What to add to a check's refusal of a path that is missing on the box but is here: the run
    reads its paths there, and kdtui copies only its own code (before, 'corpus/ does not exist'
    of a folder the user could see)."""
    match = re.search(r"--([a-z][a-z-]*)[:=]", refusal)
    field = match.group(1).replace("-", "_") if match else ""
    value = str(getattr(config, field, "") or "") if field in _PATH_FIELDS else ""
    missing = value and re.search(rf"--{match.group(1)}: {re.escape(value)} (does not exist|is "
                                  "no folder)", refusal)
    if not missing or not os.path.exists(value):
        return ""
    return (f"; {value} is on this machine: the run reads its paths on {alias} (a relative one "
            f"from its home) and kdtui copies only its own code there: copy it "
            f"(`rsync -a {shlex.quote(value)} {shlex.quote(f'{alias}:{value}')}`) or give its "
            f"path on {alias}")


def refusal_line(stderr_lines: list[str]) -> str:
    """The engine's refusal from its stderr, whole: `kdengine train: error: ...` and any lines
    after it (a value with a newline in the message), joined with \\n; else the last line."""
    start = next((i for i in range(len(stderr_lines) - 1, -1, -1)
                  if stderr_lines[i].startswith("kdengine ") and ": error: " in stderr_lines[i]),
                 None)
    if start is None:
        return stderr_lines[-1] if stderr_lines else ""
    return "\\n".join(stderr_lines[start:])


async def put_bytes(sftp: asyncssh.SFTPClient, data: bytes, path: str,
                    where: str = "the host") -> None:
    # written under a temporary name and renamed: a dropped link never leaves half a file
    tmp = f"{path}.part"
    try:
        async with sftp.open(tmp, "wb") as fh:
            await fh.write(data)
    except asyncssh.SFTPFailure as exc:
        # OpenSSH's sftp-server answers a full disk (ENOSPC) as a bare 'Failure'
        full = await _disk_full_line(sftp, path, len(data), where)
        if full is None:
            raise
        try:
            await sftp.remove(tmp)
        except (asyncssh.Error, OSError):
            pass
        raise RemoteError(full) from exc
    await sftp.posix_rename(tmp, path)


async def _disk_full_line(sftp: asyncssh.SFTPClient, path: str, size: int,
                          where: str) -> str | None:
    """What to say when a write to `path` failed and its file system lacks room for `size`
    bytes (None: it has room, or the server cannot say)."""
    folder = str(Path(path).parent)
    try:
        stat = await sftp.statvfs(folder)
    except (asyncssh.Error, OSError):
        return None
    free = stat.bavail * stat.frsize
    if free >= size + 65536:
        return None
    shown = f"{free / 2**20:.1f} MiB" if free < 2**30 else _gib(free)
    return (f"{where}: cannot write {path}: the disk there is full ({shown} free); free "
            "some space on it, or set the host's work_dir to a disk with room")


def describe_probe(probe: dict[str, Any]) -> list[str]:
    gpus = probe.get("cuda_devices") or []
    return [
        f"python {probe.get('python')} ({probe.get('executable')}) on {probe.get('host')}",
        f"torch {probe.get('torch') or 'MISSING: ' + str(probe.get('torch_error'))}"
        + (f", CUDA {probe.get('cuda')}" if probe.get("cuda") else ", no CUDA build"),
        "CUDA devices: " + (", ".join(gpus) if gpus else "none"),
        f"free disk at {probe.get('work_dir')}: {_gib(probe.get('disk_free_bytes'))}",
        f"kdengine there: {probe.get('kdengine') or 'not installed'}"
        + (" (this build's venv is ready)" if probe.get("env_ready") else ""),
    ]


def summary_of_probe(probe: dict[str, Any]) -> str:
    gpus = probe.get("cuda_devices") or []
    return (f"python {probe.get('python')}, torch {probe.get('torch')}, "
            f"{len(gpus)} CUDA device{'s' if len(gpus) != 1 else ''}, "
            f"{_gib(probe.get('disk_free_bytes'))} free, kdengine "
            f"{probe.get('kdengine') or 'absent'}")


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, (int, float)) else "?"


def python_version(text: str) -> tuple[int, ...]:
    """(major, minor) of a version like 3.6.9 or 3.13.0rc1; (0,) when it is not one."""
    try:
        return tuple(int("".join(c for c in part if c.isdigit()) or "x")
                     for part in text.split(".")[:2])
    except ValueError:
        return (0,)


def too_old_line(host: HostConfig, version: str) -> str:
    need = ".".join(map(str, MIN_PYTHON))
    return (f"{host.alias}: {host.python} is Python {version}, too old (kdengine needs {need}+):"
            f" set python in [hosts.{host.alias}] of {hosts_file()} to a python {need}+ that has "
            "torch (a conda env's or a venv's bin/python)")


def _require_usable(plan: RemotePlan, probe: dict[str, Any]) -> None:
    host = plan.host.alias
    if python_version(str(probe.get("python", "0.0"))) < MIN_PYTHON:
        raise StageFailed(too_old_line(plan.host, str(probe.get("python"))), fallback_ok=True)
    if not probe.get("torch"):
        raise StageFailed(f"{host}: {plan.host.python} has no torch ({probe.get('torch_error')}):"
                          " install torch there, or point python/env_setup at one that has it "
                          f"in [hosts.{host}] of {hosts_file()}",
                          fallback_ok=True)
    if probe.get("missing_modules"):
        raise StageFailed(f"{host}: {plan.host.python} lacks {', '.join(probe['missing_modules'])}"
                          " (pip install 'kdtui[engine]' there, or use a python that has them)",
                          fallback_ok=True)
    missing = probe.get("missing_for_venv") or []
    if missing and not probe.get("env_ready"):
        # before, the sync stage uploaded the wheel, made half a venv and failed with
        # "No module named pip" and no word of which python or what to do
        raise StageFailed(f"{host}: {plan.host.python} has no {' or '.join(missing)}, which "
                          "kdtui needs there to make the run's venv and install kdengine in it: "
                          f"install {' and '.join(missing)} for that python (`python3 -m "
                          "ensurepip --upgrade`, or the python3-pip/python3-venv package), or "
                          f"set python in [hosts.{host}] of {hosts_file()} to one that has it",
                          fallback_ok=True)
    if plan.config.device.startswith("cuda") and not probe.get("cuda_devices"):
        raise StageFailed(f"{host}: device={plan.config.device} asked for, but torch there sees "
                          "no CUDA device", fallback_ok=True)
    run = probe.get("run") or {}
    if not run.get("alive") and run.get("events_bytes", -1) > 0:
        finished = run.get("finished") or {}
        status = finished.get("status", "stopped")
        name = plan.config.run_name
        step = run.get("checkpoint_step")
        # a run that stopped short with a checkpoint is continued, not started again
        fix = (f"continue it from its checkpoint at step {step} with `kdtui resume {name}`, or "
               f"look at it with `kdtui watch {name}`" if status != "completed" and
               step is not None else f"look at it with `kdtui watch {name}`")
        raise StageFailed(f"{plan.run_dir} on {host} already holds a run ({status}): pick "
                          f"another --run-name, or {fix}")


_put_bytes = put_bytes  # the apr profile's name for it
