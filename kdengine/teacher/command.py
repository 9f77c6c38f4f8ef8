"""`kdengine cache-teacher --teacher T --data D [--top-k K] [--out DIR]`: the command line of
the cache writer (kdengine.teacher.writer). Bad input exits 2 with one line before anything
is written; the data-shaping flags are the run's own fields (kdengine.config), so a cache is
written for exactly the rows `kdengine train` with the same values will use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdengine.config import FIELDS_BY_NAME, ConfigError, RunConfig
from kdengine.teacher.identity import ROW_FIELDS

# the run fields the writer takes: what to score, how the data becomes rows, where it runs
JOB_FIELDS = ("teacher", "data", *ROW_FIELDS, "device", "dtype")
# what a launcher (kdtui, local or over SSH) writes into the directory before the job starts
LAUNCHER_FILES = ("launch.log", "engine.pid", "launch.token")


def build_parser():
    from kdengine.usage import PROG, OneLineParser

    p = OneLineParser(prog=f"{PROG} cache-teacher", allow_abbrev=False,
                description="Run the teacher once over the data's train and validation rows "
                "and store its top-K log-probs, for `kdengine train --teacher-cache DIR`. "
                "Rerun the same command to finish a stopped one.")
    for name in JOB_FIELDS:
        f = FIELDS_BY_NAME[name]
        p.add_argument(f.flag, dest=name, metavar=name.upper(), default=None,
                       help=f"{f.help} (default: {f.default!r})")
    p.add_argument("--top-k", type=int, default=64, help="Teacher ids kept per token (default 64)")
    p.add_argument("--cache-targets", default="topk", choices=("topk", "sampled"),
                   help="topk: the K likeliest ids and a tail bucket; sampled: K ids drawn from "
                   "the teacher (unbiased, Sparse Logit Sampling)")
    p.add_argument("--store-dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="dtype of the stored log-probs (default float16)")
    p.add_argument("--vocab", type=int, default=None, help="Ids the distribution is over "
                   "(default: the teacher's lm-head rows; give the student's vocab when the "
                   "teacher's is padded beyond it)")
    p.add_argument("--rows-per-batch", type=int, default=8, help="Rows per teacher forward")
    p.add_argument("--shard-rows", type=int, default=None, help="Rows per shard file "
                   "(default: about 512 MB a shard)")
    p.add_argument("--seed", type=int, default=0, help="Seed of the sampled targets' draws")
    p.add_argument("--out", metavar="DIR", default=None, help="Where to write it (default: "
                   "KDENGINE_CACHE/teacher/<key>)")
    p.add_argument("--check", action="store_true", help="Check everything, print the job as "
                   "JSON and write nothing (the dashboard's pre-start check)")
    return p


def plan(argv: list[str]):
    """(job, identity, key, out) from the command line, everything checked that can be known
    without loading the teacher's weights or the data."""
    from kdengine.teacher.cache import cache_key
    from kdengine.teacher.writer import CacheJob, default_cache_dir, plan_identity
    from kdengine.usage import UsageError

    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown argument {unknown[0]} (see `kdengine cache-teacher --help`)")
    values = {n: getattr(args, n) for n in JOB_FIELDS if getattr(args, n) is not None}
    config = RunConfig.from_mapping(values)
    for name in ("teacher", "data"):
        if not getattr(config, name):
            raise ConfigError(name, f"is required (give {FIELDS_BY_NAME[name].flag})")
    job = CacheJob(config, top_k=args.top_k, targets=args.cache_targets,
                   store_dtype=args.store_dtype, vocab=args.vocab,
                   rows_per_batch=args.rows_per_batch, shard_rows=args.shard_rows,
                   seed=args.seed)
    job.check()
    tokenizer, teacher_dir, teacher_vocab = _teacher_facts(config)
    if job.vocab is not None and not 1 <= job.vocab <= teacher_vocab:
        raise ConfigError("vocab", f"must be between 1 and the teacher's {teacher_vocab} ids "
                          f"(got {job.vocab})")
    if job.top_k > (job.vocab or teacher_vocab):
        raise ConfigError("top_k", f"{job.top_k} is more than the {job.vocab or teacher_vocab} "
                          "ids of the vocab")
    identity = plan_identity(job, tokenizer, teacher_dir, teacher_vocab, teacher_dir)
    key = cache_key(identity)
    out = Path(args.out).expanduser() if args.out else default_cache_dir(key)
    return job, identity, key, out


def _teacher_facts(config: RunConfig) -> tuple[Any, Path | None, int]:
    """The teacher's tokenizer, directory and vocab, from its files (no weights loaded)."""
    from kdengine.config import DEMO_STUDENT
    from kdengine.sources import check_sources

    # the teacher and the data as sources (a demo student stands in: none is needed)
    dirs = check_sources(RunConfig(teacher=config.teacher, student=DEMO_STUDENT,
                                   data=config.data))
    if config.teacher.startswith("demo://"):
        from kdengine.data import ByteTokenizer
        from kdengine.model_facts import DEMO_VOCAB

        return ByteTokenizer(), None, DEMO_VOCAB
    directory = dirs.get("teacher")
    if directory is None:
        raise ConfigError("teacher", f"{config.teacher} is not in the local hub cache: download "
                          "it first (the cache's key includes its weights)")
    from kdengine.models.hf_layout import config_from_hf, read_hf_config
    from kdengine.tokenizer import load_tokenizer

    try:
        decoder = config_from_hf(read_hf_config(directory), str(directory / "config.json"))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError("teacher", str(exc)) from None
    return load_tokenizer(directory, "teacher"), directory, decoder.vocab_size


def cmd_cache_teacher(argv: list[str]) -> int:
    from kdengine.stop import catch_early
    from kdengine.teacher.cache import read_manifest

    catch_early()
    job, identity, key, out = plan(argv)
    if (out / "manifest.json").exists():
        previous = read_manifest(out, "out")
        if previous.get("key") != key:
            differ = sorted(k for k in identity if previous.get("identity", {}).get(k) !=
                            identity[k])
            raise ConfigError("out", f"{out} holds another teacher cache (its "
                              f"{', '.join(differ) or 'key'} differ): pick another --out")
        if previous.get("complete"):
            print(f"teacher cache {out} is complete already ({previous.get('bytes')} bytes); "
                  "nothing to do")
            return 0
    elif out.exists() and any(p.name not in LAUNCHER_FILES for p in out.iterdir()) and \
            not (out / "config.json").is_file():
        raise ConfigError("out", f"{out} exists and is not a teacher cache: pick another --out")
    if "--check" in argv:  # as `kdengine train --check`: the config the job runs, nothing written
        print(json.dumps({"ok": True, "run_dir": str(out), "config": job.config.to_dict(),
                          "cache": {"key": key, "k": job.top_k, "targets": job.targets,
                                    "dtype": job.store_dtype}}, indent=2))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(job.config.to_dict(), indent=2) + "\n")
    from kdengine.teacher.writer import run_cache_job

    return run_cache_job(job, out, identity, key)
