"""Run control from the shell: `kdtui cancel RUN` and `kdtui runs --plain`, no dashboard needed.

`cancel` finds the run with the resolver `kdtui watch` uses (kdtui.launch.reattach), cancels it
as the run screen's `x` does (the handle's own `cancel()`: SIGTERM to a local engine's process
group, the agent's cancel over SSH, apr's status script), then waits until the run's events say
it finished and prints one line. `runs --plain` prints the dashboard's runs list (kdtui.runs and
the evidence dir's manifests) as tab-separated lines for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kdtui.runs import RunEntry, all_runs

EXIT_CANCELLED, EXIT_NOT_ENDED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_TIMEOUT = 60.0
POLL_S = 0.25  # local status checks are a file read; remote ones an SSH exec each
REMOTE_POLL_S = 0.5
FIRST_CONTACT_GIVE_UP_S = 0.0  # a host that is down is reported at once (one retry), not waited on


class CancelInputError(Exception):
    """RUN names nothing cancellable; the message says what is wrong and the fix."""


@dataclass
class RunState:
    """Where a run stands, from its events' tail and its process."""

    alive: bool
    status: str | None  # the run_finished status; None while running or when gone without one
    exit_code: int | None
    finished: dict[str, Any] | None = None  # the run_finished event itself, when there is one


@dataclass
class CancelResult:
    code: int  # EXIT_CANCELLED (also: nothing to cancel), EXIT_NOT_ENDED, EXIT_BAD_INPUT
    line: str


# -- each kind of run: how to ask its state, how to cancel it ---------------------------------
class _Control:
    """A run handle seen by `kdtui cancel`: state() and cancel(); poll every `poll_s`."""

    poll_s = POLL_S

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def state(self) -> RunState:
        raise NotImplementedError

    async def cancel(self) -> None:
        await self.handle.cancel()

    def cancelled_status(self, state: RunState) -> str | None:
        """The final status once the process is gone after our SIGTERM (None: none known)."""
        return state.status

    async def close(self) -> None:
        close = getattr(self.handle, "close", None)
        if close is not None:
            await close()


def _from_finished(alive: bool, finished: dict[str, Any] | None) -> RunState:
    if finished is None:
        return RunState(alive, None, None)
    code = finished.get("exit_code")
    return RunState(alive, str(finished.get("status", "completed")),
                    int(code) if isinstance(code, int) else None, finished)


class _LocalControl(_Control):
    async def state(self) -> RunState:
        # the same pid + run_finished check the agent runs on a remote host, run here
        from kdtui.remote.agent import _status

        state = await asyncio.to_thread(_status, str(self.handle.run_dir))
        return _from_finished(bool(state["alive"]), state["finished"])

    def pid(self) -> int | None:
        from kdtui.runs import read_pid

        return read_pid(Path(self.handle.run_dir))


class _RemoteControl(_Control):
    poll_s = REMOTE_POLL_S

    async def state(self) -> RunState:
        state = await self.handle.status()
        return _from_finished(bool(state.get("alive")), state.get("finished"))


class _AprControl(_Control):
    """apr writes no events: alive and the wrapper's exit code are all there is. SIGTERM kills
    the wrapper too, so a cancelled apr leaves no exit code."""

    poll_s = REMOTE_POLL_S

    async def state(self) -> RunState:
        state = await self.handle.status()
        code = state.get("exit_code")
        if state.get("alive"):
            return RunState(True, None, None)
        if code is None:
            # killed: a cancel leaves apr.cancelled on the host (the status says so); else only
            # a `kdtui cancel` that saw it go (and noted it in the manifest) knows
            return RunState(False, "cancelled" if state.get("cancelled") else
                            self._recorded_status(), None)
        return RunState(False, "completed" if code == 0 else "failed", int(code))

    def _recorded_status(self) -> str | None:
        from kdtui.remote.manifest import read_manifest

        try:
            finished = read_manifest(self.handle.manifest).get("run_finished") or {}
        except (OSError, ValueError, TypeError):
            return None
        return finished.get("status")

    def cancelled_status(self, state: RunState) -> str | None:
        return state.status or "cancelled"


def _control_for(handle: Any) -> _Control:
    from kdtui.launch.local import LocalRunHandle

    if isinstance(handle, LocalRunHandle):
        return _LocalControl(handle)
    if hasattr(handle, "link"):  # AprRunHandle: its SSH link is `link`, its source parses logs
        return _AprControl(handle)
    return _RemoteControl(handle)


def _ssh_source(handle: Any) -> Any:
    """The SSHRunSource that carries a remote handle's commands (None for a local run)."""
    from kdtui.remote.source import SSHRunSource

    for source in (getattr(handle, "link", None), getattr(handle, "source", None)):
        if isinstance(source, SSHRunSource):
            return source
    return None


# -- cancel -----------------------------------------------------------------------------------
def resolve(ref: str, runs_dir: Path) -> Any:
    """The handle `kdtui watch RUN` would open, or CancelInputError naming what is wrong."""
    from kdtui.launch.reattach import reattach
    from kdtui.remote.connect import RemoteError
    from kdtui.remote.hosts import HostsFileError

    try:
        handle = reattach(ref, runs_dir)
    except (RemoteError, HostsFileError) as exc:  # never launched; host gone from the hosts
        raise CancelInputError(f"{exc}") from None
    except (OSError, ValueError, KeyError) as exc:  # a manifest that is not one
        raise CancelInputError(f"cannot read the dispatch.json of {ref!r} ({exc}); "
                               "`kdtui runs --plain` lists the runs there are") from None
    if handle is None:
        from kdtui.remote.manifest import evidence_dir

        raise CancelInputError(
            f"no run {ref!r} under {runs_dir} or in the evidence dir {evidence_dir()}; "
            "`kdtui runs --plain` lists them (give a run id, a run directory or a "
            "dispatch.json)")
    return handle


async def cancel_run(ref: str, runs_dir: Path, timeout: float = DEFAULT_TIMEOUT,
                     clock: Callable[[], float] = time.monotonic) -> CancelResult:
    """Cancel the run `ref` names and wait up to `timeout` s for it to end; never raises for a
    host that is down or a run that is not there (the result's line says so)."""
    from kdtui.remote.connect import RemoteError

    try:
        handle = resolve(ref, runs_dir)
    except CancelInputError as exc:
        return CancelResult(EXIT_BAD_INPUT, f"kdtui cancel: error: {exc}")
    control = _control_for(handle)
    where = f"{handle.run_id} on {handle.host}"
    source = _ssh_source(handle)
    sent = False  # whether the cancel itself went to the host
    try:
        if source is not None:
            # the first contact fails fast when the host is down; once it answered, a dropped
            # link is retried for as long as we wait anyway
            source.give_up_after = FIRST_CONTACT_GIVE_UP_S
        before = await control.state()
        if not before.alive and before.status is None and isinstance(control, _LocalControl) \
                and control.pid() is None:
            return CancelResult(EXIT_NOT_ENDED, (
                f"{where}: {handle.run_dir} has no engine.pid (a run kdtui did not start) and no "
                "run_finished: if its engine still runs, stop it with `kill -TERM PID`; "
                "nothing cancelled"))
        if before.status is not None or not before.alive:
            # a run_finished on record ends it, even while its process is still exiting (a
            # second cancel right after the first must not signal it, nor claim to cancel it)
            _record_end(handle, before, None)
            return CancelResult(EXIT_CANCELLED, _nothing_to_cancel(where, before))
        if source is not None:
            source.give_up_after = max(timeout, 1.0)
        sent = True
        await control.cancel()
        result, after = await _wait_until_ended(control, where, ref, timeout, clock)
        _record_end(handle, after, control.cancelled_status(after))
        return result
    except RemoteError as exc:
        # a host that cannot be reached, before the cancel went: a run its manifest records
        # as ended has nothing to cancel, as when the host says so itself
        recorded = None if sent else _recorded_end_line(handle, where, exc)
        if recorded is not None:
            return CancelResult(EXIT_CANCELLED, recorded)
        return CancelResult(EXIT_NOT_ENDED, f"kdtui cancel: error: cannot cancel {where}: "
                                            f"{_link_reason(exc)}")
    finally:
        try:
            await control.close()
        except Exception:  # closing a link that never opened must not hide the answer
            pass


async def _wait_until_ended(control: _Control, where: str, ref: str, timeout: float,
                            clock: Callable[[], float]) -> tuple[CancelResult, RunState]:
    deadline = clock() + timeout
    state = RunState(True, None, None)
    while clock() < deadline:
        state = await control.state()
        if state.status is not None:
            break
        if not state.alive:
            # the process is gone: one more read catches a run_finished written as it exited
            state = await control.state()
            break
        await asyncio.sleep(control.poll_s)
    else:
        return CancelResult(EXIT_NOT_ENDED,
                            f"{where}: still running {timeout:g}s after the cancel was sent (the "
                            "engine stops after its current step); wait longer with --timeout, "
                            f"or follow it with `kdtui watch {ref}`"), state
    status = control.cancelled_status(state)
    code_text = f"exit code {state.exit_code}" if state.exit_code is not None else \
        "no exit code"
    if status is None:
        return CancelResult(EXIT_NOT_ENDED, f"{where}: the engine is gone without recording how "
                                            "the run ended (no run_finished event: a SIGTERM "
                                            "during its start-up ends it before it can); see "
                                            "its launch.log"), state
    if status == "cancelled":
        return CancelResult(EXIT_CANCELLED, f"{where}: cancelled ({code_text})"), state
    # it finished on its own between our look and the signal
    return CancelResult(EXIT_CANCELLED, f"{where}: ended {status} ({code_text}) before the "
                                        "cancel took effect: nothing cancelled"), state


def _record_end(handle: Any, state: RunState, status: str | None) -> None:
    """A remote run's manifest learns how it ended and at which step (the runs list reads them
    there); one a watcher already completed is left as it is."""
    path = getattr(handle, "manifest", None)
    status = status or state.status
    if path is None or status is None:
        return
    from kdtui.remote.manifest import read_manifest, utc_now, write_manifest

    try:
        data = read_manifest(path)
        if data.get("run_finished"):
            return
        data["run_finished"] = state.finished or {"type": "run_finished", "status": status,
                                                  "exit_code": state.exit_code}
        # the engine's step at its end (run_finished's `steps`): the runs list's step column
        # ('-' before: only a watch recorded it)
        steps = data["run_finished"].get("steps")
        if isinstance(steps, int) and steps > 0 and data.get("engine_last_step") is None:
            data["engine_last_step"] = steps
        data["cancel_recorded_at"] = utc_now()
        write_manifest(path, data)
    except (OSError, ValueError):
        pass  # the evidence is a convenience here; the run's own events are the record


def _recorded_end_line(handle: Any, where: str, exc: BaseException) -> str | None:
    """How a remote run ended as its dispatch.json recorded it (a watch's `state`, or the
    run_finished a cancel saw), for a host that cannot be reached; None where it records no
    end (the run may still be going: then the host is the answer)."""
    from kdtui.remote.manifest import read_manifest
    from kdtui.remote.recorded import ENDED

    path = getattr(handle, "manifest", None)
    if path is None:
        return None
    try:
        data = read_manifest(path)
    except (OSError, ValueError):
        return None
    finished = data.get("run_finished") if isinstance(data.get("run_finished"), dict) else {}
    status = data.get("state") if data.get("state") in ENDED else finished.get("status")
    if status not in ENDED:
        return None
    step = data.get("engine_last_step")
    at_step = f" at step {step}" if isinstance(step, int) else ""
    code = finished.get("exit_code")
    code_text = f"exit code {code}" if isinstance(code, int) else "no exit code"
    when = data.get("verdict_recorded_at") or data.get("cancel_recorded_at")
    inner = exc.__context__ if str(exc.__context__ or "") else exc
    return (f"{where}: already finished: {status}{at_step} ({code_text}), as {path} recorded"
            f"{f' at {when}' if when else ''}; {inner}: nothing to cancel")


def _nothing_to_cancel(where: str, state: RunState) -> str:
    if state.status is None:
        return (f"{where}: not running, and it recorded no end (its engine is gone: killed, or "
                "the host rebooted): nothing to cancel")
    code = f"exit code {state.exit_code}" if state.exit_code is not None else "no exit code"
    return f"{where}: already finished: {state.status} ({code}): nothing to cancel"


def _link_reason(exc: BaseException) -> str:
    """The connect failure itself (it names the host), not the give-up wrapper around it."""
    from kdtui.remote.connect import RemoteError

    inner = exc.__context__
    if isinstance(inner, RemoteError) and str(inner):
        return f"{inner}; the run was not cancelled"
    return str(exc)


def cancel_command(args: argparse.Namespace, out: TextIO | None = None,
                   err: TextIO | None = None) -> int:
    """`kdtui cancel RUN [--timeout S]`: one line on stdout (errors on stderr), exit code."""
    from kdengine.config import default_runs_dir

    out = out or sys.stdout
    err = err or sys.stderr
    timeout = args.timeout
    if not timeout > 0:
        print(f"kdtui cancel: error: --timeout must be a number of seconds > 0 (got {timeout:g})",
              file=err)
        return EXIT_BAD_INPUT
    runs_dir = Path(args.runs_dir) if getattr(args, "runs_dir", None) else default_runs_dir()
    try:
        result = asyncio.run(cancel_run(args.run, runs_dir, timeout))
    except KeyboardInterrupt:
        print(f"kdtui cancel: interrupted; see where {args.run} stands with "
              f"`kdtui watch {args.run}`", file=err)
        return EXIT_NOT_ENDED
    is_error = result.line.startswith("kdtui cancel: error:")
    print(result.line, file=err if is_error else out, flush=True)
    return result.code


# -- runs --plain -----------------------------------------------------------------------------
def print_plain_runs(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`kdtui runs --plain`: one run a line, tab-separated: id, where, status, step/total,
    verdict, started (UTC); nothing at all when there are no runs."""
    from kdengine.config import default_runs_dir

    out = out or sys.stdout
    runs_dir = Path(args.runs_dir) if getattr(args, "runs_dir", None) else default_runs_dir()
    for entry in all_runs(runs_dir):
        print(plain_line(entry), file=out)
    return 0


def plain_line(entry: RunEntry) -> str:
    """Tab-separated, no field with a space in it: id, where, status, step[/total], verdict,
    started (UTC)."""
    # a cache job's are rows scored, 'rows:937/937', and its verdict complete or not-complete
    steps = (entry.progress(sep="/") or "-").replace(" ", ":")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.started)) \
        if entry.started is not None else "-"
    return "\t".join((entry.run_id, entry.where, entry.status.replace(" ", "-"), steps,
                      (entry.verdict_word or "-").replace(" ", "-"), started))
