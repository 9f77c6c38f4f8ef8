"""R on a stopped teacher-cache job on this machine: the job's own `kdengine cache-teacher`
command again, in its directory (docs/teacher-cache.md). The engine keeps the finished shards,
writes the rest and marks its run_started with `resumed_from` (the rows already written). A
remote job is finished by kdtui.launch.resume.RemoteResumer with its dispatch's command."""

from __future__ import annotations

import json
import sys
from typing import Any

from kdengine.config import RunConfig
from kdtui.launch.cache_job import CACHE_JOB, CacheOptions, cache_args, job_values
from kdtui.launch.local import LocalRunHandle
from kdtui.launch.outcome import RESUMABLE
from kdtui.launch.resume import LocalResumer, complete_line


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
        the targets from its first run_started), with what the engine recorded of the rest: the
        store dtype, rows per batch and seed (run_started: a sampled job's draws depend on
        both), and once its manifest is written the shard rows, vocab and seed. The same
        command finishes the same cache, to the same bytes (the engine refuses another)."""
        from kdengine.events import EVENTS_FILE
        from kdtui.runs import _head_event

        config = RunConfig.from_mapping(json.loads((self.run_dir / "config.json").read_text()))
        cache = (_head_event(self.run_dir / EVENTS_FILE) or {}).get("cache") or {}
        options = CacheOptions(top_k=int(cache.get("k", CacheOptions.top_k)),
                               targets=str(cache.get("targets", CacheOptions.targets)))
        flags = {flag: cache[key] for flag, key in (
            ("--store-dtype", "dtype"), ("--rows-per-batch", "rows_per_batch"),
            ("--seed", "seed")) if cache.get(key) is not None}
        manifest = self._manifest() or {}
        flags.update({flag: manifest[key] for flag, key in (
            ("--shard-rows", "shard_rows"), ("--vocab", "vocab"), ("--seed", "seed"))
            if manifest.get(key) is not None})
        recorded = [word for flag, value in flags.items() for word in (flag, str(value))]
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
