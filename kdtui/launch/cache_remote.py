"""A teacher-cache job dispatched over SSH: the run's stages (kdtui.remote.stages) with
`kdengine cache-teacher` as the engine argv and its `--check` as the check stage; every word of
both goes through kdtui.remote.command's quoting, as a run's. Imports asyncssh (the form loads
it only when a job goes to a host)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from kdengine.config import RunConfig, flag_of
from kdtui.launch.cache_job import (
    CACHE_JOB,
    JOB_FLAGS,
    OUT_FLAG,
    CacheOptions,
    cache_args,
    check_job_fields,
    complete_already_note,
    job_values,
    out_as_run_dir,
    stamp_cache_name,
)
from kdtui.launch.remote import RemoteLauncher
from kdtui.remote.stages import RemotePlan, StageRunner


@dataclass(frozen=True)
class CachePlan(RemotePlan):
    """A run's remote plan with `kdengine cache-teacher` as the engine (one process: no
    torchrun) and its `--check` as the check; every other command is the run's."""

    options: CacheOptions = CacheOptions()

    @classmethod
    def of(cls, plan: RemotePlan, options: CacheOptions) -> CachePlan:
        return cls(**{f.name: getattr(plan, f.name) for f in fields(RemotePlan)},
                   options=options)

    @property
    def engine_argv(self) -> list[str]:
        return [self.engine_python, "-m", "kdengine", "cache-teacher",
                *cache_args(self.config, self.options, self.run_dir)]

    def check(self):  # noqa: ANN201 - a RemoteCommand, as RemotePlan.check
        from kdtui.remote.command import remote_command

        return remote_command("check the cache job's arguments",
                              [*self.engine_argv, "--check"], setup=self.host.env_setup,
                              env=dict(self.host.env))

    def hub_models(self) -> list[tuple[str, str]]:
        return [pair for pair in super().hub_models() if pair[0] == "teacher"]


class CacheStageRunner(StageRunner):
    """The run's stages; the check compares the job's fields only (a cache job echoes a config
    with no student, steps or run name of its own)."""

    checked = "the cache job"
    checked_config = "the job's config"

    def asked_config(self) -> dict[str, Any]:
        return job_values(self.plan.config)

    def without_config(self, stdout: str) -> tuple[str, str, dict[str, Any]]:
        # an engine from before --check printed JSON on a complete cache: its text line
        return "done", (stdout.strip().splitlines() or ["accepted"])[-1], {}

    def accepted(self, answer: dict[str, Any]) -> str:
        # `kdengine cache-teacher --check` on a complete cache: the job's JSON, complete: true
        if answer.get("complete"):
            return complete_already_note(answer.get("run_dir"),
                                         (answer.get("cache") or {}).get("bytes"))
        return super().accepted(answer)

    def refusal(self, stderr_lines: list[str]) -> str:
        # the job's K and targets named as the launch names them (`--cache-top-k`, as a local
        # job's refusal does: kdtui.launch.cache.job_refusal), not the run's `--top-k`
        line = super().refusal(stderr_lines)
        flag, said, rest = line.partition(": error: ")[2].partition(": ")
        if said and flag in JOB_FLAGS:  # not the engine's flag either: the launch's, alone
            return f"{flag_of(JOB_FLAGS[flag])}: {rest}"
        if said and flag == OUT_FLAG:  # the run directory kdtui gave the job
            return f"--run-dir: {out_as_run_dir(rest)}"
        return line


class RemoteCacheLauncher(RemoteLauncher):
    """The run's dispatch (preflight, sync, check, models, launch, manifest) for a cache job."""

    job = CACHE_JOB
    stage_runner = CacheStageRunner

    def __init__(self, config: RunConfig, options: CacheOptions, host: Any,
                 fallback: Any = None, **kwargs: Any) -> None:
        options.check()
        check_job_fields(config)
        super().__init__(stamp_cache_name(config), host, fallback, **kwargs)
        self.options = options
        self.plans = [CachePlan.of(plan, options) for plan in self.plans]
