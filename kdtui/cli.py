"""`kdtui`: the dashboard, plus headless `launch` and `watch` for scripts and CI.

    kdtui [--theme NAME]                      open the dashboard (launch form first)
    kdtui launch [--headless] [--host H] ...  dispatch a run (engine flags as `kdengine train`)
    kdtui launch --cache-teacher ...          a teacher-cache job instead (kdengine cache-teacher)
    kdtui watch RUN [--headless]              follow a run by id, run dir or dispatch.json
    kdtui runs [--plain]                      list past and running runs (--plain: for scripts)
    kdtui compare RUN RUN... [--plain]        runs side by side: curves, differing fields, val CE
    kdtui cancel RUN [--timeout S]            cancel a run and wait until it ended
    kdtui resume RUN [--headless] [--detach]  continue a stopped/failed/cancelled run from its
                                              newest checkpoint, local or on its own host

Headless commands print plain lines and exit 0 pass / 1 fail / 2 error or inconclusive.
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kdengine.config import add_field_flags

if TYPE_CHECKING:
    from kdtui.compare import CompareTarget


class UsageError(Exception):
    """A command line kdtui cannot act on: one line on stderr, exit 2, prefixed as the headless
    commands prefix theirs (`kdtui watch: error: ...`; `kdtui: error: ...` before a command)."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog  # "kdtui watch"; None: the command's, once it is known


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message, self.prog)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdtui", allow_abbrev=False,
                description="Run and watch knowledge-distillation runs.")
    p.add_argument("--theme", help="Dashboard theme (remembered): see the command palette")
    p.add_argument("--runs-dir", help="Where local runs live (default: kdengine's runs dir)")
    # the same two after the command too (`kdtui watch RUN --theme kdtui-light` was refused as
    # an unknown argument); SUPPRESS: one not given there leaves the one given before it
    shared = _Parser(add_help=False)
    shared.add_argument("--theme", default=argparse.SUPPRESS,
                        help="Dashboard theme (remembered), as before the command")
    shared.add_argument("--runs-dir", default=argparse.SUPPRESS,
                        help="Where local runs live, as before the command")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    add_parser = sub.add_parser

    def with_shared(name: str, **kwargs):
        return add_parser(name, parents=[shared], **kwargs)

    sub.add_parser = with_shared  # type: ignore[method-assign]

    launch = sub.add_parser("launch", help="Dispatch a run", allow_abbrev=False)
    launch.add_argument("--headless", action="store_true", help="Plain lines, no dashboard")
    launch.add_argument("--host", help="Host from ~/.ssh/config or the kdtui hosts file; "
                        "'local' (default) runs the embedded engine")
    launch.add_argument("--fallback-host", help="Host to use when the primary fails preflight")
    launch.add_argument("--dry-run", action="store_true",
                        help="Print the whole plan and every remote command; touch nothing")
    launch.add_argument("--config", metavar="FILE", help="Read run fields from .toml or .json")
    launch.add_argument("--demo", action="store_true", help="Start from the demo preset")
    launch.add_argument("--detach", action="store_true",
                        help="Headless: return once the run is started, do not watch it")
    add_field_flags(launch)  # every run field, as `kdengine train` takes it
    from kdtui.profiles.apr.cli import add_apr_arguments  # --profile apr and apr's settings

    add_apr_arguments(launch)
    from kdtui.launch.cache_cli import add_cache_arguments  # --cache-teacher, --top-k...

    add_cache_arguments(launch)

    watch = sub.add_parser("watch", help="Follow a run", allow_abbrev=False)
    watch.add_argument("run", help="Run id, run directory, or dispatch.json")
    watch.add_argument("--headless", action="store_true", help="Plain lines, no dashboard")

    runs = sub.add_parser("runs", help="List past and running runs", allow_abbrev=False)
    runs.add_argument("--plain", action="store_true",
                      help="One run a line, tab-separated, newest first: id, where (local or "
                           "host), status, step/total, verdict, started (UTC)")

    compare = sub.add_parser("compare", help="Runs side by side: val CE, val KD and train "
                             "loss overlaid, the fields that differ, final val CE, verdict",
                             allow_abbrev=False)
    compare.add_argument("runs", nargs="+", metavar="RUN",
                         help="Run ids, run directories or remote dispatches (their run id "
                              "or dispatch.json): two or more")
    compare.add_argument("--plain", action="store_true",
                         help="Print the table (differing fields, final val CE, verdict, "
                              "tokens/s) instead of opening the dashboard")

    from kdtui.control import DEFAULT_TIMEOUT

    cancel = sub.add_parser("cancel", help="Cancel a run and wait until it ended",
                            allow_abbrev=False)
    cancel.add_argument("run", help="Run id, run directory, or dispatch.json (as `kdtui watch`)")
    cancel.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"Seconds to wait for the run to end (default {DEFAULT_TIMEOUT:g})")

    resume = sub.add_parser("resume", help="Continue a stopped, failed or cancelled run from "
                            "its newest checkpoint", allow_abbrev=False)
    resume.add_argument("run", help="Run id, run directory, or dispatch.json (as `kdtui watch`)")
    resume.add_argument("--headless", action="store_true", help="Plain lines, no dashboard")
    resume.add_argument("--detach", action="store_true",
                        help="Headless: return once the engine runs again, do not watch it")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is said below, not as a traceback
        return code
    except BrokenPipeError:  # `kdtui runs | head`: the reader stopped reading; nothing to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush too
        return 141  # as a command killed by SIGPIPE (128 + 13)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "kdtui"
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if args.command:
            prog = f"kdtui {args.command}"
        if unknown:
            raise UsageError(f"unknown argument {unknown[0]} (see `{prog} --help`)")
        if getattr(args, "theme", None) is not None:
            from kdtui.app import theme_refusal

            refused = theme_refusal(args.theme)
            if refused:
                raise UsageError(refused)
        if args.command == "launch" and args.profile == "apr":
            # apr distill on an SSH host: in the dashboard, or plain lines with --headless
            from kdtui.profiles.apr.cli import launch_from_args

            return launch_from_args(args)
        if args.command == "watch" and args.headless:
            from kdtui.profiles.apr.cli import apr_manifest, watch_from_ref

            if apr_manifest(args.run) is not None:
                return watch_from_ref(args.run)
        if args.command == "launch" and args.cache_teacher:
            # a teacher-cache job instead of a run: the dashboard on it, or --headless lines
            from kdtui.launch.cache_cli import launch_cache_from_args

            return launch_cache_from_args(args)
        if args.command == "launch" and args.headless:
            from kdtui.headless import headless_launch

            return headless_launch(args)
        if args.command == "watch" and args.headless:
            from kdtui.headless import headless_watch

            return headless_watch(args)
        if args.command == "runs" and args.plain:
            from kdtui.control import print_plain_runs

            return print_plain_runs(args)
        if args.command == "cancel":
            from kdtui.control import cancel_command

            return cancel_command(args)
        if args.command == "resume" and args.headless:
            from kdtui.headless import headless_resume

            return headless_resume(args)
        if args.command == "resume":
            return _resume_in_dashboard(args)
        if args.command == "compare":
            targets = compare_targets(args.runs, getattr(args, "runs_dir", None))
            if args.plain:
                from kdtui.compare import CompareError, load_summaries, plain_table

                try:
                    print(plain_table(load_summaries(targets)))
                except CompareError as exc:
                    raise UsageError(str(exc)) from None
                return 0
            args.compare_targets = targets
        if args.command == "runs":
            from kdtui.headless import print_runs

            return print_runs(args)
        if args.command == "watch":
            missing = missing_run(args.run, getattr(args, "runs_dir", None))
            if missing:
                raise UsageError(missing)
        from kdtui.app import run_app

        return run_app(args)
    except UsageError as exc:
        print(f"{exc.prog or prog}: error: {exc}", file=sys.stderr)
        return 2


def missing_run(ref: str, runs_dir: str | None) -> str | None:
    """Why `kdtui watch REF` has nothing to open (None when there is a run or a dispatch by that
    name): said before the dashboard starts, as `kdtui watch --headless` says it."""
    from kdengine.config import default_runs_dir
    from kdtui.remote.manifest import find_manifest
    from kdtui.runs import find_run

    where = Path(runs_dir).expanduser() if runs_dir else default_runs_dir()
    if find_run(where, ref) is not None or find_manifest(ref) is not None:
        return None
    return (f"no run {ref!r}: not a dispatch.json, a run directory, or a run id in {where} or "
            "the evidence dir (see `kdtui runs`)")


def compare_targets(refs: list[str], runs_dir: str | None) -> list[CompareTarget]:
    """The runs `kdtui compare` names: local run directories or ids, remote dispatches by id or
    dispatch.json. A name that is no run, a dispatch with nothing to read, or fewer than two
    runs is one line before anything opens."""
    from kdengine.config import default_runs_dir
    from kdtui.compare import CompareError, CompareTarget
    from kdtui.remote.manifest import find_manifest
    from kdtui.runs import find_run

    where = Path(runs_dir).expanduser() if runs_dir else default_runs_dir()
    targets: list[CompareTarget] = []
    for ref in refs:
        found = find_run(where, ref)
        if found is not None and (found / "events.jsonl").exists():
            target = CompareTarget.local(found)
        elif (manifest := find_manifest(ref)) is not None:
            try:
                target = CompareTarget.dispatched(manifest)
            except CompareError as exc:
                raise UsageError(str(exc)) from None
        else:
            raise UsageError(f"no run {ref!r} with events in {where} or the evidence "
                             "dir (see `kdtui runs`; give run ids, run directories or "
                             "dispatch.json files)")
        if target.key not in {t.key for t in targets}:
            targets.append(target)
    if len(targets) < 2:
        raise UsageError("give two or more runs (`kdtui compare RUN RUN...`)")
    return targets


def _resume_in_dashboard(args: argparse.Namespace) -> int:
    """The dashboard on the resumed run (its stages, then the run); a run that cannot resume is
    one line before the dashboard starts, exit 2."""
    from kdengine.config import default_runs_dir
    from kdtui.app import run_app
    from kdtui.launch.resume import ResumeRefused
    from kdtui.launch.resumers import resumer_for

    where = Path(args.runs_dir).expanduser() if args.runs_dir else default_runs_dir()
    try:
        resumer = resumer_for(args.run, where)
    except ResumeRefused as exc:
        raise UsageError(str(exc)) from None
    return run_app(args, launcher=resumer)
