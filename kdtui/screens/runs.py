"""The runs list: local runs from the runs dir and remote dispatches from the evidence dir, past
and running; open one to see it, or to reattach to it while it runs."""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from kdtui.runs import RunInfo, list_runs
from kdtui.widgets.run_panels import format_seconds

REFRESH_S = 2.0


class RunsScreen(Screen):
    """Every local run and remote dispatch, newest first; Enter opens it (live ones followed)."""

    BINDINGS = [
        Binding("enter", "open", "Open", id="runs.open", priority=True),  # shown in the footer
        Binding("r", "refresh", "Refresh", id="runs.refresh"),
        Binding("n", "new", "New run", id="runs.new"),
        Binding("escape", "back", "Back", id="runs.back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunInfo | dict[str, Any]] = []  # a local run, or a remote manifest

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="runs-where")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "runs"
        table = self.query_one(DataTable)
        table.add_columns("run", "host", "status", "verdict", "step", "started", "updated")
        self.query_one("#runs-where", Static).update(f"runs in {self.app.runs_dir}")  # type: ignore
        self.action_refresh()
        self.set_interval(REFRESH_S, self.action_refresh)
        table.focus()

    def action_refresh(self) -> None:
        from kdtui.remote.manifest import list_manifests

        runs: list[RunInfo | dict[str, Any]] = [*list_runs(self.app.runs_dir),  # type: ignore
                                                 *list_manifests()]
        runs.sort(key=_newest_first)
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        now = time.time()
        for run in runs:
            if isinstance(run, RunInfo):
                table.add_row(*_local_row(run, now), key=str(run.run_dir))
            else:
                table.add_row(*_remote_row(run, now), key=run["_path"])
        self.runs = runs
        if runs:
            table.move_cursor(row=min(keep, len(runs) - 1))
        else:
            self.query_one("#runs-where", Static).update(
                f"No runs yet in {self.app.runs_dir}: press n for a new run")  # type: ignore

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.open_row(event.cursor_row)

    def action_open(self) -> None:
        self.open_row(self.query_one(DataTable).cursor_row)

    def open_row(self, row: int) -> None:
        if not 0 <= row < len(self.runs):
            return
        from kdtui.launch.local import LocalRunHandle
        from kdtui.launch.reattach import describe, manifest_handle
        from kdtui.screens.run import RunScreen

        run = self.runs[row]
        if isinstance(run, RunInfo):
            handle: Any = LocalRunHandle.attach(run.run_dir)
            handle.run_id = run.run_id
            state = "reattached (running)" if run.is_running else run.status
        else:
            try:
                handle = manifest_handle(Path(run["_path"]))
            except Exception as exc:  # never launched, or its host is gone from the hosts
                self.app.notify(str(exc), severity="error", timeout=10)
                return
            state = _remote_status(run)
        self.app.push_screen(RunScreen(handle=handle, title=f"{describe(handle)} · {state}"))

    def action_new(self) -> None:
        from kdtui.screens.launch import LaunchScreen

        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.switch_screen(LaunchScreen())

    def action_back(self) -> None:
        self.action_new()


def _newest_first(run: RunInfo | dict[str, Any]) -> float:
    if isinstance(run, RunInfo):
        return -(run.started or run.updated)
    when = run.get("dispatched_at") or ""
    try:
        return -calendar.timegm(time.strptime(when[:19], "%Y-%m-%dT%H:%M:%S"))  # UTC
    except ValueError:
        return 0.0


def _local_row(info: RunInfo, now: float) -> tuple[str, ...]:
    step = f"{info.step:,}" if info.step is not None else "–"
    if info.total_steps:
        step += f" / {info.total_steps:,}"
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.started)) \
        if info.started else "–"
    return (info.run_id, "local", info.status, (info.verdict or "–").upper(), step, started,
            format_seconds(now - info.updated) + " ago")


def _remote_status(manifest: dict[str, Any]) -> str:
    if not manifest.get("launched"):
        return "dispatch failed"
    return (manifest.get("run_finished") or {}).get("status") or "dispatched"


def _remote_row(manifest: dict[str, Any], now: float) -> tuple[str, ...]:
    verdict = (manifest.get("verdict") or {}).get("status") or "–"
    when = (manifest.get("dispatched_at") or "–")[:16].replace("T", " ")
    return (str(manifest.get("run_id", "?")), str(manifest.get("host", "?")),
            _remote_status(manifest), verdict.upper(), "–", when + " UTC", "–")
