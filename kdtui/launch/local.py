"""Run the embedded engine on this machine, as its own process group, detached from the UI.

`python -m kdengine train <flags from RunConfig.to_args()> --run-dir DIR` starts in a new session
with stdin from /dev/null and stdout+stderr appended to DIR/launch.log (the engine sees that its
stdout already is launch.log and writes each line once). Its pid goes to DIR/engine.pid, so a
later dashboard can list, reattach to and stop it. An engine crash cannot take the UI down, and
the UI quitting does not stop the engine unless the user asks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdengine.config import (
    DEMO_TEACHER,
    FIELDS,
    ConfigError,
    RunConfig,
    default_runs_dir,
    flag_of,
)
from kdengine.events import EVENTS_FILE, LOG_FILE
from kdtui.launch.base import StageUpdate, engine_args, engine_launcher
from kdtui.runs import PID_FILE, pid_alive, read_pid
from kdtui.watch import LocalRunSource

EARLY_EXIT_WINDOW = 1.0  # seconds: an engine that dies this fast refused its arguments


class LaunchError(Exception):
    """The run could not start; the message says why and what to change."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def stamp_run_name(config: RunConfig) -> RunConfig:
    """Give a config without a run name the engine's own default form, kd-<UTC time>."""
    if config.run_name:
        return config
    return config.with_values(run_name=time.strftime("kd-%Y%m%d-%H%M%S", time.gmtime()))


def engine_command(config: RunConfig, gpus: int = 0) -> list[str]:
    """The exact command line the local launcher runs: under torchrun where this machine has
    several GPUs the run may take (`gpus`, from the engine's check), as a remote host's run."""
    return [*engine_launcher(sys.executable, gpus, config), "-m", "kdengine", "train",
            *engine_args(config)]


@dataclass
class LocalRunHandle:
    """A local run: started by this dashboard (`process` set) or found again by its pid file."""

    run_id: str
    run_dir: str
    host: str = "local"
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    asked_config: dict[str, Any] | None = None
    source: LocalRunSource = field(init=False)

    def __post_init__(self) -> None:
        self.source = LocalRunSource(Path(self.run_dir))
        if self.pid is None and self.process is not None:
            self.pid = self.process.pid

    @classmethod
    def attach(cls, run_dir: Path) -> LocalRunHandle:
        """A handle on a run already in run_dir (running or finished)."""
        return cls(run_id=Path(run_dir).name, run_dir=str(run_dir), pid=read_pid(Path(run_dir)),
                   asked_config=_read_config(Path(run_dir)))

    def is_alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    async def cancel(self) -> None:
        """SIGTERM to the engine's process group; the engine records the run as cancelled."""
        if self.pid is None or not self.is_alive():
            return
        try:
            # start_new_session made the engine a group leader, so its pgid is its pid
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

    def reattach_hint(self) -> str:
        return f"kdtui watch {self.run_dir}"

    def extra(self) -> dict[str, Any]:
        return {"pid": self.pid}


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run was started with (the engine writes it before its first event)."""
    try:
        data = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class LocalLauncher:
    """Check the run with the engine's own `kdengine train --check`, then start the engine."""

    stages: tuple[str, ...] = ("check", "start")

    def __init__(self, config: RunConfig, runs_dir: Path) -> None:
        self.config = stamp_run_name(config)
        self.runs_dir = Path(runs_dir)
        run_dir = Path(self.config.run_dir).expanduser() if self.config.run_dir else \
            self.runs_dir / self.config.run_name
        self.run_dir = run_dir
        # the field that picked the directory: the one to change when it already holds a run
        self.run_dir_field = "run_dir" if self.config.run_dir else "run_name"
        self.config = self.config.with_values(run_dir=str(run_dir))
        self._checked: RunConfig | None = None  # the config the engine's --check accepted
        self.gpus = 0  # the GPUs the check found the run may take: several start torchrun

    def command(self) -> list[str]:
        """The engine command line this launcher runs (a cache job's is another)."""
        return engine_command(self.config, self.gpus)

    def plan(self) -> list[str]:
        """What `start` would do, for the dry run: nothing is touched."""
        return [
            "host: local (embedded engine)",
            f"run dir: {self.run_dir}",
            f"log: {self.run_dir / LOG_FILE}",
            "command: " + shlex.join(self.command()),
        ]

    def check(self) -> None:
        """The engine's own preflight, `kdengine train --check` with the exact command line
        `start` runs, in a child process: the dashboard never imports torch, and the form
        refuses what the run would. Raises ConfigError naming the field. Blocking (seconds with
        real models: the child imports torch): call it off the UI thread."""
        self.config.validate()
        from kdengine.sources import check_sources  # no torch: the quick refusals stay quick

        # a run from a teacher cache may give no teacher (the cache stands for it): its
        # quick check is the student's and the data's, as the engine's own preflight does
        check_sources(replace(self.config, teacher=DEMO_TEACHER) if self.config.teacher_cache
                      and not self.config.teacher else self.config)
        self._check_run_dir()
        if (self.run_dir / EVENTS_FILE).exists():
            raise ConfigError(self.run_dir_field, f"{self.run_dir} already holds a run (pick "
                              f"another {flag_of(self.run_dir_field)})")
        if self._checked == self.config:
            return  # the form checked it; start() need not wait for the same answer again
        with open(os.devnull, "rb") as null:
            done = subprocess.run([*engine_command(self.config), "--check"], stdin=null,
                                  capture_output=True, text=True, errors="replace",
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode != 0:
            raise engine_refusal(done.stderr, done.returncode)
        self.gpus = _gpus_found(done.stdout)
        self._checked = self.config

    def check_note(self) -> str:
        """The check stage's detail once it passed."""
        return self._ranks_note()

    def start_note(self, pid: int, code: int | None) -> str:
        """The start stage's detail (`code`: the engine's exit code if it already exited)."""
        return f"pid {pid}"

    def _ranks_note(self) -> str:
        """The check stage's detail where the run starts under torchrun (else none)."""
        launcher = engine_launcher(sys.executable, self.gpus, self.config)
        return f"{self.gpus} GPUs: torchrun, {launcher[-1]} ranks" if len(launcher) > 1 else ""

    def _run_dir_field(self) -> tuple[str, str]:
        """(field, fix) for a run directory that cannot be made: --run-dir when the user gave
        it, else what picked the runs directory (kdtui's --runs-dir, or KDENGINE_RUNS_DIR and
        its default); the engine's --check, given --run-dir always, would name --run-dir."""
        if self.run_dir_field == "run_dir":
            return "run_dir", "pick another --run-dir"
        if self.runs_dir == default_runs_dir():
            return ("KDENGINE_RUNS_DIR", "set KDENGINE_RUNS_DIR to a directory you can write, "
                    "or pass --run-dir")
        return "runs_dir", "pass --runs-dir a directory you can write, or pass --run-dir"

    def _check_run_dir(self) -> None:
        from kdengine.preflight import check_run_dir  # no torch

        field, fix = self._run_dir_field()
        if field != "run_dir":
            check_run_dir(self.runs_dir, field, fix)
            field, fix = "run_name", "pick another --run-name, or pass --run-dir"
        check_run_dir(self.run_dir, field, fix)

    async def start(self, on_stage: Callable[[StageUpdate], None]) -> LocalRunHandle:
        t0 = time.monotonic()
        on_stage(StageUpdate("check", "running", host="local"))
        try:
            await asyncio.to_thread(self.check)
        except ConfigError as exc:
            message = f"{flag_of(exc.field)}: {exc.message}" if exc.field else exc.message
            on_stage(StageUpdate("check", "failed", time.monotonic() - t0, message, host="local"))
            raise LaunchError(message, exc.field) from None
        on_stage(StageUpdate("check", "done", time.monotonic() - t0, self.check_note(),
                             host="local"))

        t1 = time.monotonic()
        on_stage(StageUpdate("start", "running", host="local"))
        command = self.command()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:  # the check passed: an error here is the path changing in between
            self.run_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.run_dir / LOG_FILE, "ab")  # noqa: SIM115 - closed below
        except OSError as exc:
            from kdengine.preflight import run_dir_refusal

            refusal = run_dir_refusal(self.run_dir, *self._run_dir_field(), exc)
            message = f"{flag_of(refusal.field)}: {refusal.message}"
            on_stage(StageUpdate("start", "failed", time.monotonic() - t1, message,
                                 host="local"))
            raise LaunchError(message, refusal.field) from None
        with log, open(os.devnull, "rb") as null:
            process = subprocess.Popen(command, stdin=null, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=env, close_fds=True)
        (self.run_dir / PID_FILE).write_text(f"{process.pid}\n")
        handle = LocalRunHandle(self.config.run_name, str(self.run_dir), process=process,
                                asked_config=self.config.to_dict())
        # An engine that refuses its arguments exits at once with code 2: say so here, with
        # the log's last lines, rather than leave a run screen waiting on nothing.
        deadline = time.monotonic() + EARLY_EXIT_WINDOW
        while time.monotonic() < deadline and process.poll() is None:
            await asyncio.sleep(0.1)
        code = process.poll()
        if code is not None and code != 0 and not (self.run_dir / EVENTS_FILE).exists():
            tail = _tail_lines(self.run_dir / LOG_FILE, 40)
            detail = tail[-1] if tail else f"exit code {code}"
            on_stage(StageUpdate("start", "failed", time.monotonic() - t1, detail, tail, "local"))
            raise LaunchError(f"the engine exited at once (code {code}): {detail}")
        on_stage(StageUpdate("start", "done", time.monotonic() - t1,
                             self.start_note(process.pid, code), host="local"))
        return handle


def _gpus_found(check_output: str) -> int:
    """The GPUs a passed `kdengine train --check` found the run may spread over (its JSON's
    preflight.cuda_devices; an older engine's check says nothing: one process)."""
    try:
        return int(json.loads(check_output)["preflight"].get("cuda_devices") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0


_REFUSAL = re.compile(r"^kdengine [\w-]+: error: (?:(--[\w-]+): )?(.*)$")  # cache-teacher too


def engine_refusal(stderr: str, code: int) -> ConfigError:
    """The engine's one-line refusal (`kdengine train: error: --flag: message`) as the
    ConfigError of its field, for the form to show on that field."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else f"`kdengine train --check` exited with code {code}"
    match = _REFUSAL.match(last)
    if match is None:  # not a refusal: a crash, or an engine this kdtui does not know
        return ConfigError(None, f"`kdengine train --check` failed (code {code}): {last}")
    flag, message = match.groups()
    name = next((f.name for f in FIELDS if f.flag == flag), None) if flag else None
    if flag and name is None:
        message = f"{flag}: {message}"
    return ConfigError(name, message)


def _tail_lines(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []
