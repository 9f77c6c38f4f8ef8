"""Headless launch and watch of apr runs: plain lines, exit 0 pass / 1 fail / 2 error.

The same shape as kdtui.headless (StagePrinter for the stages, the run's lines as they come, the
verdict last, recorded into dispatch.json), with apr's launcher, follower and verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from kdengine.config import RunConfig
from kdtui.headless import after_dispatch
from kdtui.profiles.apr.dispatch import AprDispatchError, AprLauncher, AprRunHandle
from kdtui.profiles.apr.schema import AprSettings
from kdtui.profiles.apr.watch import ALIVE_CHECK_EVERY, EXIT_ERROR, follow_apr_to_verdict
from kdtui.remote.connect import RemoteError
from kdtui.remote.manifest import read_manifest, record_verdict
from kdtui.remote.recorded import recorded_outcome


async def launch_apr(config: RunConfig, host: str, settings: AprSettings | None = None, *,
                     out: TextIO, detach: bool = False, evidence_dir: Path | None = None,
                     alive_every: float = ALIVE_CHECK_EVERY) -> int:
    from kdtui.headless import StagePrinter

    def status(text: str) -> None:
        print(f"[watch] {text}", file=out, flush=True)

    launcher = AprLauncher(config, host, settings, evidence_dir=evidence_dir, on_status=status)
    try:
        handle = await launcher.start(StagePrinter(out))
    except AprDispatchError as exc:
        for line in exc.output[-40:]:
            print(f"  | {line}", file=out, flush=True)
        print(f"ERROR: dispatch failed: {exc}", file=out, flush=True)
        print(f"manifest: {launcher.manifest_path}", file=out, flush=True)
        return EXIT_ERROR
    return await after_dispatch(
        handle, out, detach, lambda: watch_apr_handle(handle, out=out, alive_every=alive_every))


async def watch_apr_handle(handle: AprRunHandle, *, out: TextIO,
                           alive_every: float = ALIVE_CHECK_EVERY) -> int:
    result = await follow_apr_to_verdict(handle, out=out, alive_every=alive_every)
    if handle.manifest is not None and result.verdict is not None:
        record_verdict(handle.manifest, result.verdict, result.finished)
    return result.code


async def watch_apr_manifest(path: Path, *, out: TextIO,
                             alive_every: float = ALIVE_CHECK_EVERY) -> int:
    """`kdtui watch` of an apr run by its dispatch.json: the whole log again, then the verdict."""

    def status(text: str) -> None:
        print(f"[watch] {text}", file=out, flush=True)

    try:
        handle = AprRunHandle.from_manifest(path, on_status=status)
    except AprDispatchError as exc:
        print(f"ERROR: {exc}", file=out, flush=True)
        return EXIT_ERROR
    print(f"watching {handle.run_id} on {handle.host}: {handle.run_dir}", file=out, flush=True)
    try:
        recorded = recorded_outcome(path, read_manifest(path))
        if recorded is not None:  # an ended run: its host down is no reason to wait
            why = await handle.source.try_connect()
            if why is not None:
                from kdtui.headless import _print_recorded  # the kdengine watch's own lines

                return _print_recorded(recorded, handle.host, why, out)
        return await watch_apr_handle(handle, out=out, alive_every=alive_every)
    except RemoteError as exc:
        print(f"ERROR: {exc}", file=out, flush=True)
        return EXIT_ERROR
    finally:
        await handle.close()
