"""`kdengine train|verdict|version`: the engine's command line, generated from kdengine.config.

Bad input exits 2 with one line that names the field and what it takes, before anything is
written: no half-made run directory is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import kdengine
from kdengine import resume
from kdengine.config import (
    FIELDS,
    FIELDS_BY_NAME,
    PATH_FIELDS,
    ConfigError,
    RunConfig,
    add_field_flags,
    default_runs_dir,
    demo_config,
    file_folder_path_refusal,
    file_key_refusal,
    flag_of,
    load_config_file,
    spelled_in,
    validate_with_preset,
    with_absolute_paths,
)
from kdengine.stop import catch_early
from kdengine.usage import EXIT_USAGE, PROG, OneLineParser, UsageError

# The engine process's start, which the first step event's startup_s counts from
# (kdengine.trainer): taken as this module loads, before torch (the interpreter's own start and
# these light imports, under 0.1 s, come before it)
STARTED = time.monotonic()


def build_train_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"{PROG} train", allow_abbrev=False,
                description="Distil a teacher into a student. Flags override --config, which "
                "overrides --demo, which overrides the defaults.")
    p.add_argument("--config", metavar="FILE", help="Read fields from a .toml or .json file")
    p.add_argument("--demo", action="store_true",
                   help="The first-use preset: a tiny teacher trained on this machine, no network")
    p.add_argument("--check", action="store_true",
                   help="Validate the arguments and sources, print the effective config, exit")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="Continue a run from its latest checkpoint, with its own config")
    add_field_flags(p)
    return p


def parse_train_args(argv: list[str]) -> tuple[RunConfig, argparse.Namespace]:
    """Flags -> the effective, validated config. Raises UsageError/ConfigError."""
    parser = build_train_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        raise UsageError(f"unknown argument {flag} (see `{PROG} train --help` for the flags)")
    given = {f.name: getattr(args, f.name) for f in FIELDS if getattr(args, f.name) is not None}
    if args.resume:
        if given or args.demo or args.config:
            names = ", ".join(flag_of(n) for n in given) or "--demo/--config"
            other = Path(args.resume) / "config.json"
            raise UsageError(f"--resume continues the run with its own config.json; drop {names} "
                             f"(other values are a new run: `{PROG} train --config {other} "
                             "--run-dir NEW_DIR` with them)")
        return resume.resume_config(Path(args.resume)), args
    values: dict[str, Any] = demo_config().to_dict() if args.demo else {}
    in_file = load_config_file(Path(args.config)) if args.config else {}
    misplaced = file_folder_path_refusal(in_file, Path(args.config), given) if in_file else None
    if misplaced:
        raise UsageError(misplaced)
    values.update(in_file)
    try:
        base = RunConfig.from_mapping(values)
    except ConfigError as exc:  # a key of the file, named as the file spells it, not a --flag
        raise UsageError(f"{spelled_in(exc.field, in_file)} in {args.config}: {exc.message}"
                         if exc.field else
                         f"{args.config}: {exc.message}") from None
    config = base.with_values(**given)
    if not config.run_name:
        config = config.with_values(run_name=time.strftime("kd-%Y%m%d-%H%M%S", time.gmtime()))
    # a rule broken by a value the --demo preset set, not the user, says so
    try:
        validate_with_preset(config, demo_config() if args.demo else None, {*given, *in_file})
    except ConfigError as exc:  # set in the file, not by a flag: named as the file has it
        in_the_file = file_refusal(exc, args.config, in_file, given)
        if in_the_file is None:
            raise
        raise in_the_file from None
    # config.json keeps absolute local paths: `--resume` may run from another directory
    return with_absolute_paths(config), args


def file_refusal(exc: ConfigError, config_file: str | None, in_file: dict[str, Any],
                 given: dict[str, Any]) -> UsageError | None:
    """The refusal of a value the --config file set (no flag overrode it), named as the file
    spells it (kdengine.config.file_key_refusal); None: the refused value is not the file's."""
    text = file_key_refusal(exc, config_file, in_file, set(given))
    return None if text is None else UsageError(text)


def _refuse_a_foreign_config(run_dir: Path, field: str) -> None:
    """A new run writes its config.json into its directory: an existing directory whose
    config.json is not a run's (a model's folder given as --run-dir, say the student's own) would
    lose that file. Refused; a run config.json a start left before its first event (the engine
    stopped during its imports) is the run's to write again. Rank 0 only: under torchrun it
    writes the file the other ranks would then find."""
    path = run_dir / "config.json"
    if os.environ.get("RANK", "0") != "0" or not path.is_file():
        return
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        held = None
    if isinstance(held, dict) and {"teacher", "student", "steps"} <= set(held):
        return
    raise ConfigError(field, f"{run_dir} holds a config.json that is not a kdengine run's (a "
                      "model's folder?), which the run would write over: pick another "
                      f"{flag_of(field)} (a new or empty directory)")


def _holds_a_run(run_dir: Path, field: str) -> ConfigError:
    """The refusal of a new run into `run_dir`, which holds one, naming `field` (the flag that
    picked it) and a way on that works: --resume only where resume.check_resumable would take
    it (a completed run, or one with no complete checkpoint, would be refused again)."""
    from kdengine.events import RUN_FINISHED, read_events

    other = f"pick another {flag_of(field)}"
    finished = [e for e in read_events(run_dir / "events.jsonl") if e.get("type") == RUN_FINISHED]
    if finished and finished[-1].get("status") == "completed":
        return ConfigError(field, f"{run_dir} already holds a run (completed: {other}; to "
                           f"train its student further, also give --student {run_dir / 'final'})")
    if not any((run_dir / "checkpoints").glob("step-*/meta.json")):
        return ConfigError(field, f"{run_dir} already holds a run, with no checkpoint to "
                           f"continue from ({other})")
    return ConfigError(field, f"{run_dir} already holds a run (continue it with --resume "
                       f"{run_dir}, or {other})")


LOCK_FILE = "engine.lock"


def _hold_run_dir(run_dir: Path) -> Any:
    """An exclusive lock on RUN_DIR/engine.lock for this engine's life (the kernel drops it when
    the process ends, however it ends): a second engine on the same directory, such as a
    --resume while the run still goes, is refused instead of writing into it too. Under torchrun
    rank 0 holds it for all ranks."""
    if os.environ.get("RANK", "0") != "0":
        return None
    try:
        import fcntl
    except ModuleNotFoundError:  # pragma: no cover - not POSIX: no lock, as before
        return None
    handle = open(run_dir / LOCK_FILE, "a")  # noqa: SIM115 - open for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError("resume", f"{run_dir} is being trained by another engine right "
                          f"now; wait for it to end, or stop it first (kdtui cancel {run_dir})"
                          ) from None
    return handle


def run_dir_for(config: RunConfig) -> Path:
    return Path(config.run_dir).expanduser() if config.run_dir else \
        default_runs_dir() / config.run_name


def cmd_train(argv: list[str]) -> int:
    # a cancel while the engine starts (torch's import takes seconds) ends the run as cancelled
    catch_early()
    config, args = parse_train_args(argv)
    _refuse_under_torchrun(config)
    run_dir = run_dir_for(config)
    if not args.resume and (run_dir / "events.jsonl").exists():  # --check refuses it too
        raise _holds_a_run(run_dir, "run_dir" if config.run_dir else "run_name")
    if not args.resume:
        _refuse_a_foreign_config(run_dir, "run_dir" if config.run_dir else "run_name")
    field, fix = _check_run_dir(config, run_dir, resumed=bool(args.resume))
    try:
        # kdengine.preflight: everything the run would refuse that is known without weights
        from kdengine.preflight import check_run_inputs

        preflight = check_run_inputs(config)
        if not args.resume:  # a resume continues as it started (docs/hyperparameters.md)
            from kdengine.preflight import unused_data_option

            unused = unused_data_option(config)
            if unused is not None:
                raise unused
    except ModuleNotFoundError as exc:
        raise UsageError(f"`{PROG} train` needs {exc.name}: pip install 'kdtui[engine]'") from None
    except ConfigError as exc:  # a resume takes no flags: name the run's file, not a --flag
        if args.resume and exc.field in FIELDS_BY_NAME:
            value = str(getattr(config, exc.field, ""))
            # a run from before config.json kept absolute paths: relative to where it started
            where = (" (a path relative to the directory the run was started in: resume "
                     "from there)" if exc.field in PATH_FIELDS and value
                     and not value.startswith("demo://")
                     and not Path(value).expanduser().is_absolute() else "")
            raise ConfigError("resume", f"{exc.field} in {run_dir / 'config.json'}: "
                              f"{exc.message}{where} (the run's own config: restore what it "
                              "names, or edit that file)") from None
        # set in the --config file, not by a flag: named as the file spells it
        in_the_file = file_refusal(exc, args.config, load_config_file(Path(args.config)),
                                   _flags_given(args)) if args.config else None
        if in_the_file is not None:
            raise in_the_file from None
        raise
    # (a new run's --check has no use for it: it reads the teacher's weight files)
    teacher_identity = None if args.check and not args.resume else resume.teacher_identity(
        config, preflight.teacher.directory)
    if args.resume:
        resume.check_same_teacher(run_dir, config, teacher_identity)
        resume.check_same_examples(run_dir, config, preflight.data_content)
        resume.check_same_text(run_dir, config, preflight.tokenizer)
    _check_disk_space(config, run_dir, resumed=bool(args.resume))
    if args.check:
        print(json.dumps({"ok": True, "run_dir": str(run_dir), "config": config.to_dict(),
                          "preflight": preflight.to_dict()}, indent=2))
        return 0
    # the events name it absolute (run_started's run_dir, checkpoints' paths): a reader in
    # another working directory, or `--run-dir .`, gets the place, not the words typed
    run_dir = Path(os.path.abspath(run_dir))
    made = not run_dir.exists()
    try:  # the check above passed: an error here is the path changing in between, or a disk
        # with room for the check's probe but not for the run's files (its last inodes)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _hold_run_dir(run_dir)  # noqa: F841 - held until this process exits
        if not args.resume:
            (run_dir / "config.json").write_text(config.to_json())
        # the run's record, opened by the run, made here where a refusal is possible; not
        # under torchrun, whose ranks pass the checks above until the process group forms: a
        # slower rank would read an events.jsonl made here as another run's
        if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
            for name in ("events.jsonl", "launch.log"):
                open(run_dir / name, "a").close()  # noqa: SIM115
    except OSError as exc:
        from kdengine.preflight import run_dir_refusal

        refusal = run_dir_refusal(run_dir, field, fix, exc, made)  # (the disk as it is now)
        if made:  # nothing started: no directory of a run that never was is left behind
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise refusal from None
    from kdengine.run import run

    result = run(config, run_dir, resume=bool(args.resume), started=STARTED,
                 teacher_identity=teacher_identity)
    if result.status == "failed":  # the details and the traceback are in launch.log
        reason = result.error.strip().splitlines()[0] if result.error.strip() else "error"
        where = "traceback" if result.traceback else "log"  # (none for a NaN: the line says it)
        print(f"{PROG} train: error: [{result.stage}] failed: {reason} ({where} in "
              f"{run_dir / 'launch.log'})", file=sys.stderr, flush=True)
    return result.exit_code


RUNS_DIR_VAR = "KDENGINE_RUNS_DIR"


def _flags_given(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in FIELDS if getattr(args, f.name) is not None}


def _refuse_under_torchrun(config: RunConfig) -> None:
    """The runs that train on one process, refused under torchrun before a run directory
    exists (the trainer, which refuses them too, comes after every model is loaded)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return
    if config.samples_completions:
        raise ConfigError("lmbda" if config.lmbda > 0 else "seq_kd", "on-policy and seq_kd "
                          "runs train on one process for now: run them without torchrun")
    if config.teacher_cache:
        raise ConfigError("teacher_cache", "runs from a teacher cache train on one process "
                          "for now: run them without torchrun")


def _check_run_dir(config: RunConfig, run_dir: Path, resumed: bool) -> tuple[str, str]:
    """Refuse, before anything is created, a run directory that cannot be made or written
    (kdengine.preflight.check_run_dir), naming what picked it: --resume, --run-dir, or the runs
    directory (KDENGINE_RUNS_DIR) and --run-name under it. Returns (field, fix) for an error
    when the directory is made."""
    from kdengine.preflight import check_run_dir

    if resumed:
        field, fix = "resume", "make the run directory writable, or continue it as this user"
    elif config.run_dir:
        field, fix = "run_dir", "pick another --run-dir"
    else:
        field = RUNS_DIR_VAR
        fix = f"set {RUNS_DIR_VAR} to a directory you can write, or pass --run-dir"
        check_run_dir(default_runs_dir(), field, fix)
        check_run_dir(run_dir, "run_name", "pick another --run-name, or pass --run-dir")
        return field, fix
    check_run_dir(run_dir, field, fix)
    return field, fix


def _check_disk_space(config: RunConfig, run_dir: Path, resumed: bool) -> None:
    """Refuse, before a run directory exists, a run whose checkpoints and final student will
    not fit, sized from the student's config.json and safetensors headers (the trainer checks
    again with the loaded student, and warns when it is tight)."""
    from kdengine.diskspace import model_footprint, saves_left, space_verdict
    from kdengine.hub import is_repo_id
    from kdengine.sources import cached_snapshot

    spec = config.student
    if spec.startswith("demo://"):
        return  # a few hundred kB; the trainer's check covers it
    path = cached_snapshot(spec) if is_repo_id(spec) else Path(spec).expanduser()
    footprint = model_footprint(path) if path is not None else None
    if footprint is None:  # not downloaded yet, or not safetensors: the trainer checks
        return
    done = sorted((run_dir / "checkpoints").glob("step-*/meta.json")) if resumed else []
    start = int(done[-1].parent.name.split("-")[1]) if done else 0
    state, text = space_verdict(run_dir, footprint,
                                saves_left(config.steps, config.checkpoint_every, start),
                                len(done))
    if state == "short":
        raise ConfigError("run_dir", text)


def cmd_verdict(argv: list[str]) -> int:
    from kdengine.verdict import verdict_for_run

    p = OneLineParser(prog=f"{PROG} verdict", allow_abbrev=False,
                description="F-DISTILL-SMOKE-001 from a run's events: exit 0 pass, 1 fail, "
                "2 inconclusive")
    p.add_argument("run_dir", metavar="RUN_DIR", help="A run's directory (it holds events.jsonl)")
    p.add_argument("--json", action="store_true", help="Print the verdict as JSON")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    named = default_runs_dir() / args.run_dir
    if not run_dir.exists() and (named / "events.jsonl").is_file():  # kdtui watch's run name
        raise UsageError(f"{run_dir} does not exist here (the run of that name is {named}: "
                         f"{PROG} verdict {named})")
    if not run_dir.exists():
        raise UsageError(f"{run_dir} does not exist (give a run's directory, the one that holds "
                         "events.jsonl)")
    if not (run_dir / "events.jsonl").is_file():
        raise UsageError(f"{run_dir} has no events.jsonl: not a kdengine run dir")
    try:
        verdict = verdict_for_run(str(run_dir))
    except OSError as exc:  # unreadable: one line, as every other refusal
        raise UsageError(f"cannot read {run_dir / 'events.jsonl'}: {exc.strerror}") from None
    print(json.dumps(verdict.to_event()) if args.json else verdict.summary())
    return verdict.exit_code


def cmd_cache_teacher(argv: list[str]) -> int:
    from kdengine.teacher.command import cmd_cache_teacher as run

    return run(argv)


def cmd_version(argv: list[str]) -> int:
    p = OneLineParser(prog=f"{PROG} version", allow_abbrev=False,
                      description=f"Print the version of {PROG}")
    p.parse_args(argv)
    print(f"kdengine {kdengine.__version__}")
    return 0


COMMANDS = {"train": cmd_train, "cache-teacher": cmd_cache_teacher, "verdict": cmd_verdict,
            "version": cmd_version}
# `kdengine --help`'s line for each command, in COMMANDS' order
SUMMARIES = {
    "train": "distil a teacher into a student (`kdengine train --demo` to try it)",
    "cache-teacher": "score the data with the teacher once, for --teacher-cache",
    "verdict": "print a run's smoke verdict; exit 0 pass, 1 fail, 2 inconclusive",
    "version": "print the version",
}


def top_help() -> str:
    """`kdengine --help`: the usage line and one aligned line per command."""
    width = max(map(len, COMMANDS)) + 2
    lines = [f"  {name:<{width}}{SUMMARIES[name]}" for name in COMMANDS]
    return "\n".join([f"usage: {PROG} {{{','.join(COMMANDS)}}} ...", "", *lines,
                      "", f"`{PROG} COMMAND --help` lists a command's flags."])


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is said below, not as a traceback
    except BrokenPipeError:  # `kdengine train --check | head`: the reader stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush too
        code = 141  # as a command killed by SIGPIPE (128 + 13)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # A torchrun rank leaves without the interpreter's teardown, its run over and its exit
        # code decided: torch's process-group threads could still abort it there ("terminate
        # called without an active exception", SIGABRT), and torchrun would call the run failed.
        # Logs and events are closed by now; only the standard streams need flushing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a usage error, as kdtui's (`kdtui watch` with no run): one line on stderr
        print(f"{PROG}: error: give a command: {', '.join(COMMANDS)} (`{PROG} --help` says "
              "what each does)", file=sys.stderr)
        return EXIT_USAGE
    if argv[0] in ("-h", "--help"):
        print(top_help())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "--version":
        command = "version"
    if command not in COMMANDS:
        print(f"{PROG}: error: unknown command {command!r} ({', '.join(COMMANDS)})",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[command](rest)
    except ConfigError as exc:
        # (the --config file's own refusals too: the flag the user typed, not "config")
        _say_refusal(f"{PROG} {command}: error: {flag_of(exc.field)}: {exc.message}"
                     if exc.field else f"{PROG} {command}: error: {exc.message}")
        return EXIT_USAGE
    except UsageError as exc:
        _say_refusal(f"{PROG} {command}: error: {exc}")
        return EXIT_USAGE


# How long a torchrun rank other than its node's first waits, once it has refused the run, for
# torchrun to end it: torchrun polls its workers every 0.1 s (--monitor-interval) and stops them
# all once one has exited
OTHER_RANK_REFUSAL_WAIT_S = 10.0


def _say_refusal(line: str) -> None:
    """Bad input's one line on stderr. Under torchrun every rank refuses the same run the same
    way (the same flags, files and checks), and 8 GPUs would print the same line 8 times: the
    first rank of each node says it, and every other rank waits for torchrun to end it, which
    it does as soon as that first rank has exited. A rank still here after the wait refused on
    its own (its first rank did not), and says so. (TORCHELASTIC_RUN_ID: torchrun's worker; a
    rank started otherwise has no torchrun to end it, and speaks at once.)"""
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get("TORCHELASTIC_RUN_ID"):
        import signal

        from kdengine.stop import early_signal

        if early_signal():  # torchrun already stopped this rank: its first rank has spoken
            return
        for sig in (signal.SIGINT, signal.SIGTERM):  # torchrun's stop ends it here, as a kill
            signal.signal(sig, signal.SIG_DFL)
        time.sleep(OTHER_RANK_REFUSAL_WAIT_S)
    print(line, file=sys.stderr, flush=True)
