"""A teacher-cache job as a launch: `kdengine cache-teacher` started by the same machinery as a
run, on this machine or on an SSH host (docs/teacher-cache.md).

The job takes the run's teacher, data, row fields, device and dtype (kdengine.teacher.command's
JOB_FIELDS) plus K and the targets kind; its `--out` is the run directory a run of the same name
would get, so the dashboard follows it as a run (its events are the same protocol) and the runs
list shows it. The engine's `cache-teacher --check` is the pre-start check, here and in the
remote check stage; the remote start is the same detached launch with another engine argv, every
word quoted (kdtui.remote.command). R on a stopped job runs its own command again
(kdtui.launch.cache_resume): the engine keeps the finished shards and writes the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kdengine.config import ConfigError, RunConfig
from kdtui.launch.cache_job import (
    CACHE_JOB,
    JOB_FLAGS,
    OUT_FLAG,
    CacheOptions,
    cache_args,
    check_job_fields,
    complete_already_note,
    job_values,
    launch_ended_note,
    out_as_run_dir,
    stamp_cache_name,
)
from kdtui.launch.local import EARLY_EXIT_WINDOW, LocalLauncher, LocalRunHandle


class LocalCacheLauncher(LocalLauncher):
    """`python -m kdengine cache-teacher ... --out RUN_DIR` as a local run: checked by the
    engine's own `cache-teacher --check`, started detached, followed like a run."""

    job = CACHE_JOB
    host = "local"

    def __init__(self, config: RunConfig, options: CacheOptions, runs_dir: Path) -> None:
        super().__init__(stamp_cache_name(config), runs_dir)
        self.options = options
        self._complete: str | None = None  # the check stage's words for a complete cache

    @property
    def run_id(self) -> str:
        return self.config.run_name

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kdengine", "cache-teacher",
                *cache_args(self.config, self.options, self.run_dir)]

    def check(self) -> None:
        """As LocalLauncher.check, for the job's fields; a directory holding the same cache is
        not refused: the engine finishes a stopped job there (or says it is complete)."""
        self.options.check()
        check_job_fields(self.config)
        if self._checked == self.config:
            return
        import os
        import subprocess

        with open(os.devnull, "rb") as null:
            done = subprocess.run([*self.command(), "--check"], stdin=null, capture_output=True,
                                  text=True, errors="replace",
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode != 0:
            raise job_refusal(done.stderr, done.returncode)
        self._checked = self.config
        self._complete = None
        try:  # --check's JSON: complete already (the remote check stage says it too)
            answer = json.loads(done.stdout)
        except ValueError:
            return
        if isinstance(answer, dict) and answer.get("complete"):
            self._complete = complete_already_note(answer.get("run_dir"),
                                                   (answer.get("cache") or {}).get("bytes"))

    def check_note(self) -> str:
        return self._complete or super().check_note()

    def start_note(self, pid: int, code: int | None) -> str:
        """As LocalLauncher's; an engine that already ended on a complete cache says so in the
        check stage's words."""
        if code == 0:
            from kdengine.events import EVENTS_FILE, read_events

            ended = [e for e in read_events(self.run_dir / EVENTS_FILE)
                     if e.get("type") == "run_finished"] if \
                (self.run_dir / EVENTS_FILE).exists() else []
            if ended:
                return launch_ended_note(pid, ended[-1], EARLY_EXIT_WINDOW)
        return super().start_note(pid, code)

    async def start(self, on_stage: Any) -> LocalRunHandle:
        handle = await super().start(on_stage)
        handle.asked_config = job_values(self.config)  # what the engine will echo
        return handle


def job_refusal(stderr: str, code: int) -> ConfigError:
    """The engine's one-line refusal of a cache job as a ConfigError, its K and targets named
    as the launch names them (`--cache-top-k`, not the run's `--top-k`)."""
    from kdtui.launch.local import _REFUSAL, engine_refusal

    lines = [line for line in stderr.splitlines() if line.strip()]
    match = _REFUSAL.match(lines[-1].strip()) if lines else None
    if match is not None and match.group(1) in JOB_FLAGS:
        return ConfigError(JOB_FLAGS[match.group(1)], match.group(2))
    if match is not None and match.group(1) == OUT_FLAG:
        return ConfigError("run_dir", out_as_run_dir(match.group(2)))
    return engine_refusal(stderr, code)


def cache_launcher(config: RunConfig, options: CacheOptions, host: str, fallback: str,
                   runs_dir: Path) -> Any:
    """The launcher of a cache job on `host` ('local' or an SSH host). Remote: builds the engine
    wheel (seconds) and loads asyncssh; call it off the UI thread."""
    if host == "local":
        return LocalCacheLauncher(config, options, runs_dir)
    from kdtui.launch.cache_remote import RemoteCacheLauncher  # asyncssh: on first use

    return RemoteCacheLauncher(config, options, host, fallback or None)

