"""A teacher-cache job's definition, as the dashboard launches it: its options (K, targets), the
run fields it takes, the engine arguments, and how a run screen knows it is following one.
The launchers are kdtui.launch.cache (this machine) and kdtui.launch.cache_remote (an SSH
host); both build on this module, so neither imports the other."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdengine.config import FIELDS_BY_NAME, SAMPLING_FIELDS, ConfigError, RunConfig
from kdengine.teacher.command import JOB_FIELDS
from kdengine.verdict import CACHE_JOB
from kdtui.launch.base import engine_args

TARGET_KINDS = ("topk", "sampled")  # kdengine.teacher.sparse.TARGET_KINDS (that module: torch)
DEFAULT_TOP_K = 64
# `kdengine cache-teacher`'s own flags, as the launch names their fields: its --top-k is
# `kdtui launch --cache-top-k` (kdtui's --top-k is the run's on-policy sampling field)
JOB_FLAGS = {"--top-k": "cache_top_k", "--cache-targets": "cache_targets"}
# the job's --out is the run directory kdtui gives it: a refusal of it is the run_dir's (the
# launch takes no --out: 'pick another --out' named a flag no one typed)
OUT_FLAG = "--out"


def out_as_run_dir(message: str) -> str:
    """An engine refusal of the job's --out, in the words of the launch's --run-dir."""
    return re.sub(r"--out\b", "--run-dir", message)


@dataclass(frozen=True)
class CacheOptions:
    """What a cache job adds to the run's fields (the engine's defaults)."""

    top_k: int = DEFAULT_TOP_K
    targets: str = "topk"

    def check(self) -> CacheOptions:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError("top_k", f"must be a whole number of at least 1 (got "
                              f"{self.top_k!r})")
        if self.targets not in TARGET_KINDS:
            raise ConfigError("cache_targets", f"must be one of {', '.join(TARGET_KINDS)} "
                              f"(got {self.targets!r})")
        return self

    def args(self) -> list[str]:
        return ["--top-k", str(self.top_k), "--cache-targets", self.targets]


def stamp_cache_name(config: RunConfig) -> RunConfig:
    """A job without a name is `cache-<UTC time>` (a run's is kd-<UTC time>)."""
    if config.run_name:
        return config
    return config.with_values(run_name=time.strftime("cache-%Y%m%d-%H%M%S", time.gmtime()))


def job_values(config: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """The fields a cache job takes, as the engine echoes them in its run_started: what a cache
    job's effective config is compared on (its other fields are defaults, not asked)."""
    values = config.to_dict() if isinstance(config, RunConfig) else config
    return {name: values[name] for name in JOB_FIELDS if name in values}


def run_from_cache_values(directory: str, job_config: dict[str, Any] | None) -> dict[str, Any]:
    """The form's values for a run from the complete cache in `directory`, written by a job of
    effective config `job_config` (its run_started's): the cache, the job's data and row fields
    (a run must give the cache's own), no teacher (the cache stands for it: a teacher given
    must be the cache's), and what a cache can feed: forward_kl, off-policy, so the sampling
    fields and beta at their defaults (the engine refuses a value that would be ignored)."""
    values: dict[str, Any] = {"teacher_cache": directory, "teacher": ""}
    for name in JOB_FIELDS:
        if name not in ("teacher", "device", "dtype") and job_config and name in job_config:
            values[name] = job_config[name]
    values |= {"loss": "forward_kl", "lmbda": 0.0, "seq_kd": False}
    return values | {name: FIELDS_BY_NAME[name].default
                     for name in (*SAMPLING_FIELDS, "eval_prompts", "beta")}


def check_job_fields(config: RunConfig) -> None:
    """The job's own cross-field rules: a teacher and data (a student is not needed)."""
    for name in ("teacher", "data"):
        if not getattr(config, name):
            raise ConfigError(name, "is required")


def cache_args(config: RunConfig, options: CacheOptions, out: str | Path) -> list[str]:
    """`kdengine cache-teacher`'s arguments: the job's fields (each value one word; one that
    starts with '-' joined to its flag, as engine_args does), K, the targets and --out."""
    from kdengine.config import FIELDS, FIELDS_BY_NAME

    job = RunConfig.from_mapping(job_values(config))
    takes_value = {f.flag for f in FIELDS if f.kind is not bool}
    keep = {FIELDS_BY_NAME[name].flag for name in JOB_FIELDS}
    words = iter(engine_args(job))  # every run field: keep the job's
    out_args: list[str] = []
    for word in words:
        pair = [word, next(words)] if word in takes_value else [word]
        flag = word.split("=", 1)[0]
        if flag in keep or flag.replace("--no-", "--", 1) in keep:
            out_args += pair
    return [*out_args, *options.args(), "--out", str(out)]


def is_cache_launch(launcher: Any, handle: Any) -> bool:
    """Whether a run screen's launcher or handle is a cache job (known before its first event):
    a cache launcher, a local run dir whose first event says so, a dispatch whose engine
    command is cache-teacher."""
    if getattr(launcher, "job", None) == CACHE_JOB:
        return True
    if handle is None:
        return False
    run_dir = getattr(getattr(handle, "source", None), "run_dir", None)
    if run_dir is not None:
        from kdtui.runs import _head_event

        return (_head_event(Path(run_dir) / "events.jsonl") or {}).get("job") == CACHE_JOB
    manifest = getattr(handle, "manifest", None)
    if manifest:
        try:
            command = json.loads(Path(manifest).read_text()).get("engine_command") or []
        except (OSError, ValueError):
            return False
        return "cache-teacher" in command
    return False


def complete_already_note(run_dir: Any, size: Any) -> str:
    """A check stage's words for a job whose cache is complete already (`kdengine cache-teacher
    --check` answered complete: true): the remote and the local launcher say the same."""
    return (f"{run_dir} holds this cache complete already"
            f"{f' ({size} bytes)' if size else ''}: nothing to score")


def launch_ended_note(pid: int, finished: dict[str, Any], within: float) -> str:
    """A launch stage's words for an engine that ended before its alive check was over
    (`finished`: its run_finished): a cache job on a complete cache in the check stage's own
    words ('complete already'), else how it ended and how soon."""
    if finished.get("complete_already"):
        return f"pid {pid}: the cache is complete already, nothing to score"
    return f"pid {pid}, {finished.get('status') or 'ended'} within {within:g}s"
