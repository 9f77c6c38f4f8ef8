"""The runs list: past and running runs in the runs dir; open one to see (or reattach to) it."""

from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from kdtui.runs import RunInfo, list_runs
from kdtui.widgets.run_panels import format_seconds

REFRESH_S = 2.0


class RunsScreen(Screen):
    """Every run under the runs dir, newest first; Enter opens it (live ones are followed)."""

    BINDINGS = [
        Binding("enter", "open", "Open", id="runs.open"),
        Binding("r", "refresh", "Refresh", id="runs.refresh"),
        Binding("n", "new", "New run", id="runs.new"),
        Binding("escape", "back", "Back", id="runs.back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunInfo] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="runs-where")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "runs"
        table = self.query_one(DataTable)
        table.add_columns("run", "status", "verdict", "step", "started", "updated")
        self.query_one("#runs-where", Static).update(f"runs in {self.app.runs_dir}")  # type: ignore
        self.action_refresh()
        self.set_interval(REFRESH_S, self.action_refresh)
        table.focus()

    def action_refresh(self) -> None:
        runs = list_runs(self.app.runs_dir)  # type: ignore[attr-defined]
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        now = time.time()
        for info in runs:
            step = f"{info.step:,}" if info.step is not None else "–"
            if info.total_steps:
                step += f" / {info.total_steps:,}"
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.started)) \
                if info.started else "–"
            table.add_row(info.run_id, info.status, (info.verdict or "–").upper(), step, started,
                          format_seconds(now - info.updated) + " ago", key=str(info.run_dir))
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
        from kdtui.screens.run import RunScreen

        info = self.runs[row]
        handle = LocalRunHandle.attach(info.run_dir)
        handle.run_id = info.run_id
        state = "reattached (running)" if info.is_running else info.status
        self.app.push_screen(RunScreen(handle=handle, title=f"{info.run_id} on local · {state}"))

    def action_new(self) -> None:
        from kdtui.screens.launch import LaunchScreen

        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.switch_screen(LaunchScreen())

    def action_back(self) -> None:
        self.action_new()
