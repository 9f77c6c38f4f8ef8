"""A teacher-cache job as a launch: `kdengine cache-teacher` started by the same machinery as a
run, on this machine or on an SSH host (docs/teacher-cache.md).

The job takes the run's teacher, data, row fields, device and dtype (kdengine.teacher.command's
JOB_FIELDS) plus K and the targets kind; its `--out` is the run directory a run of the same name
would get, so the dashboard follows it as a run (its events are the same protocol) and the runs
list shows it. The engine's `cache-teacher --check` is the pre-start check, here and in the
remote check stage; the remote start is the same detached launch with another engine argv, every
word quoted (kdtui.remote.command). R on a stopped job here runs its own command again
(LocalCacheResumer): the engine keeps the finished shards and writes the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kdengine.config import RunConfig
from kdtui.launch.cache_job import (
    CACHE_JOB,
    CacheOptions,
    cache_args,
    check_job_fields,
    job_values,
    stamp_cache_name,
)
from kdtui.launch.local import LocalLauncher, LocalRunHandle
from kdtui.launch.outcome import RESUMABLE
from kdtui.launch.resume import LocalResumer, complete_line


class LocalCacheLauncher(LocalLauncher):
    """`python -m kdengine cache-teacher ... --out RUN_DIR` as a local run: checked by the
    engine's own `cache-teacher --check`, started detached, followed like a run."""

    job = CACHE_JOB
    host = "local"

    def __init__(self, config: RunConfig, options: CacheOptions, runs_dir: Path) -> None:
        super().__init__(stamp_cache_name(config), runs_dir)
        self.options = options

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

        from kdtui.launch.local import engine_refusal

        with open(os.devnull, "rb") as null:
            done = subprocess.run([*self.command(), "--check"], stdin=null, capture_output=True,
                                  text=True, errors="replace",
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode != 0:
            raise engine_refusal(done.stderr, done.returncode)
        self._checked = self.config

    async def start(self, on_stage: Any) -> LocalRunHandle:
        handle = await super().start(on_stage)
        handle.asked_config = job_values(self.config)  # what the engine will echo
        return handle


class LocalCacheResumer(LocalResumer):
    """R on a stopped cache job here: the job's own `kdengine cache-teacher` command again, in
    its directory, started as LocalCacheLauncher starts it; the engine keeps the finished
    shards, writes the rest and marks its run_started with `resumed_from` (rows done)."""

    job = CACHE_JOB

    def _manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.run_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            return None  # stopped before its data stage wrote one

    def refusal(self) -> str | None:
        from kdtui.runs import run_info

        info = run_info(self.run_dir)
        if info is None:
            return f"{self.run_dir} is not a run directory"
        if (self._manifest() or {}).get("complete"):
            return complete_line(self.run_id, self.run_dir)
        if info.status in ("running", "starting"):
            return (f"{self.run_id} is still running (pid {info.pid}): watch it with "
                    f"`kdtui watch {self.run_dir}`")
        if info.status not in RESUMABLE:
            return (f"{self.run_id} is {info.status}: only a stopped, failed or cancelled job "
                    "is finished by R")
        if not (self.run_dir / "config.json").is_file():
            return f"{self.run_id} has no config.json: start the job again with F4 on the form"
        return None

    def command(self) -> list[str]:
        """The job's command as LocalCacheLauncher built it (its fields from config.json, K and
        the targets from its first run_started), with what the engine recorded of the rest:
        the store dtype, and once its manifest is written the shard rows, vocab and seed. The
        same command finishes the same cache (the engine refuses another)."""
        from kdengine.events import EVENTS_FILE
        from kdtui.runs import _head_event

        config = RunConfig.from_mapping(json.loads((self.run_dir / "config.json").read_text()))
        cache = (_head_event(self.run_dir / EVENTS_FILE) or {}).get("cache") or {}
        options = CacheOptions(top_k=int(cache.get("k", CacheOptions.top_k)),
                               targets=str(cache.get("targets", CacheOptions.targets)))
        recorded = ["--store-dtype", str(cache["dtype"])] if cache.get("dtype") else []
        manifest = self._manifest() or {}
        for flag, key in (("--shard-rows", "shard_rows"), ("--vocab", "vocab"),
                          ("--seed", "seed")):
            if manifest.get(key) is not None:
                recorded += [flag, str(manifest[key])]
        args = cache_args(config, options, self.run_dir)
        return [sys.executable, "-m", "kdengine", "cache-teacher", *args[:-2], *recorded,
                *args[-2:]]

    def details(self) -> tuple[str, str]:
        manifest = self._manifest()
        if manifest is None:
            return "no shard written yet", "the whole job"
        shards = int(manifest.get("shards") or 0)
        done = len(list(self.run_dir.glob("shard-*.done")))
        return f"{done} of {shards} shards written", f"the {shards - done} left"

    async def start(self, on_stage: Any) -> LocalRunHandle:
        handle = await super().start(on_stage)
        handle.asked_config = job_values(handle.asked_config or {})  # what the engine echoes
        return handle


def cache_launcher(config: RunConfig, options: CacheOptions, host: str, fallback: str,
                   runs_dir: Path) -> Any:
    """The launcher of a cache job on `host` ('local' or an SSH host). Remote: builds the engine
    wheel (seconds) and loads asyncssh; call it off the UI thread."""
    if host == "local":
        return LocalCacheLauncher(config, options, runs_dir)
    from kdtui.launch.cache_remote import RemoteCacheLauncher  # asyncssh: on first use

    return RemoteCacheLauncher(config, options, host, fallback or None)

