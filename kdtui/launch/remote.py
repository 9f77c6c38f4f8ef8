"""The remote launcher: dispatch a run to a GPU host over SSH, with a fallback host.

`RemoteLauncher.start` runs the stages of kdtui.remote.stages on the primary host; when the
primary fails preflight (unreachable, refused key, no torch...), the same plan runs on the
fallback, and both attempts are shown (each StageUpdate names its host) and recorded in
dispatch.json. A run id that is already running on the host is reattached, never started twice.
The handle it returns follows the run over SFTP (reconnecting by itself) and can cancel it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdengine.config import ConfigError, RunConfig
from kdtui.launch.base import StageUpdate, config_differences
from kdtui.remote.connect import RemoteError, link_reason
from kdtui.remote.hosts import HostConfig, get_host
from kdtui.remote.manifest import (
    FALSIFIER,
    check_evidence_dir,
    local_git_commit,
    manifest_path,
    merge_attempts,
    read_manifest,
    utc_now,
    write_manifest,
)
from kdtui.remote.source import SSHRunSource
from kdtui.remote.stages import (
    LINK_ERRORS,
    STAGES,
    HostAttempt,
    RemotePlan,
    StageFailed,
    StageRecord,
    StageRunner,
    agent_filename,
    agent_source,
    put_bytes,
)
from kdtui.remote.wheel import WheelBuild, build_wheel


class DispatchError(RemoteError):
    """The dispatch failed on every host tried; the message says where and why.
    `engine_may_run`: the link dropped after the detached start was sent (watch or cancel it)."""

    engine_may_run = False


def stamp_run_name(config: RunConfig) -> RunConfig:
    """A run without a name gets the engine's own default form, kd-<UTC time>, here, so the
    remote run dir and the manifest know it before the engine starts."""
    if config.run_name:
        return config
    return config.with_values(run_name=time.strftime("kd-%Y%m%d-%H%M%S", time.gmtime()))


@dataclass
class RemoteRunHandle:
    """A run on an SSH host: follow it, ask its status, cancel it."""

    run_id: str
    host: str
    run_dir: str
    plan: RemotePlan
    source: SSHRunSource
    pid: int | None = None
    manifest: Path | None = None
    attempts: list[HostAttempt] = field(default_factory=list)

    @property
    def asked_config(self) -> dict[str, Any]:
        return self.plan.config.to_dict()

    def config_errors(self, run_started: dict[str, Any]) -> list[str]:
        """Differences between what was asked and what the engine echoed in run_started."""
        echoed = run_started.get("config")
        if not isinstance(echoed, dict):
            return ["run_started carries no config: cannot confirm what the engine runs"]
        return config_differences(self.asked_config, echoed)

    async def _agent(self, command_name: str, **kwargs: Any) -> dict[str, Any]:
        command = getattr(self.plan, command_name)(**kwargs)

        async def action(conn: Any) -> dict[str, Any]:
            # a newer kdtui has a new agent file name: upload it before first use
            # under a temporary name and renamed, as the dispatch uploads it: a cut link never
            # leaves a truncated agent that its name would keep from being uploaded again, and
            # a full disk is said as that, not retried as a dropped link
            async with conn.start_sftp_client() as sftp:
                if not await sftp.exists(self.plan.agent_path):
                    await sftp.makedirs(self.plan.host.agent_dir, exist_ok=True)
                    await put_bytes(sftp, agent_source(), self.plan.agent_path,
                                    self.plan.host.alias)
            from kdtui.remote.connect import run_agent

            return await run_agent(conn, command, timeout=60)
        return await self.source.with_link(action)

    async def status(self) -> dict[str, Any]:
        """{pid, alive, finished (the run_finished event or None), events_bytes, log_bytes}."""
        return await self._agent("status")

    async def log_tail(self, lines: int = 40) -> list[str]:
        return (await self._agent("tail", lines=lines)).get("lines", [])

    def missing_run_dir(self, state: dict[str, Any]) -> str | None:
        """The line for a status that finds no run directory at all (removed on the box, or
        /tmp cleaned by a reboot): nothing was killed, there is nothing to follow or resume."""
        if state.get("run_dir_exists", True):
            return None
        return (f"the run directory {self.run_dir} does not exist on {self.host} (removed, or "
                "cleaned with the box's /tmp at a reboot): nothing to follow or resume")

    async def engine_alive(self) -> bool:
        """Whether the engine process still runs on the host (one agent status over the
        resilient link)."""
        return bool((await self.status()).get("alive"))

    async def cancel(self) -> None:
        """SIGTERM to the run's process group: the engine ends it as cancelled."""
        await self._agent("cancel")

    def reattach_hint(self) -> str:
        return f"kdtui watch {self.run_id}"

    def extra(self) -> dict[str, Any]:
        return {"pid": self.pid, "manifest": str(self.manifest) if self.manifest else None,
                "remote_run_dir": self.run_dir, "reconnects": self.source.reconnects}

    async def close(self) -> None:
        await self.source.close()

    @classmethod
    def from_manifest(cls, path: Path, on_status: Callable[[str], None] | None = None,
                      wheel: WheelBuild | None = None) -> RemoteRunHandle:
        """Reattach to a dispatched run from its dispatch.json."""
        data = read_manifest(path)
        if not data.get("launched"):
            raise DispatchError(f"{path}: this dispatch never started a run "
                                f"({data.get('error') or 'no launch recorded'})")
        host = get_host(data["host"])
        config = RunConfig.from_mapping(data["config"])
        plan = RemotePlan.make(host, config, wheel or build_wheel())
        source = SSHRunSource(host, data["remote_run_dir"], on_status=on_status)
        return cls(run_id=data["run_id"], host=host.alias, run_dir=data["remote_run_dir"],
                   plan=plan, source=source, pid=data.get("pid"), manifest=path)


class RemoteLauncher:
    """Launcher over SSH. `stages` are shown as pending before start."""

    stages: tuple[str, ...] = STAGES
    stage_runner = StageRunner  # a cache job's checks its own command (kdtui.launch.cache)

    def __init__(self, config: RunConfig, host: str | HostConfig,
                 fallback: str | HostConfig | None = None, *, wheel: WheelBuild | None = None,
                 evidence_dir: Path | None = None,
                 on_status: Callable[[str], None] | None = None) -> None:
        self.config = stamp_run_name(config)
        hosts = [host] + ([fallback] if fallback else [])
        self.hosts = [h if isinstance(h, HostConfig) else get_host(h) for h in hosts]
        self.wheel = wheel or build_wheel()
        self.plans = [RemotePlan.make(h, self.config, self.wheel) for h in self.hosts]
        self.evidence_dir = evidence_dir
        self.on_status = on_status
        self.attempts: list[HostAttempt] = []
        self._token: str | None = None  # this dispatch's launch token, once it has one
        self._started_unconfirmed = False  # the start was sent, its answer not yet had

    @property
    def run_id(self) -> str:
        return self.config.run_name

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.run_id, self.evidence_dir)

    def dry_run(self) -> list[str]:
        """The whole plan, every remote command exactly as it will be sent; touches nothing."""
        lines = [f"run {self.run_id}: kdengine {self.wheel.kdengine_version} "
                 f"(build {self.wheel.build_id}), agent {agent_filename()}"]
        for i, plan in enumerate(self.plans):
            if i:
                lines.append(f"fallback, only if {self.plans[0].host.alias} fails preflight:")
            lines += plan.dry_run()
        lines.append(f"manifest: {self.manifest_path}")
        return lines

    async def start(self, on_stage: Callable[[StageUpdate], None]) -> RemoteRunHandle:
        """The stages on the primary host, then the fallback if the primary fails preflight.
        Every failure is a DispatchError with one line; the manifest says what happened."""
        try:
            check_evidence_dir(self.evidence_dir)
        except ConfigError as exc:  # no manifest can say it: nothing is connected to
            raise DispatchError(str(exc)) from None
        for i, plan in enumerate(self.plans):
            runner = self.stage_runner(plan, on_stage)
            self.attempts.append(runner.attempt)
            try:
                probe = await runner.preflight()
            except StageFailed as exc:
                runner.attempt.error = str(exc)
                await runner.close()
                if exc.fallback_ok and i + 1 < len(self.plans):
                    nxt = self.plans[i + 1].host.alias
                    note = [f"{plan.host.alias} failed preflight: {exc}; trying the fallback "
                            f"host {nxt}"]
                    for stage in self.stages:  # the note once, not under every stage
                        on_stage(StageUpdate(stage, "pending", 0.0,
                                             f"fallback to {nxt}" if stage == "preflight" else "",
                                             note if stage == self.stages[0] else [], nxt))
                    continue
                self._write(plan, None, error=str(exc))
                raise DispatchError(self._failure_text(str(exc))) from None
            try:
                return await self._rest(runner, probe, on_stage)
            except (RemoteError, *LINK_ERRORS) as exc:
                text = str(exc) if isinstance(exc, RemoteError) else \
                    f"{plan.host.alias}: the link dropped ({link_reason(exc)})"
                runner.attempt.error = text
                await runner.close()
                if self._started_unconfirmed and (getattr(exc, "link_lost", False)
                                                  or not isinstance(exc, RemoteError)):
                    # the detached start was sent and its answer lost: the engine may run.
                    # The manifest (written before the start) lets watch/cancel/runs find it.
                    self._record_attempts()
                    error = DispatchError(
                        f"{text}; the engine may have started: `kdtui watch {self.run_id}` "
                        f"follows it, `kdtui cancel {self.run_id}` stops it")
                    error.engine_may_run = True
                    raise error from None
                self._write(plan, None, error=text)
                raise DispatchError(self._failure_text(text)) from None
        raise DispatchError("no host to try")  # pragma: no cover - plans is never empty

    def _failure_text(self, last: str) -> str:
        if len(self.attempts) > 1:
            return "; ".join(f"{a.host}: {a.error}" for a in self.attempts)
        return last

    async def _rest(self, runner: StageRunner, probe: dict[str, Any],
                    on_stage: Callable[[StageUpdate], None]) -> RemoteRunHandle:
        plan = runner.plan
        run = probe.get("run") or {}
        if run.get("alive"):
            # re-dispatch of a running run id: reattach, never a second copy
            for stage in ("sync", "check", "models"):
                runner.skip(stage, f"{plan.config.run_name} is already running")
            runner.attempt.pid = pid = int(run["pid"])
            runner.attempt.reattached = True
            runner.skip("launch", f"already running as pid {pid}: reattached, no copy started")
        else:
            await runner.sync(probe)
            await runner.check()
            await runner.models()
            # the manifest exists before the detached start: whatever happens to this session
            # from here on, `kdtui watch/cancel/runs` find the run
            token = f"{self.run_id}-{runner.attempt.id}"
            self._write(plan, None, probe=probe, starting=token)
            self._started_unconfirmed = True
            pid = await runner.launch(token)
        started = time.monotonic()
        on_stage(StageUpdate("manifest", "running", host=plan.host.alias))
        path = self._write(plan, pid, probe=probe)
        self._started_unconfirmed = False
        on_stage(StageUpdate("manifest", "done", time.monotonic() - started, str(path),
                             host=plan.host.alias))
        runner.attempt.stages.append(
            StageRecord("manifest", "done", time.monotonic() - started, str(path)))
        self._record_attempts()
        source = SSHRunSource(plan.host, plan.run_dir, conn=runner.conn, on_status=self.on_status)
        runner.conn = None  # the source owns the connection from here on
        return RemoteRunHandle(run_id=self.run_id, host=plan.host.alias, run_dir=plan.run_dir,
                               plan=plan, source=source, pid=pid, manifest=path,
                               attempts=self.attempts)

    def _record_attempts(self) -> None:
        path = self.manifest_path
        if path.is_file():
            data = read_manifest(path)
            data["attempts"] = merge_attempts(data, self._attempt_dicts())
            write_manifest(path, data)

    def _attempt_dicts(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.attempts]

    def _write(self, plan: RemotePlan, pid: int | None, *, probe: dict[str, Any] | None = None,
               error: str | None = None, starting: str | None = None) -> Path:
        """The manifest: `starting` (the launch token) just before the detached start, the pid
        once it started, `error` when the dispatch failed."""
        path = self.manifest_path
        previous: dict[str, Any] = {}
        if path.is_file():
            try:
                previous = read_manifest(path)
            except (OSError, ValueError):
                previous = {}
        reattached = bool(self.attempts and self.attempts[-1].reattached)
        ours = previous.get("launch_token") and previous.get("launch_token") == self._token
        if previous.get("launched") and not ours and (reattached or pid is None):
            # the evidence of a run that was started is never overwritten: a reattach or a
            # refused re-dispatch is noted beside it, its attempts appended
            key = "reattached_at" if reattached else "refused_redispatches"
            previous.setdefault(key, []).append(
                utc_now() if reattached else {"at": utc_now(), "error": error})
            previous["attempts"] = merge_attempts(previous, self._attempt_dicts())
            return write_manifest(path, previous)
        if starting:
            self._token = starting
        probe = probe or {}
        home = probe.get("home")
        remote_run_dir = plan.run_dir if plan.run_dir.startswith("/") or not home else \
            f"{home}/{plan.run_dir}"
        git = local_git_commit()
        data = {
            "run_id": self.run_id,
            "falsifier": FALSIFIER,
            # true from just before the detached start: an engine may run from then on
            "launched": pid is not None or starting is not None or bool(ours and not error),
            "launch_confirmed": pid is not None,
            "launch_token": self._token,
            "error": error,
            "host": plan.host.alias,
            "user": None,
            "remote_host": probe.get("host"),
            "remote_run_dir": remote_run_dir,
            "remote_log": f"{remote_run_dir}/launch.log",
            "remote_events": f"{remote_run_dir}/events.jsonl",
            "pid": pid,
            "kdengine_version": self.wheel.kdengine_version,
            "build_id": plan.build_id,
            "wheel_sha256": self.wheel.sha256 if plan.host.sync == "wheel" else None,
            "git_commit": git["commit"],
            "git_dirty": git["dirty"],
            "remote_git_commit": self.attempts[-1].commit if self.attempts else None,
            "engine_command": plan.engine_argv,
            "config": plan.config.to_dict(),
            "attempts": merge_attempts(previous, self._attempt_dicts()),
            "dispatched_at": previous.get("dispatched_at") if ours else utc_now(),
            "verdict": None,
            "segments": [{"kind": "dispatch", "pid": pid, "at": utc_now(),
                          "from_step": None}] if pid is not None else [],
        }
        if self.attempts and self.attempts[-1].probe:
            data["user"] = self.attempts[-1].probe.get("user")
        return write_manifest(path, data)
