"""Resume a run that stopped, failed or was cancelled, from its newest complete checkpoint.

`kdengine train --resume RUN_DIR` is exact (weights, optimizer, scheduler, every RNG stream): the
run continues in its own directory, its events appended with `seq` continuing after a
`run_started` that names `resumed_from`. Here it is started the way the run itself was:

- `LocalResumer`: on this machine, detached in its own session, as `LocalLauncher` starts one;
- `RemoteResumer`: on the run's own host and in its own run directory (from its dispatch.json),
  through the dispatch's agent, with a launch token, so a dropped link never starts it twice,
  and a new segment in the manifest. (Resuming on the fallback host when the primary is down is
  not done: the run directory and its checkpoints live on the host that ran it.)

Both are Launchers: the run screen shows their stages, then follows the whole run from its first
event, so the chart and progress continue from the checkpoint's step.

A stopped teacher-cache job (`kdengine cache-teacher`, docs/teacher-cache.md) has no checkpoint:
the engine finishes it when its own command runs again in its directory (finished shards kept).
`LocalCacheResumer` (kdtui.launch.cache) runs that command here; `RemoteResumer` runs the
dispatch's engine command as it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdengine.events import EVENTS_FILE, LOG_FILE
from kdtui.launch.base import StageUpdate, torchrun_launcher
from kdtui.launch.cache_job import CACHE_JOB, is_cache_launch
from kdtui.launch.outcome import RESUMABLE

EARLY_EXIT_WINDOW = 1.5  # seconds: an engine that exits this fast refused the resume


class ResumeRefused(Exception):
    """The run cannot be resumed; one line that says why and what to do."""


# -- local ---------------------------------------------------------------------------------------
def local_checkpoint_step(run_dir: Path) -> int | None:
    """The newest complete checkpoint's step (the engine's rule: meta.json written last)."""
    steps = [int(p.name[5:]) for p in Path(run_dir, "checkpoints").glob("step-*")
             if p.name[5:].isdigit() and (p / "meta.json").exists()]
    return max(steps) if steps else None


def local_world_size(run_dir: Path) -> int:
    """How many ranks the run last trained on (its last run_started event's world_size; 1 for
    one process): its resume starts under torchrun with as many, as it started."""
    size = 1
    try:
        with open(Path(run_dir, EVENTS_FILE), "rb") as events:
            for line in events:
                if b'"run_started"' not in line:
                    continue
                try:
                    ranks = json.loads(line).get("world_size")
                except (ValueError, AttributeError):
                    continue
                size = ranks if isinstance(ranks, int) and ranks > 1 else 1
    except OSError:
        return 1
    return size


def local_refusal(run_dir: Path) -> str | None:
    """Why `run_dir` cannot be resumed (None: it can)."""
    from kdtui.runs import run_info

    info = run_info(run_dir)
    if info is None:
        return f"{run_dir} is not a run directory"
    if info.status not in RESUMABLE:
        return (f"{info.run_id} is {info.status}: only a stopped, failed or cancelled run "
                "resumes")
    if local_checkpoint_step(run_dir) is None:
        return (f"{info.run_id} has no complete checkpoint to continue from (set "
                "--checkpoint-every and start it again)")
    return None


def start_detached(run_dir: Path, command: list[str]) -> subprocess.Popen[bytes]:
    """`command` detached, as LocalLauncher starts a run: its own session (a stop signals the
    group), output appended to launch.log, its pid in engine.pid."""
    from kdtui.runs import PID_FILE

    with open(run_dir / LOG_FILE, "ab") as log, open(os.devnull, "rb") as null:
        process = subprocess.Popen(command, stdin=null, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (run_dir / PID_FILE).write_text(f"{process.pid}\n")
    return process


class LocalResumer:
    """Resume a local run; `start` returns the handle the run screen follows."""

    stages: tuple[str, ...] = ("check", "resume")
    host = "local"
    job: str | None = None  # a run (a cache job's resumer says CACHE_JOB)

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.log_offset = 0  # the log's size when the resume started: headless prints after it

    def refusal(self) -> str | None:
        return local_refusal(self.run_dir)

    def command(self) -> list[str]:
        launcher = torchrun_launcher(sys.executable, local_world_size(self.run_dir))
        return [*launcher, "-m", "kdengine", "train", "--resume", str(self.run_dir)]

    def details(self) -> tuple[str, str]:
        """What the check found and where the resume starts from (the stages' details)."""
        step = local_checkpoint_step(self.run_dir)
        return f"checkpoint at step {step}", f"from step {step}"

    async def start(self, on_stage: Callable[[StageUpdate], None]) -> Any:
        from kdtui.launch.local import LaunchError, LocalRunHandle, _tail_lines

        t0 = time.monotonic()
        on_stage(StageUpdate("check", "running", host="local"))
        why = self.refusal()
        if why:
            on_stage(StageUpdate("check", "failed", time.monotonic() - t0, why, host="local"))
            raise LaunchError(why)
        found, start = self.details()
        on_stage(StageUpdate("check", "done", time.monotonic() - t0, found, host="local"))
        t1 = time.monotonic()
        on_stage(StageUpdate("resume", "running", host="local"))
        self.log_offset = _size(self.run_dir / LOG_FILE)
        events_offset = _size(self.run_dir / EVENTS_FILE)
        process = start_detached(self.run_dir, self.command())
        deadline = time.monotonic() + EARLY_EXIT_WINDOW
        while time.monotonic() < deadline and process.poll() is None:
            await asyncio.sleep(0.1)
        code = process.poll()
        if code not in (None, 0) and not _started_since(self.run_dir, events_offset):
            tail = _tail_lines(self.run_dir / LOG_FILE, 40)
            detail = tail[-1] if tail else f"exit code {code}"
            on_stage(StageUpdate("resume", "failed", time.monotonic() - t1, detail, tail,
                                 "local"))
            raise LaunchError(f"the engine refused the resume (code {code}): {detail}")
        on_stage(StageUpdate("resume", "done", time.monotonic() - t1,
                             f"pid {process.pid}, {start}", host="local"))
        handle = LocalRunHandle.attach(self.run_dir)
        handle.process, handle.pid = process, process.pid
        return handle


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _started_since(run_dir: Path, offset: int) -> bool:
    """Whether the engine got as far as its run_started, written after `offset` of the events
    (the size they had before it started): then its own events say how it ended. An earlier
    part's run_started does not count (a cache job's first one may carry `resumed_from` too)."""
    import json

    try:
        with open(run_dir / EVENTS_FILE, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().splitlines()
    except OSError:
        return False
    for raw in lines:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == "run_started":
            return True
    return False


# -- remote --------------------------------------------------------------------------------------
class RemoteResumer:
    """Resume a remote run on its own host, from its dispatch.json."""

    stages: tuple[str, ...] = ("connect", "sync", "resume", "manifest")

    def __init__(self, manifest: Path, on_status: Callable[[str], None] | None = None) -> None:
        from kdengine.config import RunConfig
        from kdtui.remote.hosts import get_host
        from kdtui.remote.manifest import read_manifest

        self.manifest = Path(manifest)
        self.data = read_manifest(self.manifest)
        if not self.data.get("launched"):
            raise ResumeRefused(f"{self.data.get('run_id')} never started (its dispatch "
                                f"failed: {self.data.get('error')}): launch it again")
        self.run_id = str(self.data["run_id"])
        # a teacher-cache job's own command finishes it (its manifest's engine command)
        self.job = CACHE_JOB if "cache-teacher" in (self.data.get("engine_command") or []) \
            else None
        self.host = get_host(self.data["host"])
        self.config = RunConfig.from_mapping(self.data["config"])
        self.on_status = on_status
        self.log_offset = 0  # the log's size when the resume started: headless prints after it

    def resume_argv(self) -> list[str]:
        """The dispatch's engine command up to `kdengine train` (its python, torchrun if it
        had it), then `--resume RUN_DIR`: the run's own config.json says the rest. A cache
        job's: its engine command as it is (the engine finishes the job in its --out)."""
        argv = list(self.data.get("engine_command") or [])
        if self.job == CACHE_JOB:
            return argv
        if "train" not in argv:
            raise ResumeRefused(f"{self.manifest} holds no engine command to resume with")
        return [*argv[:argv.index("train") + 1], "--resume", self.config.run_dir]

    async def start(self, on_stage: Callable[[StageUpdate], None]) -> Any:
        from kdtui.launch.remote import RemoteRunHandle
        from kdtui.remote.connect import RemoteError, open_connection, run_agent
        from kdtui.remote.manifest import (
            add_segment,
            read_manifest,
            refuse_segment,
            utc_now,
            write_manifest,
        )
        from kdtui.remote.source import SSHRunSource
        from kdtui.remote.stages import (
            RemotePlan,
            StageFailed,
            StageRunner,
            agent_source,
            put_bytes,
        )
        from kdtui.remote.wheel import build_wheel

        plan = RemotePlan.make(self.host, self.config, build_wheel())
        runner = StageRunner(plan, on_stage, kind="resume")
        argv = self.resume_argv()
        venv_gone = False  # the engine's python is not on the host: its venv is to be made

        async def connect(started: float):
            nonlocal venv_gone
            try:
                runner.conn = await open_connection(plan.host)
            except RemoteError as exc:
                raise StageFailed(str(exc)) from None
            async with runner.conn.start_sftp_client() as sftp:
                if not await sftp.exists(plan.agent_path):
                    await sftp.makedirs(plan.host.agent_dir, exist_ok=True)
                    await put_bytes(sftp, agent_source(), plan.agent_path)
                venv_gone = bool(argv) and not await sftp.exists(argv[0])
            state = await run_agent(runner.conn, plan.status(), timeout=60)
            if not state.get("run_dir_exists", True):
                raise StageFailed(f"the run directory {plan.run_dir} does not exist on "
                                  f"{plan.host.alias} (removed, or cleaned with the box's /tmp "
                                  "at a reboot): nothing to resume")
            finished = state.get("finished") or {}
            if state.get("alive"):
                raise StageFailed(f"{self.run_id} is still running on {plan.host.alias} (pid "
                                  f"{state.get('pid')}): watch it with `kdtui watch "
                                  f"{self.run_id}`")
            if finished.get("status") == "completed" and self.job == CACHE_JOB:
                raise StageFailed(complete_line(self.run_id, plan.run_dir))
            if finished.get("status") == "completed":
                raise StageFailed(f"{self.run_id} completed: nothing to resume (train the "
                                  f"student further with --student {plan.run_dir}/final)")
            self.log_offset = max(0, int(state.get("log_bytes") or 0))
            if venv_gone and not (argv[0] == plan.engine_python and plan.host.sync == "wheel"):
                raise StageFailed(self._venv_gone_line(plan, argv[0]))
            if self.job == CACHE_JOB:  # no checkpoint: its finished shards are kept
                return "done", (f"{finished.get('status') or 'stopped'}, "
                                "the job's finished shards kept"), state
            if state.get("checkpoint_step") is None:
                raise StageFailed(f"{self.run_id} has no complete checkpoint on "
                                  f"{plan.host.alias} to continue from")
            # the stage line names the host already ("done 0.7s on gpu1: cancelled, ...")
            return "done", (f"{finished.get('status') or 'stopped'}, "
                            f"checkpoint at step {state['checkpoint_step']}"), state

        before: dict[str, Any] | None = None
        try:
            state = await runner.stage("connect", connect)
            if venv_gone:  # this kdtui is the run's build: its venv is made again, as a dispatch
                await runner.sync({})
            else:
                runner.skip("sync", f"the run's venv is there ({Path(argv[0]).parent.parent})")
            token = f"{self.run_id}-resume-{runner.attempt.id}"
            # the segment is in the manifest before the start, as a dispatch's manifest is
            before = add_segment(self.manifest, {"kind": "resume", "pid": None, "at": utc_now(),
                                                 "from_step": state.get("checkpoint_step"),
                                                 "token": token})
            pid = await runner.launch(token, argv, name="resume")
        except (RemoteError, OSError) as exc:
            runner.attempt.error = str(exc)
            await runner.close()
            if before is not None and isinstance(exc, RemoteError) and \
                    not getattr(exc, "link_lost", False):
                # the agent or the engine said no: nothing runs, the run is as it ended (a
                # link cut after the start was sent leaves the segment open: unconfirmed)
                refuse_segment(self.manifest, str(exc), before)
            self._record(runner)
            raise ResumeRefused(str(exc)) from None
        started = time.monotonic()
        on_stage(StageUpdate("manifest", "running", host=plan.host.alias))
        data = read_manifest(self.manifest)
        data["segments"][-1]["pid"] = pid
        data["pid"] = pid
        data["launch_confirmed"] = True
        write_manifest(self.manifest, data)
        self._record(runner)
        on_stage(StageUpdate("manifest", "done", time.monotonic() - started, str(self.manifest),
                             host=plan.host.alias))
        source = SSHRunSource(plan.host, plan.run_dir, conn=runner.conn,
                              on_status=self.on_status)
        runner.conn = None
        return RemoteRunHandle(run_id=self.run_id, host=plan.host.alias, run_dir=plan.run_dir,
                               plan=plan, source=source, pid=pid, manifest=self.manifest,
                               attempts=[runner.attempt])

    def _venv_gone_line(self, plan: Any, python: str) -> str:
        """Why a resume whose engine venv is gone, of another build than this kdtui's, cannot
        make it again, and what does: the run's own code makes it (the venv is named by the
        code's hash), or a new run on this build."""
        commit = str(self.data.get("git_commit") or "")
        code = f"git commit {commit[:12]}" if commit else "the code it was dispatched with"
        if commit and self.data.get("git_dirty"):
            code += " with the uncommitted edits it had"
        return (f"{self.run_id}'s engine venv is gone from {plan.host.alias} ({python} does "
                f"not exist), and it is build {self.data.get('build_id') or '?'}, not this "
                f"kdtui's {plan.build_id}: a resume runs the run's own build. With its code "
                f"here ({code}) `kdtui resume {self.run_id}` makes the venv again; or start "
                f"the run anew on this build: `kdtui launch --host {plan.host.alias} ...` "
                "under another --run-name")

    def _record(self, runner: Any) -> None:
        """This resume's attempt (its stages) appended to the manifest's attempts."""
        from kdtui.remote.manifest import merge_attempts, read_manifest, write_manifest

        data = read_manifest(self.manifest)
        data["attempts"] = merge_attempts(data, [runner.attempt.to_dict()])
        write_manifest(self.manifest, data)


def complete_line(run_id: str, job_dir: str | Path) -> str:
    """Why a complete teacher-cache job does not resume, and what to do with it."""
    return f"{run_id} is complete: train with --teacher-cache {job_dir}"


def resume_ref(handle: Any, watched: Any) -> str | None:
    """What `resumer_for` takes to resume the run `handle` follows, when its watch (a
    kdtui.launch.outcome.WatchedRun) saw it end without completing, with a checkpoint (a cache
    job needs none): the remote run's dispatch.json, or the local run dir. None when resuming
    does not apply."""
    if handle is None or watched is None:
        return None
    if not watched.resumable and not (watched.status in RESUMABLE and
                                      is_cache_launch(None, handle)):
        return None
    manifest = getattr(handle, "manifest", None)
    if manifest is not None:
        return str(manifest)
    local = getattr(getattr(handle, "source", None), "run_dir", None)
    return str(local) if local is not None and getattr(handle, "host", "") == "local" else None


def no_resume_line(handle: Any, watched: Any) -> str:
    """Why R does nothing on the run `handle` follows (resume_ref gave None), one line."""
    if handle is not None and watched is not None and watched.status == "completed" and \
            is_cache_launch(None, handle):
        return complete_line(handle.run_id, handle.run_dir)
    return "Resume applies to a stopped, failed or cancelled run with a checkpoint"
