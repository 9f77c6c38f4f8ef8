"""`kdtui launch --cache-teacher [--cache-top-k K] [--cache-targets topk|sampled]`: a cache job
from the command line, with the run's teacher, data and row flags, on `--host` (local by
default): the dashboard on it, or plain lines with `--headless` (`--detach`, `--dry-run` as for
a run). Bad input is one line, exit 2, before anything starts."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from kdengine.config import ConfigError, default_runs_dir, flag_of
from kdtui.launch.cache import cache_launcher
from kdtui.launch.cache_job import DEFAULT_TOP_K, CacheOptions, check_job_fields

EXIT_ERROR = 2
LOCAL = "local"


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-teacher", action="store_true",
                        help="Score the data with the teacher once into a teacher cache "
                        "(kdengine cache-teacher) instead of training; train from it with "
                        "--teacher-cache DIR")
    # not --top-k: that is the run's sampling field (on-policy rollouts)
    parser.add_argument("--cache-top-k", type=int, default=None, metavar="K",
                        help=f"With --cache-teacher: teacher ids kept per token (default "
                        f"{DEFAULT_TOP_K})")
    parser.add_argument("--cache-targets", choices=("topk", "sampled"), default=None,
                        help="With --cache-teacher: the K likeliest ids and a tail bucket "
                        "(topk, default), or K ids drawn from the teacher (sampled)")


def launch_cache_from_args(args: argparse.Namespace) -> int:
    from kdtui.headless import config_from_args

    try:
        config = config_from_args(args, require_models=False)
        options = CacheOptions(args.cache_top_k if args.cache_top_k is not None else
                               DEFAULT_TOP_K,
                               args.cache_targets or "topk").check()
        check_job_fields(config)
    except ConfigError as exc:
        return _refused(exc)
    host = args.host or os.environ.get("KDTUI_HOST") or LOCAL
    fallback = getattr(args, "fallback_host", None) or os.environ.get("KDTUI_FALLBACK_HOST") or ""
    if host == LOCAL and fallback:
        print("kdtui launch: error: --fallback-host needs a remote --host", file=sys.stderr)
        return EXIT_ERROR
    runs_dir = Path(args.runs_dir).expanduser() if getattr(args, "runs_dir", None) else \
        default_runs_dir()
    try:
        launcher = cache_launcher(config, options, host, fallback, runs_dir)
        if args.dry_run:
            lines = launcher.plan() if host == LOCAL else launcher.dry_run()
            print("\n".join(lines))
            return 0
        if host == LOCAL and not args.headless:
            launcher.check()  # refused here in one line, before the dashboard opens
    except ConfigError as exc:
        return _refused(exc)
    except ValueError as exc:  # the hosts file
        print(f"kdtui launch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not args.headless:
        from kdtui.app import run_app

        return run_app(args, launcher=launcher)
    return asyncio.run(_headless(launcher, args.detach))


def _refused(exc: ConfigError) -> int:
    names = {"top_k": "--cache-top-k", "cache_targets": "--cache-targets"}
    flag = names.get(exc.field or "") or (flag_of(exc.field) if exc.field else None)
    print(f"kdtui launch: error: {flag}: {exc.message}" if flag else
          f"kdtui launch: error: {exc.message}", file=sys.stderr)
    return EXIT_ERROR


async def _headless(launcher, detach: bool) -> int:
    from kdtui.headless import StagePrinter, follow_to_verdict
    from kdtui.launch.cache_job import job_values

    out = sys.stdout
    try:
        handle = await launcher.start(StagePrinter(out))
    except Exception as exc:  # LaunchError, DispatchError: the stage lines said why
        print(f"ERROR: {exc}", file=out, flush=True)
        return EXIT_ERROR
    if detach:
        print(f"detached: cache job {handle.run_id} goes on; follow it with: "
              f"{handle.reattach_hint()}", file=out, flush=True)
        return 0

    async def alive() -> bool:
        if hasattr(handle, "is_alive"):
            return handle.is_alive()
        return await handle.engine_alive()
    result = await follow_to_verdict(handle.source, out=out, is_alive=alive,
                                     asked=job_values(launcher.config),
                                     resume_ref=handle.run_id)
    if result.code == 0:
        print(f"train from it: --teacher-cache {handle.run_dir}", file=out, flush=True)
    return result.code
