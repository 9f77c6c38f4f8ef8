"""Runs side by side: one metric of every run overlaid (val CE, val KD or train loss), and a table
of what differs between them (only the config fields that differ), the final val CE, the verdict,
tokens/s and peak GPU memory. Runs still going update in place: each run's files are followed
from a byte offset, as the run screen follows one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header

from kdtui.compare import RUN_COLORS, RunSummary, table_rows
from kdtui.watch import LocalRunSource, RunFollower
from kdtui.widgets.compare_chart import CompareChart

POLL_S = 0.5
# the table's colour of a run: plotext's name where Rich has none of its own
RICH_COLORS = {"orange": "dark_orange", "gray": "grey50"}


def run_color(index: int) -> str:
    name = RUN_COLORS[index % len(RUN_COLORS)]
    return RICH_COLORS.get(name, name)


class CompareScreen(Screen):
    """Two or more local runs; opened from the runs list (space selects, c compares) or by
    `kdtui compare RUN RUN...`."""

    DEFAULT_CSS = """
    CompareScreen #compare-table { height: auto; max-height: 45%; }
    """
    BINDINGS = [
        Binding("c", "next_metric", "Metric", id="compare.metric",
                tooltip="Chart the next metric: val CE, val KD, train loss"),
        Binding("m", "toggle_smooth", "EMA", id="compare.smooth",
                tooltip="Smooth the curves (EMA)"),
        Binding("l", "toggle_log_y", "Log y", id="compare.log_y", tooltip="Logarithmic y axis"),
        Binding("escape", "back", "Back", id="compare.back", tooltip="Back to the runs list"),
    ]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = [Path(d) for d in run_dirs]
        self.summaries = [RunSummary(d.name, d) for d in self.run_dirs]
        self._table_dirty = True

    def compose(self) -> ComposeResult:
        yield Header()
        yield CompareChart(self.summaries, id="compare-chart")
        # no cursor: a highlighted row would hide its run's colour
        yield DataTable(id="compare-table", cursor_type="none", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"compare {len(self.summaries)} runs"
        self.set_interval(POLL_S, self._refresh_table)
        self._follow()
        self.query_one(DataTable).focus()

    @work(exclusive=True, group="compare-follow")
    async def _follow(self) -> None:
        followers = [RunFollower(LocalRunSource(d)) for d in self.run_dirs]
        while True:
            news = False
            for follower, summary in zip(followers, self.summaries, strict=True):
                while update := await follower.poll():  # a backlog comes in slices
                    for event in update.events:
                        summary.add(event)
                    news = news or bool(update.events)
            if news:
                self.query_one(CompareChart).changed()
                self._table_dirty = True
                self._refresh_table()
            await asyncio.sleep(POLL_S)

    @property
    def loaded(self) -> bool:
        """Every run's events read so far are in (tests wait on it)."""
        return not self._table_dirty and all(s.kept or s.last_step for s in self.summaries)

    def _refresh_table(self) -> None:
        if not self._table_dirty:
            return
        self._table_dirty = False
        table = self.query_one(DataTable)
        head, rows = table_rows(self.summaries)
        table.clear(columns=True)
        table.add_columns(*head)
        for i, row in enumerate(rows):
            name = Text.assemble(("■ ", run_color(i)), row[0])
            table.add_row(name, *row[1:], key=str(self.run_dirs[i]))

    def action_next_metric(self) -> None:
        self.query_one(CompareChart).next_metric()

    def action_toggle_smooth(self) -> None:
        chart = self.query_one(CompareChart)
        chart.smooth = not chart.smooth

    def action_toggle_log_y(self) -> None:
        chart = self.query_one(CompareChart)
        chart.log_y = not chart.log_y

    def action_back(self) -> None:
        self.app.back_from_compare()  # type: ignore[attr-defined]
