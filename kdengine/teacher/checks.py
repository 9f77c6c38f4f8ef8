"""A run's refusals of a teacher cache that does not fit it, before a run directory exists
(kdengine.preflight calls these for `kdengine train` and `--check`): each names what differs
and the fix, in one line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kdengine.config import DEMO_TEACHER, ConfigError, RunConfig
from kdengine.teacher.cache import read_manifest
from kdengine.teacher.identity import (
    ROW_FIELDS,
    data_identity,
    is_legacy_identity,
    legacy_data_identity,
)

FIELD = "teacher_cache"


def cached_teacher_facts(config: RunConfig) -> tuple[dict[str, Path], Any, Any, Path | None]:
    """(the student's and data's source dirs, the cache's teacher facts, its tokenizer, the
    directory of its chat template): the cache stands for the teacher, which need not be on
    this machine, so only the student and the data are checked as sources."""
    from kdengine.model_facts import DemoByteTokenizer, ModelFacts
    from kdengine.sources import check_sources

    directory = Path(config.teacher_cache).expanduser()
    manifest = read_manifest(directory)
    if not manifest.get("complete"):
        raise ConfigError(FIELD, f"{directory} is not complete (its writer was stopped or "
                          "still goes): run the same `kdengine cache-teacher` command again to "
                          "finish it")
    from kdengine.teacher.cache import damaged_shard

    damaged = damaged_shard(directory, manifest)
    if damaged:
        raise ConfigError(FIELD, f"{directory} is damaged ({damaged}): run the same `kdengine "
                          "cache-teacher` command again to write its damaged shards")
    from kdengine.teacher.sparse import check_kind

    check_kind(config.loss)
    if config.samples_completions:
        raise ConfigError("lmbda" if config.lmbda > 0 else "seq_kd",
                          "on-policy and seq_kd runs have the teacher grade or write "
                          "completions sampled during the run, which a teacher cache cannot "
                          "hold: drop --teacher-cache, or set lmbda 0 and no seq_kd")
    spec = manifest["teacher"].get("spec")
    if config.teacher and config.teacher != spec and not _same_dir(config.teacher, spec):
        raise ConfigError("teacher", f"is {config.teacher}, but the cache {directory} was written "
                          f"from {spec}: drop --teacher (the cache stands for it) or give a cache "
                          "of this teacher")
    for name in ROW_FIELDS:
        written, now = manifest["options"].get(name), getattr(config, name)
        if written != now:
            raise ConfigError(FIELD, _row_option_differs(directory, name, written, now))
    dirs = check_sources(replace(config, teacher=DEMO_TEACHER))  # the student and the data
    sub = manifest["tokenizer"].get("dir")
    template_dir = directory / sub if sub else None
    if template_dir is not None:
        from kdengine.tokenizer import load_tokenizer

        tokenizer: Any = load_tokenizer(template_dir, FIELD)
    else:
        tokenizer = DemoByteTokenizer()
    facts = ModelFacts("teacher", spec, str(directory), "cache", int(manifest["vocab"]))
    return dirs, facts, tokenizer, template_dir


def check_cache_fits(config: RunConfig, tokenizer: Any, template_dir: Path | None,
                     student_vocab: int | None) -> None:
    """The student's vocab and the data are the cache's (its tokenizer was checked against
    the student's as a teacher's is)."""
    directory = Path(config.teacher_cache).expanduser()
    manifest = read_manifest(directory)
    vocab = int(manifest["vocab"])
    if student_vocab is not None and student_vocab != vocab:
        raise ConfigError(FIELD, f"{directory} holds targets over {vocab} ids, the student's "
                          f"vocab is {student_vocab}: write the cache with --vocab "
                          f"{student_vocab}")
    from kdengine.model_facts import DemoByteTokenizer

    if isinstance(tokenizer, DemoByteTokenizer):
        from kdengine.data import ByteTokenizer

        tokenizer = ByteTokenizer()
    written = str(manifest["data"]["identity"])
    if is_legacy_identity(written):  # an older writer's: by the files' times
        if written == legacy_data_identity(config, tokenizer, template_dir):
            return
        how = ("an older kdengine wrote the cache, and knew the data by its files' paths, "
               "sizes and times, which changed since: a touch or a copy is enough")
    else:
        now = data_identity(config, tokenizer, template_dir)
        if written == now:
            return
        kind, kind_now = written.split(":", 1)[0], now.split(":", 1)[0]
        how = ("another kind of data" if kind != kind_now else
               "its files' contents, names or sizes changed since" if kind == "text-content"
               else "its files' contents, names or sizes, the tokenization or the chat template "
               "changed since")
    raise ConfigError(FIELD, f"{directory} was written from {manifest['data'].get('spec')}, "
                      f"which is not the run's data {config.data} now ({how}): write the cache "
                      "again for this data")


def _row_option_differs(directory: Path, name: str, written: Any, now: Any) -> str:
    """The refusal of a row option the run sets otherwise than the cache's writer did; an
    option one side left empty (data_fields) is said as not given, and its fix as the flag
    to drop or give, never as `data_fields=`."""
    flag = "--" + name.replace("_", "-")
    said = {side: f"{name}={value}" if value != "" else f"no {name}"
            for side, value in (("written", written), ("now", now))}
    fix = f"drop {flag}" if written == "" else f"set {name} to {written}"
    rewrite = f"kdengine cache-teacher ... {flag} {now}" if now != "" else \
        f"kdengine cache-teacher ... without {flag}"
    return (f"{directory} was written for {said['written']}, the run has {said['now']}: "
            f"{fix}, or write a cache for this run ({rewrite})")


def _same_dir(a: str, b: str | None) -> bool:
    if not b:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
