"""`kdengine cache-teacher --teacher T --data D [--top-k K] [--out DIR]`: the command line of
the cache writer (kdengine.teacher.writer). Bad input exits 2 with one line before anything
is written; the data-shaping flags are the run's own fields (kdengine.config), so a cache is
written for exactly the rows `kdengine train` with the same values will use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdengine.cache_dir import CACHE_ENV
from kdengine.config import FIELDS_BY_NAME, ConfigError, RunConfig, flag_help, with_absolute_paths
from kdengine.teacher.identity import ROW_FIELDS

# the run fields the writer takes: what to score, how the data becomes rows, where it runs
JOB_FIELDS = ("teacher", "data", *ROW_FIELDS, "device", "dtype")
# what a launcher (kdtui, local or over SSH) writes into the directory before the job starts
LAUNCHER_FILES = ("launch.log", "engine.pid", "launch.token", "engine.lock")
REQUIRED = ("teacher", "data")
# kdengine.teacher.sparse.TARGET_KINDS and kdengine.teacher.cache.STORE_DTYPES, written out:
# --help imports no torch
TARGET_KINDS = ("topk", "sampled")
STORE_DTYPES = ("float16", "bfloat16", "float32")


def _help(text: str, bounds: str, default: str) -> str:
    """A flag's help as `kdengine train --help` writes one: what it is (bounds; default)."""
    return f"{text} ({bounds}; {default})"


def build_parser():
    from kdengine.usage import PROG, OneLineParser

    p = OneLineParser(prog=f"{PROG} cache-teacher", allow_abbrev=False,
                description="Run the teacher once over the data's train and validation rows "
                "and store its top-K log-probs, for `kdengine train --teacher-cache DIR`. "
                "Rerun the same command to finish a stopped one.")
    for name in JOB_FIELDS:  # as `kdengine train --help` writes them (add_field_flags)
        f = FIELDS_BY_NAME[name]
        default = ("required" if name in REQUIRED else "default: none" if f.default == "" else
                   f"default: {f.default!r}")
        p.add_argument(f.flag, dest=name, metavar=name.upper(), default=None,
                       help=flag_help(f, default))
    p.add_argument("--top-k", metavar="TOP_K", type=int, default=64,
                   help=_help("Teacher ids kept per token", "an integer >= 1", "default: 64"))
    p.add_argument("--cache-targets", metavar="CACHE_TARGETS", default="topk",
                   choices=TARGET_KINDS,
                   help=_help("topk: the K likeliest ids and a tail bucket; sampled: K ids drawn "
                              "from the teacher (unbiased, Sparse Logit Sampling)",
                              f"one of {', '.join(TARGET_KINDS)}", "default: 'topk'"))
    p.add_argument("--store-dtype", metavar="STORE_DTYPE", default="float16",
                   choices=STORE_DTYPES,
                   help=_help("dtype of the stored log-probs", f"one of {', '.join(STORE_DTYPES)}",
                              "default: 'float16'"))
    p.add_argument("--vocab", type=int, default=None,
                   help=_help("Ids the distribution is over; give the student's vocab when the "
                              "teacher's is padded beyond it",
                              "an integer above the tokenizer's largest id and <= the "
                              "teacher's vocab",
                              "default: the teacher's lm-head rows"))
    p.add_argument("--rows-per-batch", metavar="ROWS_PER_BATCH", type=int, default=8,
                   help=_help("Rows per teacher forward", "an integer >= 1", "default: 8"))
    p.add_argument("--shard-rows", metavar="SHARD_ROWS", type=int, default=None,
                   help=_help("Rows per shard file", "an integer >= 1",
                              "default: about 512 MB a shard"))
    p.add_argument("--seed", type=int, default=0,
                   help=_help("Seed of the sampled targets' draws", "an integer", "default: 0"))
    p.add_argument("--out", metavar="DIR", default=None,
                   help=_help("Where to write it", "a directory",
                              f"default: {CACHE_ENV}/teacher/<key>"))
    p.add_argument("--check", action="store_true", help="Check everything, print the job as "
                   "JSON and write nothing (the dashboard's pre-start check)")
    return p


def plan(argv: list[str]):
    """(job, identity, key, out, out's refusal, (the teacher's tokenizer, its directory)) from
    the command line, everything checked that can be known without loading the teacher's
    weights or reading the data."""
    from kdengine.usage import UsageError

    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown argument {unknown[0]} (see `kdengine cache-teacher --help`)")
    # torch comes with these: after the flags are parsed, so --help answers at once
    from kdengine.teacher.cache import cache_key
    from kdengine.teacher.writer import CacheJob, default_cache_dir, plan_identity
    _check_seed(args.seed, args.cache_targets)
    values = {n: getattr(args, n) for n in JOB_FIELDS if getattr(args, n) is not None}
    # absolute local paths: the job's config.json rebuilds this command from any directory
    config = with_absolute_paths(RunConfig.from_mapping(values))
    for name in REQUIRED:
        if not getattr(config, name):
            raise ConfigError(name, f"is required (give {FIELDS_BY_NAME[name].flag})")
    from kdengine.preflight import check_cache_root, check_engine_environment, unused_data_option

    # `kdengine train`'s rule: an option of example data on raw text would be taken and ignored
    # (and a run from this cache must then give the same ignored value)
    unused = unused_data_option(config)
    if unused is not None:
        raise unused

    # the variables `kdengine train` refuses when malformed (KDENGINE_COMPILE, ...), refused
    # here too: the same value must not start a cache job that a run would refuse
    check_engine_environment()
    check_cache_root()  # the default --out, the data's token cache and the demo teacher's home
    job = CacheJob(config, top_k=args.top_k, targets=args.cache_targets,
                   store_dtype=args.store_dtype, vocab=args.vocab,
                   rows_per_batch=args.rows_per_batch, shard_rows=args.shard_rows,
                   seed=args.seed)
    job.check()
    tokenizer, teacher_dir, teacher_vocab = _teacher_facts(config)
    if job.vocab is not None:
        _check_vocab(job.vocab, tokenizer, teacher_vocab)
    if job.top_k > (job.vocab or teacher_vocab):
        raise ConfigError("top_k", f"{job.top_k} is more than the {job.vocab or teacher_vocab} "
                          "ids of the vocab")
    identity = plan_identity(job, tokenizer, teacher_dir, teacher_vocab, teacher_dir)
    key = cache_key(identity)
    out = Path(args.out).expanduser() if args.out else default_cache_dir(key)
    if not args.out:
        identity, key, out = _older_default_cache(job, identity, key, out, tokenizer,
                                                  teacher_dir)
    return job, identity, key, out, _out_refusal(bool(args.out)), (tokenizer, teacher_dir)


def _older_default_cache(job: Any, identity: dict[str, Any], key: str, out: Path,
                         tokenizer: Any, teacher_dir: Path | None
                         ) -> tuple[dict[str, Any], str, Path]:
    """(identity, key, out) of the job without --out. An older kdengine keyed its default
    place by the data's file times, not their contents: a cache it wrote there of these very
    files, untouched since, is this job's (complete already, or finished by it), not a reason
    to score everything again into a new folder. One whose files' times changed since is said
    on stderr (where it is, why it is not used, its size), and the job goes to `out`."""
    import sys

    from kdengine.teacher.cache import MANIFEST, cache_key
    from kdengine.teacher.identity import is_legacy_identity, legacy_data_identity
    from kdengine.teacher.writer import default_cache_dir

    def manifest_of(directory: Path) -> dict[str, Any] | None:
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    if (out / MANIFEST).exists() or identity["data"].startswith("demo:"):
        return identity, key, out
    old_identity = {**identity, "data": legacy_data_identity(job.config, tokenizer,
                                                             teacher_dir)}
    old_key = cache_key(old_identity)
    old_out = default_cache_dir(old_key)
    found = manifest_of(old_out)
    if found is not None and found.get("key") == old_key:
        return old_identity, old_key, old_out
    # an older cache of this teacher and data whose files' times changed since: not provably
    # the same data, so not used; the user is told where it is, not left to find two folders
    try:
        folders = sorted(default_cache_dir(key).parent.iterdir())
    except OSError:
        return identity, key, out
    for folder in folders:
        found = manifest_of(folder)
        written = found.get("identity") if found else None
        if not isinstance(written, dict) or \
                not is_legacy_identity(str(written.get("data"))) or \
                any(written.get(k) != v for k, v in identity.items() if k != "data") or \
                (found.get("data") or {}).get("spec") != job.config.data:
            continue
        from kdengine.diskspace import human

        size = found.get("bytes")
        print(f"kdengine cache-teacher: an older kdengine's cache of this teacher and data, "
              f"{folder}, is not used: it knew the data by its files' times, which changed "
              f"since; scoring again into {out}"
              + (f" (remove {folder} to free {human(size)})" if isinstance(size, int) else ""),
              file=sys.stderr, flush=True)
        break
    return identity, key, out


def _check_seed(seed: int, targets: str) -> None:
    """--seed in `kdengine train --seed`'s range (0 to 2**63 - 1: the writer's generator seeds,
    seed * 1_000_003 + ... mod 2**63, are then distinct for distinct seeds, where -1 drew what
    2**63 - 1 draws), and only where there are draws: topk targets take none."""
    FIELDS_BY_NAME["seed"].check(seed)
    if seed != 0 and targets != "sampled":
        raise ConfigError("seed", f"seeds the sampled targets' draws, and --cache-targets "
                          f"{targets} draws nothing: give --cache-targets sampled, or leave it "
                          "at its default (0)")


def _check_vocab(vocab: int, tokenizer: Any, teacher_vocab: int) -> None:
    """--vocab covers every id the tokenizer can produce (the scorer gathers each row's next
    ids from the first `vocab` logits) and no more than the teacher's lm-head rows."""
    top = getattr(tokenizer, "max_id", tokenizer.vocab_size - 1)
    if vocab > teacher_vocab:
        raise ConfigError("vocab", f"must be at most the teacher's {teacher_vocab} ids "
                          f"(got {vocab}): give --vocab {teacher_vocab} or less")
    if vocab <= top:
        raise ConfigError("vocab", f"must be at least {top + 1}: the teacher's tokenizer has ids "
                          f"up to {top} (got {vocab}): give --vocab {top + 1} or more, or leave "
                          "it out")


def _out_refusal(given: bool) -> tuple[str, str]:
    """(field, fix) of an --out that cannot be made or written: what picked it and the fix."""
    if given:
        return "out", "pick another --out"
    return CACHE_ENV, f"set {CACHE_ENV} to a directory you can write, or pass --out"


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
    # `kdengine train`'s preflight of a model: config.json, and the weight files from their
    # headers (a shard the index names that is missing, a file cut short, tensors config.json
    # has no place for), refused here before --out exists, not at load after it
    from kdengine.model_facts import check_seq_len_fits
    from kdengine.preflight import _check_model

    facts, tokenizer = _check_model(config.teacher, "teacher", directory, [])
    check_seq_len_fits(config.seq_len, "teacher", facts.max_positions,
                       str(directory / "config.json"))
    return tokenizer, directory, facts.vocab_size


def cmd_cache_teacher(argv: list[str]) -> int:
    from kdengine.stop import catch_early

    catch_early()
    job, identity, key, out, (field, fix), (tokenizer, teacher_dir) = plan(argv)
    # torch comes with these: after plan(), so --help and a bad flag answer at once
    from kdengine.preflight import check_data, check_run_dir, run_dir_refusal
    from kdengine.teacher.cache import read_manifest
    try:
        has_manifest = (out / "manifest.json").exists()
    except OSError:  # a directory that cannot be looked into: check_run_dir says so
        has_manifest = False
    if has_manifest:
        previous = read_manifest(out, "out")
        if previous.get("key") != key and _same_but_legacy_data(previous, identity, job,
                                                                 tokenizer, teacher_dir):
            # an older writer's cache of these very files, untouched since: it goes on (or is
            # complete) under the key it was written with
            identity, key = previous["identity"], previous["key"]
        if previous.get("key") != key:
            differ = sorted(k for k in identity if previous.get("identity", {}).get(k) !=
                            identity[k])
            raise ConfigError("out", f"{out} holds another teacher cache (its "
                              f"{', '.join(differ) or 'key'} differ): pick another --out, "
                              f"or remove {out} (that cache) and run the same command again")
        from kdengine.teacher.cache import damaged_shard

        damaged = damaged_shard(out, previous) if previous.get("complete") else None
        if previous.get("complete") and not damaged:
            if "--check" in argv:  # the JSON the docs promise (kdtui's check stage reads it)
                _print_check(job, out, key, complete=True, size=previous.get("bytes"))
            else:
                _record_complete_already(job, out, key, previous)
            return 0
        if damaged and "--check" not in argv:  # the writer writes the damaged shards again
            print(f"teacher cache {out} is damaged ({damaged}): writing its damaged shards "
                  "again", flush=True)
    # one --out the job can make and write into, found before anything is created
    check_run_dir(out, field, fix)
    if not has_manifest and out.is_dir() and \
            any(p.name not in LAUNCHER_FILES for p in out.iterdir()) and \
            not (out / "config.json").is_file():
        raise ConfigError("out", f"{out} exists and is not a teacher cache: pick another --out")
    _hold_out(out, create=False)  # another writer going there now is refused, --check too
    # the data as `kdengine train`'s preflight reads it: a bad record, a template that cannot
    # render one, too little data, refused here in one line, before --out is made (example
    # data is tokenized into the token store the job's data stage then maps)
    check_data(job.data_config, tokenizer, [], teacher_dir, tokenizer)
    if "--check" in argv:  # as `kdengine train --check`: the config the job runs, nothing written
        _print_check(job, out, key, complete=False)
        return 0
    try:  # the check above passed: an error here is the path changing in between
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(job.config.to_dict(), indent=2) + "\n")
        lock = _hold_out(out, create=True)  # noqa: F841 - held until this process exits
    except OSError as exc:
        raise run_dir_refusal(out, field, fix, exc) from None
    from kdengine.teacher.writer import run_cache_job

    return run_cache_job(job, out, identity, key)


def _same_but_legacy_data(previous: dict[str, Any], identity: dict[str, Any], job: Any,
                          tokenizer: Any, teacher_dir: Path | None) -> bool:
    """Whether `previous` (a manifest) is this job's but for its data identity, which an older
    kdengine wrote by the files' times, and those times are the files' now."""
    from kdengine.teacher.identity import is_legacy_identity, legacy_data_identity

    written = previous.get("identity")
    if not isinstance(written, dict) or not is_legacy_identity(str(written.get("data"))):
        return False
    if any(written.get(k) != v for k, v in identity.items() if k != "data"):
        return False
    return written["data"] == legacy_data_identity(job.config, tokenizer, teacher_dir)


def _print_check(job: Any, out: Path, key: str, complete: bool, size: Any = None) -> None:
    """--check's answer, one JSON object: the job's config, key and out dir, and whether the
    cache there is complete already (then with its size in bytes; the job would write
    nothing)."""
    cache = {"key": key, "k": job.top_k, "targets": job.targets, "dtype": job.store_dtype}
    if complete:
        cache["bytes"] = size
    print(json.dumps({"ok": True, "run_dir": str(out), "complete": complete,
                      "config": job.config.to_dict(), "cache": cache}, indent=2))


# the writer's stages (kdengine.teacher.writer): each skipped by a job that finds its cache done
CACHE_STAGES = ("prepare", "load_teacher", "data", "score")


def _record_complete_already(job: Any, out: Path, key: str, manifest: dict[str, Any]) -> None:
    """The job on a cache that is complete: nothing to do, said on the terminal and recorded
    in OUT/events.jsonl as a part of the job that ended completed, so a launcher that started
    it (the dashboard, over SSH too), `kdtui watch` and the runs list show the job complete, not
    an engine that exited without an event. A directory that takes no write: said only."""
    from kdengine import events as ev
    from kdengine.runlog import RunLog
    from kdengine.teacher.writer import _rows_written

    size = manifest.get("bytes")
    said = f"teacher cache {out} is complete already ({size} bytes); nothing to do"
    try:
        log = RunLog(out)
    except OSError:  # a read-only cache, say: it is complete all the same
        print(said, flush=True)
        return
    try:
        rows = _rows_written(out, manifest)
        log.emit(ev.RUN_STARTED, run_id=out.name, run_dir=str(out),
                 config=job.config.to_dict(), device=job.config.device,
                 dtype=job.config.dtype, resumed_from=rows, job="cache-teacher",
                 cache={"key": key, "k": job.top_k, "targets": job.targets,
                        "dtype": job.store_dtype, "rows_per_batch": job.rows_per_batch,
                        "seed": job.seed}, complete_already=True)
        for stage in CACHE_STAGES:
            log.stage(stage, "skipped", "the cache is complete already", terminal=False)
        log.line(said)
        log.emit(ev.RUN_FINISHED, status="completed", exit_code=0, steps=rows, cache=str(out),
                 bytes=size, complete_already=True)
    except OSError:
        print(said, flush=True)
    finally:
        log.close()


LOCK_FILE = "engine.lock"  # as a train run's (kdengine.cli)


def _hold_out(out: Path, create: bool) -> Any:
    """An exclusive lock on OUT/engine.lock for the writer's life (the kernel drops it however
    the process ends): a second writer on the same --out, such as the same command run again
    while the first still goes, is refused instead of writing the same shards and events too.
    create=False only looks (--check writes nothing): refused if a writer holds it now."""
    try:
        import fcntl
    except ModuleNotFoundError:  # pragma: no cover - not POSIX: no lock
        return None
    try:
        handle = open(out / LOCK_FILE, "a" if create else "r")  # noqa: SIM115 - process's life
    except OSError as exc:
        # no OUT yet, or a path through a file: no writer there (making it says why it fails)
        if create and not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError("out", f"{out} is being written by another `kdengine cache-teacher` "
                          "right now: wait for it to end, or stop it first; then the same "
                          "command finishes it") from None
    if create:
        return handle
    handle.close()
    return None
