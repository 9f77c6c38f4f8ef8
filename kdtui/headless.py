"""Headless `kdtui launch`, `kdtui watch` and `kdtui runs`, for scripts and CI.

Plain lines on stdout: the dispatch stages, the run's log lines as they come, then the verdict.
Exit code 0 pass, 1 fail, 2 error or inconclusive (or a run left going by --detach: 0 once it
started). Settings come from, lowest first: defaults, --demo, --config FILE, the environment
(KDTUI_<FIELD> such as KDTUI_STEPS, KDTUI_BATCH_SIZE, KDTUI_LR; KDTUI_HOST,
KDTUI_FALLBACK_HOST; DRY_RUN=1), then flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.cells import cell_len

from kdengine.config import (
    FIELDS,
    RENAMED,
    ConfigError,
    RunConfig,
    default_runs_dir,
    demo_config,
    file_folder_path_refusal,
    file_key_refusal,
    flag_of,
    load_config_file,
    spelled_in,
    validate_with_preset,
)
from kdengine.events import LOG, RUN_STARTED
from kdengine.verdict import CACHE_JOB, verdict_from_events
from kdtui.launch.base import StageUpdate, config_differences
from kdtui.launch.outcome import WatchedRun
from kdtui.remote.hosts import LOCAL, HostsFileError
from kdtui.remote.manifest import check_evidence_dir
from kdtui.runs import fit_end, fit_run
from kdtui.samples import SAMPLE_EVENT, Sample, StepLineSplits, sample_line
from kdtui.watch import LocalRunSource, RunFollower, RunSource

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
ALIVE_CHECK_EVERY = 5.0  # seconds without news before asking whether the engine still lives
DEAD_ENGINE_LINES = 8  # log lines repeated when the engine died without a word


def env_flag(name: str) -> bool:
    """An on/off variable (DRY_RUN): 1/true/yes/on, 0/false/no/off or unset; anything else is a
    ConfigError naming it, never read as off (DRY_RUN=ture would start a real run)."""
    value = os.environ.get(name, "").strip().lower()
    if value not in ("", "1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(name, f"is {os.environ[name]!r}: set it to 1 (or true, yes, on), "
                          "0 (or false, no, off), or unset it")
    return value in ("1", "true", "yes", "on")


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None, *,
                     require_models: bool = True) -> RunConfig:
    """defaults < --demo < --config < KDTUI_<FIELD> env < flags; then the cross-field rules
    (require_models=False: an engine that takes no data field, such as apr distill)."""
    environ = dict(os.environ if environ is None else environ)
    preset = demo_config() if getattr(args, "demo", False) else None
    values: dict[str, Any] = preset.to_dict() if preset is not None else {}
    chosen: set[str] = set()  # the fields the user set: a rule broken by the preset says so
    in_file: dict[str, Any] = {}
    if getattr(args, "config", None):
        in_file = load_config_file(Path(args.config))
        refused = config_file_refusal(in_file, args, environ)
        if refused:
            raise ConfigError(None, refused)
        values.update(in_file)
        chosen.update(in_file)
    try:
        config = RunConfig.from_mapping(values)
    except ConfigError as exc:  # a key of the file: named as the file spells it, not a --flag
        raise ConfigError(None, f"{spelled_in(exc.field, in_file)} in {args.config}: "
                                f"{exc.message}" if exc.field else
                                f"{args.config}: {exc.message}") from None
    for f in FIELDS:  # one variable at a time: an error names the variable the user set
        var = f"KDTUI_{f.name.upper()}"
        if var in environ:
            chosen.add(f.name)
            try:
                config = config.with_values(**{f.name: environ[var]})
            except ConfigError as exc:
                raise ConfigError(None, f"{var}: {exc.message}") from None
    given = {f.name: getattr(args, f.name) for f in FIELDS
             if getattr(args, f.name, None) is not None}
    try:
        return validate_with_preset(config.with_values(**given), preset, chosen | set(given),
                                    require_models=require_models)
    except ConfigError as exc:  # a value the --config file set: named as the file spells it
        over = set(given) | {f.name for f in FIELDS if f"KDTUI_{f.name.upper()}" in environ}
        in_the_file = file_key_refusal(exc, getattr(args, "config", None), in_file, over)
        if in_the_file is None:
            raise
        raise ConfigError(None, in_the_file) from None


def config_file_refusal(in_file: dict[str, Any], args: argparse.Namespace,
                        environ: dict[str, str] | None = None) -> str | None:
    """What `kdengine train --config FILE` refuses in the file before anything else (a relative
    path that only the file's folder has: kdengine.config.file_folder_path_refusal), for the
    same file given to `kdtui launch`: its paths are read from the working directory too, and
    one that names nothing there passed for a hub id until the check, a second later, named a
    --flag the user never typed. Fields set by a flag or a KDTUI_ variable are not read."""
    environ = dict(os.environ if environ is None else environ)
    over = {f.name for f in FIELDS if getattr(args, f.name, None) is not None or
            f"KDTUI_{f.name.upper()}" in environ}
    return file_folder_path_refusal(in_file, Path(args.config), over)


def file_spellings(args: argparse.Namespace, environ: dict[str, str] | None = None
                   ) -> dict[str, str]:
    """{'--teacher': 'teacher in run.toml'}: the fields `--config FILE` set (and no flag or
    KDTUI_ variable overrode), named as the file spells them. The engine's check refuses a
    value by its --flag; the user wrote the file's key, and a headless launch said the flag."""
    if not getattr(args, "config", None):
        return {}
    environ = dict(os.environ if environ is None else environ)
    try:
        in_file = load_config_file(Path(args.config))
    except ConfigError:
        return {}
    out: dict[str, str] = {}
    set_in_file = {RENAMED.get(k, k) for k in in_file}
    for f in FIELDS:
        if f.name not in set_in_file:
            continue
        if getattr(args, f.name, None) is not None or f"KDTUI_{f.name.upper()}" in environ:
            continue
        out[f.flag] = f"{spelled_in(f.name, in_file)} in {args.config}"
    return out


_REFUSED_FLAG = re.compile(r"(^|: )(--[a-z][a-z0-9-]*)(?=: )")


def as_spelled(text: str, spellings: dict[str, str]) -> str:
    """A refusal's `--flag: ...` as `key in FILE: ...` for a field the --config file set."""
    if not spellings:
        return text
    return _REFUSED_FLAG.sub(lambda m: m.group(1) + spellings.get(m.group(2), m.group(2)),
                             text)


class StagePrinter:
    """StageUpdates as plain lines: one per state change, output lines indented under it.
    `spellings` (file_spellings): a refusal of a --config file's key names it as the file."""

    def __init__(self, out: TextIO, spellings: dict[str, str] | None = None) -> None:
        self.out = out
        self.spellings = spellings or {}
        self._last: dict[tuple[str, str], str] = {}

    def __call__(self, update: StageUpdate) -> None:
        key = (update.host, update.stage)
        for line in update.output:
            self._print(f"  | {line}")
        if self._last.get(key) == update.state and not update.detail:
            return
        self._last[key] = update.state
        if update.state == "pending" and not update.detail:
            return
        timing = f" {update.elapsed:.1f}s" if update.state in ("done", "failed", "skipped") else ""
        where = f" on {update.host}" if update.host else ""
        detail = f": {as_spelled(update.detail, self.spellings)}" if update.detail else ""
        self._print(f"[{update.stage}] {update.state}{timing}{where}{detail}")

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


@dataclass
class WatchResult:
    code: int  # 0 pass, 1 fail, 2 error or inconclusive
    verdict: dict[str, Any]
    finished: dict[str, Any] | None  # the run_finished event, if the run wrote one
    events: list[dict[str, Any]]  # every event seen, in order, each once
    log_lines: int  # launch.log lines printed
    config_errors: list[str]
    watched: WatchedRun | None = None  # what the manifest records (kdtui.launch.outcome)


async def follow_to_verdict(source: RunSource, *, out: TextIO,
                            is_alive: Callable[[], Awaitable[bool]],
                            asked: dict[str, Any] | None = None,
                            interval: float = 0.3, log_offset: int = 0,
                            resuming: str | None = None,
                            resume_ref: str | None = None) -> WatchResult:
    """Print the run's log lines until it finishes, then the verdict.

    The whole history is read from offset 0, so attaching late still sees every event. A
    difference between the config asked for and the one the engine echoes in run_started is an
    error on screen and makes the exit code 2 whatever the verdict. `resuming` (the run's
    name): a resume was just started, so the end of the run's earlier part is not the end, and
    log lines before `log_offset` (that part's) are not printed again. `resume_ref`: what
    `kdtui resume` takes for this run, for the hint a dead engine gets (default: the run's name).
    """
    follower = RunFollower(source, log_offset=log_offset)
    watched = WatchedRun()
    last_lines: deque[str] = deque(maxlen=DEAD_ENGINE_LINES)
    events: list[dict[str, Any]] = []
    config_errors: list[str] = []
    finished: dict[str, Any] | None = None
    last_news = time.monotonic()
    died = False
    printed = 0

    # rank 0 writes a failed rank's `log` event, then the same error as a launch.log line; the
    # event is read first (events before log in a poll), so the line can be printed with its rank
    # engine's line -> "ERROR (rank N): ..." to print in its place ("": printed already)
    rank_lines: dict[str, str] = {}
    splits = StepLineSplits()  # an on-policy step's time split, for the engine's step line

    def take(update: Any) -> None:
        nonlocal finished, printed
        printed += len(update.log_lines)
        for event in update.events:
            splits.note(event)
            if event.get("type") == LOG and event.get("level") == "error" and "rank" in event:
                message = str(event.get("message", ""))
                ours = f"ERROR (rank {event['rank']}): {_rank_message(message)}"
                engine_line = f"ERROR: {message}"
                if engine_line in update.log_lines:
                    rank_lines[engine_line] = ours
                else:  # its log line comes in a later poll, or never: print it now
                    rank_lines[engine_line] = ""
                    print(ours, file=out, flush=True)
        for line in update.log_lines:
            if line in rank_lines:
                line = rank_lines.pop(line)
                if not line:
                    continue
            if line.strip():
                last_lines.append(line)
            print(splits.line(line), file=out, flush=True)
        for event in update.events:
            events.append(event)
            watched.add(event)
            if event.get("type") == SAMPLE_EVENT and (sample := Sample.from_event(event)):
                print(sample_line(sample), file=out, flush=True)
            if event.get("type") == RUN_STARTED and asked is not None:
                echoed = event.get("config")
                diffs = config_differences(asked, echoed) if isinstance(echoed, dict) else \
                    ["run_started carries no config"]
                for diff in diffs:
                    config_errors.append(diff)
                    print(f"ERROR: effective config differs from what was asked: {diff}",
                          file=out, flush=True)
        # a resumed run's earlier part ended with a run_finished that its resume makes moot
        finished = watched.finished if not resuming or watched.resumed_from else None

    while True:
        update = await follower.poll()
        take(update)
        if finished is not None:
            # a poll reads a slice: a resumed run's earlier end may close it, its resume next
            more = await follower.poll()
            take(more)
            if finished is not None:
                break
            continue
        if update:
            last_news = time.monotonic()
            continue
        if time.monotonic() - last_news > ALIVE_CHECK_EVERY:
            last_news = time.monotonic()
            if not await is_alive():
                take(await follower.poll())  # what it wrote just before dying
                died = finished is None
                watched.gone = died
                watched.log_tail = list(last_lines)
                break
        await asyncio.sleep(interval)
    while (update := await follower.poll()):  # the log lines after run_finished
        take(update)

    verdict_of = verdict_from_events(watched.verdict_events(events))
    verdict = verdict_of.to_event()
    if died:
        print("ERROR: the engine is gone without finishing the run (killed, or the box "
              "rebooted); its last log lines:", file=out, flush=True)
        for line in last_lines:
            print(f"  | {line}", file=out, flush=True)
        name = resume_ref or resuming or _run_name(events)
        if watched.checkpoint_step is not None and name:
            print(f"resume it from its checkpoint at step {watched.checkpoint_step}: "
                  f"kdtui resume {name}", file=out, flush=True)
        elif _is_cache_job(events) and name:  # a job has no checkpoint: its shards are kept
            print(f"finish it (its finished shards are kept): kdtui resume {name}", file=out,
                  flush=True)
    summary = verdict_of.summary()
    code = {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(verdict["status"], EXIT_ERROR)
    if config_errors:
        code = EXIT_ERROR
    # kdtui's own last line (the engine's log has its own "verdict ..." line above)
    print(f"result: {summary} (exit {code})", file=out, flush=True)
    if follower.events.gaps or follower.events.duplicates:
        print(f"WARNING: event stream gaps {follower.events.gaps}, duplicates skipped "
              f"{follower.events.duplicates}", file=out, flush=True)
    return WatchResult(code, verdict, finished, events, printed, config_errors, watched)


def _run_started(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next((e for e in events if e.get("type") == RUN_STARTED), {})


def _run_name(events: list[dict[str, Any]]) -> str | None:
    started = _run_started(events)
    return str(started["run_id"]) if started.get("run_id") else None


def _is_cache_job(events: list[dict[str, Any]]) -> bool:
    # (kdtui.widgets.cache_job.is_cache_job says the same, but imports the run screen's widgets)
    return _run_started(events).get("job") == CACHE_JOB


def _rank_message(message: str) -> str:
    """A relayed rank error's message without its 'rank N failed: ' (the rank is printed)."""
    head, sep, rest = message.partition(" failed: ")
    return rest if sep and head.startswith("rank ") and head[5:].isdigit() else message


# -- launch ------------------------------------------------------------------------------------
class Lines:
    """`out` (a terminal, a pipe) as the headless commands write to it, knowing whether its last
    line was ended: a Ctrl-C raises KeyboardInterrupt wherever the main thread is, also between
    a print's text and its newline, and the interrupt's own line must not be glued to that
    half-written one ('[check] running on localinterrupted before ...'). On a terminal the
    ^C it echoes is never ended either."""

    def __init__(self, out: TextIO) -> None:
        self._out, self._ended = out, True

    def write(self, text: str) -> int:
        if text:
            self._ended = text.endswith("\n")
        return self._out.write(text)

    def flush(self) -> None:
        self._out.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno ... as `out` has them
        return getattr(self._out, name)

    def say_after_interrupt(self, line: str) -> None:
        tty = getattr(self._out, "isatty", lambda: False)()
        print(("\n" if tty or not self._ended else "") + line, file=self, flush=True)


def headless_launch(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = Lines(out or sys.stdout)
    try:
        config = config_from_args(args)
        dry_run = args.dry_run or env_flag("DRY_RUN") or env_flag("KDTUI_DRY_RUN")
        if not dry_run and (args.host or os.environ.get("KDTUI_HOST") or LOCAL) != LOCAL:
            check_evidence_dir()  # where the dispatch's manifest goes
    except ConfigError as exc:
        flag = flag_of(exc.field) if exc.field else None  # --config: the flag typed
        print(f"kdtui launch: error: {flag}: {exc.message}" if flag else
              f"kdtui launch: error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    host = args.host or os.environ.get("KDTUI_HOST") or LOCAL
    fallback = getattr(args, "fallback_host", None) or os.environ.get("KDTUI_FALLBACK_HOST")
    runs_dir = Path(args.runs_dir) if getattr(args, "runs_dir", None) else default_runs_dir()
    spellings = file_spellings(args)
    try:
        if host != LOCAL:  # a typo'd host: one line, a dry run as a launch, nothing written
            from kdtui.remote.connect import refuse_unknown_host

            refuse_unknown_host(host, "--host" if args.host else "KDTUI_HOST")
            if fallback:
                refuse_unknown_host(fallback, "--fallback-host" if getattr(
                    args, "fallback_host", None) else "KDTUI_FALLBACK_HOST")
        if dry_run:
            from kdtui.launch.plan import plan_lines

            for line in plan_lines(config, host, fallback, runs_dir):
                print(line, file=out)
            return 0
        from kdtui.launch.remote import stamp_run_name

        config = stamp_run_name(config)  # known now, so a Ctrl-C can say how to come back
        if host == LOCAL:
            if fallback:
                print("kdtui launch: error: --fallback-host needs a remote --host",
                      file=sys.stderr)
                return EXIT_ERROR
            return asyncio.run(_launch_local(config, runs_dir, args.detach, out, spellings))
        return asyncio.run(_launch_remote(config, host, fallback, args.detach, out, spellings))
    except HostsFileError as exc:
        print(f"kdtui launch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        out.say_after_interrupt(_interrupted_launch(config, host, runs_dir))
        return EXIT_ERROR


def _interrupted_launch(config: RunConfig, host: str, runs_dir: Path) -> str:
    """A Ctrl-C's line: 'the run goes on' only of a run that was started (a local engine.pid,
    a dispatch's manifest saying launched); before, nothing runs and no watch would find it."""
    name = config.run_name
    if host == LOCAL:
        from kdtui.launch.local import LocalLauncher
        from kdtui.runs import PID_FILE

        started = bool(name) and (LocalLauncher(config, runs_dir).run_dir / PID_FILE).is_file()
    else:
        from kdtui.remote.manifest import find_manifest, read_manifest

        path = find_manifest(name) if name else None
        try:
            started = path is not None and bool(read_manifest(path).get("launched"))
        except (OSError, ValueError):
            started = True  # a manifest there, unreadable: say how to look, not that none runs
    if started:
        return f"detached: the run goes on; come back with: kdtui watch {name}"
    where = "" if host == LOCAL else f" on {host}"
    return f"interrupted before the run started: nothing runs{where}; launch it again to run it"


async def _launch_local(config: RunConfig, runs_dir: Path, detach: bool, out: TextIO,
                        spellings: dict[str, str] | None = None) -> int:
    from kdtui.launch.local import LaunchError, LocalLauncher

    launcher = LocalLauncher(config, runs_dir)
    try:
        handle = await launcher.start(StagePrinter(out, spellings))
    except LaunchError as exc:
        print(f"ERROR: {as_spelled(str(exc), spellings or {})}", file=out, flush=True)
        return EXIT_ERROR
    if detach:
        print(f"detached: run {handle.run_id} goes on; follow it with: {handle.reattach_hint()}",
              file=out, flush=True)
        return EXIT_PASS

    async def alive() -> bool:
        return handle.is_alive()
    result = await follow_to_verdict(handle.source, out=out, is_alive=alive,
                                     asked=launcher.config.to_dict())
    return result.code


async def _launch_remote(config: RunConfig, host: str, fallback: str | None, detach: bool,
                         out: TextIO, spellings: dict[str, str] | None = None) -> int:
    from kdtui.launch.remote import DispatchError, RemoteLauncher

    def status(text: str) -> None:
        print(f"[watch] {text}", file=out, flush=True)

    launcher = RemoteLauncher(config, host, fallback, on_status=status)
    try:
        handle = await launcher.start(StagePrinter(out, spellings))
    except DispatchError as exc:
        # the failed stage above already said why; a fallback's summary names every host
        summary = as_spelled(str(exc), spellings or {}) if len(launcher.attempts) > 1 or \
            exc.engine_may_run else "see the failed stage above"
        print(f"ERROR: dispatch failed: {summary}; evidence in {launcher.manifest_path}",
              file=out, flush=True)
        return EXIT_ERROR
    return await after_dispatch(handle, out, detach, lambda: _watch_remote_handle(handle, out))


async def after_dispatch(handle: Any, out: TextIO, detach: bool,
                         watch: Callable[[], Awaitable[int]]) -> int:
    """Say where a dispatched run is, then detach or watch it to its verdict; the handle's
    connection is closed either way. Shared by every remote engine profile."""
    from kdtui.remote.connect import RemoteError

    try:
        print(f"run {handle.run_id} on {handle.host}: {handle.run_dir} (pid {handle.pid}); "
              f"manifest {handle.manifest}", file=out, flush=True)
        if detach:
            print(f"detached: the run goes on; follow it with: {handle.reattach_hint()}",
                  file=out, flush=True)
            return EXIT_PASS
        return await watch()
    except RemoteError as exc:
        print(f"ERROR: {exc}", file=out, flush=True)
        return EXIT_ERROR
    finally:
        await handle.close()


async def _watch_remote_handle(handle: Any, out: TextIO, log_offset: int = 0,
                               resuming: str | None = None) -> int:
    from kdtui.remote.connect import RemoteError

    async def alive() -> bool:
        state = await handle.status()
        missing = handle.missing_run_dir(state)
        if missing:  # not an engine gone without a word: said as it is, and not recorded
            raise RemoteError(missing)
        return bool(state.get("alive"))

    # `kdtui resume` finds a dispatch by its id (the run's --run-name); the events' run_id is
    # the remote directory's name, which a --run-dir may make another
    result = await follow_to_verdict(handle.source, out=out, is_alive=alive,
                                     asked=handle.asked_config, log_offset=log_offset,
                                     resuming=resuming, resume_ref=handle.run_id)
    if result.watched is not None:  # the one code path the dashboard records through too
        result.watched.record(handle.manifest, result.verdict)
    return result.code


# -- resume ------------------------------------------------------------------------------------
def headless_resume(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`kdtui resume RUN --headless`: the resume's stages, then the run to its verdict (or
    --detach); a run that cannot resume is one line, exit 2."""
    from kdtui.launch.resume import ResumeRefused
    from kdtui.launch.resumers import resumer_for

    out = Lines(out or sys.stdout)
    runs_dir = Path(args.runs_dir) if getattr(args, "runs_dir", None) else default_runs_dir()

    def status(text: str) -> None:
        print(f"[watch] {text}", file=out, flush=True)
    try:
        resumer = resumer_for(args.run, runs_dir, on_status=status)
    except ResumeRefused as exc:
        print(f"kdtui resume: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    before = _resume_marks(resumer)
    try:
        return asyncio.run(_resume(resumer, args.detach, out))
    except KeyboardInterrupt:
        if _resume_marks(resumer) == before:  # nothing was started: the run is as it was
            out.say_after_interrupt(f"interrupted before the resume started: {resumer.run_id} "
                                    f"stays as it was; `kdtui resume {resumer.run_id}` "
                                    "resumes it")
        else:
            out.say_after_interrupt(f"detached: the run goes on; come back with: kdtui watch "
                                    f"{resumer.run_id}")
        return EXIT_ERROR


def _resume_marks(resumer: Any) -> object:
    """What a resume's start changes: a remote run's manifest segments (one is added before the
    start), a local run's engine.pid."""
    from kdtui.remote.manifest import read_manifest
    from kdtui.runs import PID_FILE

    try:
        if getattr(resumer, "manifest", None) is not None:
            return len(read_manifest(Path(resumer.manifest)).get("segments") or [])
        return (Path(resumer.run_dir) / PID_FILE).read_text()
    except (AttributeError, OSError, ValueError):
        return None


async def _resume(resumer: Any, detach: bool, out: TextIO) -> int:
    from kdtui.launch.local import LaunchError
    from kdtui.launch.resume import ResumeRefused

    try:
        handle = await resumer.start(StagePrinter(out))
    except (ResumeRefused, LaunchError) as exc:
        print(f"ERROR: resume failed: {exc}", file=out, flush=True)
        return EXIT_ERROR
    if getattr(handle, "manifest", None) is None:  # local
        if detach:
            print(f"detached: run {handle.run_id} goes on; follow it with: "
                  f"{handle.reattach_hint()}", file=out, flush=True)
            return EXIT_PASS

        async def alive() -> bool:
            return handle.is_alive()
        result = await follow_to_verdict(handle.source, out=out, is_alive=alive,
                                         asked=handle.asked_config, resuming=handle.run_id,
                                         log_offset=resumer.log_offset)
        return result.code
    return await after_dispatch(handle, out, detach, lambda: _watch_remote_handle(
        handle, out, log_offset=resumer.log_offset, resuming=handle.run_id))


# -- watch -------------------------------------------------------------------------------------
def headless_watch(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = Lines(out or sys.stdout)
    try:
        return asyncio.run(_watch(args.run, getattr(args, "runs_dir", None), out))
    except KeyboardInterrupt:
        out.say_after_interrupt(f"detached: the run goes on; come back with: kdtui watch "
                                f"{args.run}")
        return EXIT_ERROR


async def _watch(ref: str, runs_dir: str | None, out: TextIO) -> int:
    from kdtui.remote.manifest import find_manifest

    manifest = find_manifest(ref)
    if manifest is not None:
        from kdtui.launch.remote import DispatchError, RemoteRunHandle
        from kdtui.remote.connect import RemoteError
        from kdtui.remote.manifest import read_manifest
        from kdtui.remote.recorded import recorded_outcome

        def status(text: str) -> None:
            print(f"[watch] {text}", file=out, flush=True)
        try:
            data = read_manifest(manifest)
            if not data.get("launched"):  # refused as the command's own line, not a run's
                print(f"kdtui watch: error: {data.get('run_id') or ref}: this dispatch never "
                      f"started a run ({data.get('error') or 'no launch recorded'}): launch "
                      "it again", file=sys.stderr)
                return EXIT_ERROR
            handle = RemoteRunHandle.from_manifest(manifest, on_status=status)
        except (DispatchError, HostsFileError, OSError, ValueError) as exc:
            print(f"kdtui watch: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"watching {handle.run_id} on {handle.host}: {handle.run_dir}", file=out,
              flush=True)
        try:
            recorded = recorded_outcome(manifest, read_manifest(manifest))
            if recorded is not None:  # an ended run: its host down is no reason to wait
                why = await handle.source.try_connect()
                if why is not None:
                    return _print_recorded(recorded, handle.host, why, out)
            return await _watch_remote_handle(handle, out)
        except RemoteError as exc:
            print(f"ERROR: {exc}", file=out, flush=True)
            return EXIT_ERROR
        finally:
            await handle.close()
    where = Path(runs_dir).expanduser() if runs_dir else default_runs_dir()
    run_dir = _local_run_dir(ref, where)
    if run_dir is None:  # as the dashboard's `kdtui watch` says it (kdtui.cli.missing_run)
        print(f"kdtui watch: error: no run {ref!r}: not a dispatch.json, a run directory, or a "
              f"run id in {where} or the evidence dir (see `kdtui runs`)", file=sys.stderr)
        return EXIT_ERROR
    from kdtui.remote.agent import _status  # the same pid + finished check, run locally

    async def alive() -> bool:
        return bool(_status(str(run_dir))["alive"])
    print(f"watching {run_dir.name} on local: {run_dir}", file=out, flush=True)
    config = _local_config(run_dir)
    # `kdtui resume` finds a run of the runs dir by its name, any other by its path (a cache
    # job's run id is not its directory's name)
    home = Path(runs_dir) if runs_dir else default_runs_dir()
    in_home = run_dir.resolve().parent == home.expanduser().resolve()
    result = await follow_to_verdict(LocalRunSource(run_dir), out=out, is_alive=alive,
                                     asked=config,
                                     resume_ref=run_dir.name if in_home else str(run_dir))
    return result.code


def _print_recorded(recorded: Any, host: str, why: str, out: TextIO) -> int:
    """An ended run whose host is down: the outcome its manifest recorded, with the exit code
    a watch of it to the end gives."""
    print(recorded.unreachable_line(host, why), file=out, flush=True)
    verdict = recorded.verdict
    code = {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(verdict.status, EXIT_ERROR)
    print(f"result: {verdict.summary()} (exit {code})", file=out, flush=True)
    return code


def _local_run_dir(ref: str, runs_dir: Path) -> Path | None:
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    candidate = runs_dir / ref
    return candidate if candidate.is_dir() and "/" not in ref else None


def _local_config(run_dir: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None


# -- runs --------------------------------------------------------------------------------------
def print_runs(args: argparse.Namespace, out: TextIO | None = None,
               width: int | None = None) -> int:
    """Local runs and remote dispatches, newest first, in padded columns with how to reattach,
    each on one line of the terminal (`width`: $COLUMNS, else the terminal's; a pipe gets the
    whole rows): where the whole row does not fit, the columns give way as the dashboard's runs
    list's do (runs_layouts); `kdtui runs --plain` prints the same runs for scripts."""
    import shutil

    from kdtui.runs import all_runs

    out = out or sys.stdout
    if width is None and (os.environ.get("COLUMNS") or out.isatty()):
        width = shutil.get_terminal_size((80, 24)).columns
    width = width or 1 << 16
    given = getattr(args, "runs_dir", None)
    runs_dir = Path(given) if given else default_runs_dir()
    entries = all_runs(runs_dir)
    if not entries:
        print("no runs yet: start one with `kdtui launch --demo --headless`", file=out)
        return 0
    by_name = "" if given is None else f" --runs-dir {given}"
    for layout in runs_layouts(entries, by_name):
        header, rows, footer = layout
        widths = [max(cell_len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
        room = width - sum(widths[1:]) - 2 * (len(header) - 1)
        # beside a reattach (it holds the whole id) the run column may give way to RUN_MIN
        if room >= (min(widths[0], RUN_MIN) if header[-1] == "REATTACH" else widths[0]):
            break
    if room < widths[0]:  # its teacher label goes first, then the middle of its id (fit_run)
        if room < RUN_ID_MIN:  # the last layout, still too wide: the host gives way too
            host = max(min(widths[1], HOST_WIDTH), cell_len(header[1]))
            room, widths[1] = room + widths[1] - host, host
        widths[0] = max(room, RUN_ID_MIN)
        rows = [(fit_run("", row[0], widths[0]), fit_end(row[1], widths[1]), *row[2:])
                for row in rows]
    for row in (header, *rows):
        cells = "  ".join(str(c) + " " * (w - cell_len(str(c)))
                          for c, w in zip(row[:-1], widths, strict=False))
        print(f"{cells}  {row[-1]}", file=out)
    if footer:
        print(footer, file=out)
    return 0


RUN_MIN = 22  # `kdtui runs`'s run column beside a reattach: a timestamped id whole
RUN_ID_MIN = 17  # its least anywhere: an id's end ('…-20261130-074500')
HOST_WIDTH = 12  # its host column where even that is too wide ('gpu-box-a10…')


def runs_layouts(entries: list[Any], by_name: str) -> Any:
    """(header, rows, footer) for `kdtui runs`, the widest first: every cell whole; the start
    time short ('11-30 07:45', UTC); the reattach by the run's name; then without the reattach
    column, said once in the footer (`by_name`: the --runs-dir a name is found in, if not the
    default one); then without the start time too (the runs are newest first)."""
    def started(entry: Any, short: bool) -> str:
        if not entry.started:
            return "-"
        when = time.gmtime(entry.started)
        if not short:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", when)
        this_year = when.tm_year == time.gmtime().tm_year
        return time.strftime("%m-%d %H:%M" if this_year else "%Y-%m-%d", when)

    def reattach(entry: Any, short: bool) -> str:
        if short and entry.info is not None:
            return f"kdtui watch {entry.run_id}{by_name}"
        return entry.reattach

    def cells(entry: Any, short_start: bool, short_reattach: bool | None) -> tuple[str, ...]:
        row = (entry.run_id + (f" ({entry.teacher})" if entry.teacher else ""), entry.where,
               entry.status, entry.verdict_word or "-", started(entry, short_start))
        return row if short_reattach is None else (*row, reattach(entry, short_reattach))

    header = ("RUN", "HOST", "STATE", "VERDICT", "STARTED (UTC)", "REATTACH")
    for short_start, short_reattach in ((False, False), (True, False), (True, True)):
        yield header, [cells(e, short_start, short_reattach) for e in entries], ""
    failed = any(e.info is None and e.status == "dispatch failed" for e in entries)
    footer = f"reattach: kdtui watch RUN{by_name}" + \
        (" (a dispatch that failed: see its dispatch.json)" if failed else "")
    yield header[:-1], [cells(e, True, None) for e in entries], footer
    yield header[:-2], [cells(e, True, None)[:-1] for e in entries], footer
