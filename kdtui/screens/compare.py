"""Runs side by side: one metric of every run overlaid (val CE, val KD or train loss), and a table
of what differs between them (only the config fields that differ), the final val CE, the verdict,
tokens/s and peak GPU memory. Runs still going update in place: each run's files are followed
from a byte offset, as the run screen follows one: a local run's here, a remote dispatch's over
SFTP from its host. Each run is followed on its own, so a host that is down (retried with
backoff; a line over the table says so, with its countdown) holds up no other run's curves."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from kdtui.compare import (
    RUN_COLORS,
    CompareError,
    CompareTarget,
    no_events,
    summary_of,
    table_rows,
)
from kdtui.watch import RunFollower
from kdtui.widgets.compare_chart import CompareChart
from kdtui.widgets.header import TitleHeader

POLL_S = 0.5
def run_color(index: int) -> str:
    """The table's colour of a run: the 256-colour code its curve is drawn in."""
    return f"color({RUN_COLORS[index % len(RUN_COLORS)]})"


class CompareScreen(Screen):
    """Two or more runs, local or remote; opened from the runs list (space selects, c compares)
    or by `kdtui compare RUN RUN...`."""

    DEFAULT_CSS = """
    CompareScreen #compare-table { height: auto; max-height: 45%; }
    CompareScreen #compare-links { height: auto; color: $warning; padding: 0 1; }
    CompareScreen #compare-warnings { height: auto; color: $text-warning; padding: 0 1; }
    """
    BINDINGS = [
        Binding("c", "next_metric", "Metric", id="compare.metric",
                tooltip="Chart the next metric: val CE, val KD, train loss"),
        Binding("m", "toggle_smooth", "EMA", id="compare.smooth",
                tooltip="Smooth the curves (EMA)"),
        Binding("l", "toggle_log_y", "Log scale", id="compare.log_y",
                tooltip="Logarithmic y axis (log y)"),
        Binding("escape", "back", "Back", id="compare.back", tooltip="Back to the runs list"),
    ]

    def __init__(self, targets: list[CompareTarget]) -> None:
        super().__init__()
        self.targets = list(targets)
        self.summaries = [summary_of(t) for t in self.targets]
        # a remote run whose link is not up: its kdtui.remote.link.LinkState (lost, given up),
        # or why it cannot be read at all
        self.links: dict[int, object] = {}
        self._table_dirty = True

    def compose(self) -> ComposeResult:
        yield TitleHeader()
        yield CompareChart(self.summaries, id="compare-chart")
        yield Static("", id="compare-links")
        # no cursor: a highlighted row would hide its run's colour
        yield DataTable(id="compare-table", cursor_type="none", zebra_stripes=True)
        # what the table's ⚠ stands for: each warning once, with the runs it is about
        yield Static("", id="compare-warnings")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"compare {len(self.summaries)} runs"
        self._show_links()
        self.set_interval(POLL_S, self._refresh_table)
        self.set_interval(1.0, self._show_links)  # a lost link's countdown moves
        for index in range(len(self.targets)):
            self._follow(index)
        self.query_one(DataTable).focus()

    @work(group="compare-follow")
    async def _follow(self, index: int) -> None:
        """One run's events into its summary, for as long as the screen is open."""
        target, summary = self.targets[index], self.summaries[index]
        try:
            source = target.open_source()
        except CompareError as exc:
            self._set_link(index, str(exc).removeprefix(f"{target.label}: "))
            return
        listeners = getattr(source, "link_listeners", None)
        if listeners is not None:  # a remote run: each change of its link, each retry
            listeners.append(lambda state: self._set_link(index, state))
        follower = RunFollower(source)
        read = 0
        try:
            while True:
                news = False
                while update := await follower.poll():  # a backlog comes in slices
                    for event in update.events:
                        summary.add(event)
                    news = news or bool(update.events)
                    read += len(update.events)
                if target.remote and not read and index not in self.links:
                    self._set_link(index, no_events(target))  # said until events come
                elif read and isinstance(self.links.get(index), str):
                    self._set_link(index, None)
                if news:
                    self.query_one(CompareChart).changed()
                    self._table_dirty = True
                    self._refresh_table()
                await asyncio.sleep(POLL_S)
        except Exception as exc:  # noqa: BLE001 - one run's host lost for good: the others go on
            from kdtui.remote.connect import RemoteError

            if not isinstance(exc, (RemoteError, OSError)):
                raise
            self._set_link(index, f"not followed: {exc}")
            self.app.notify(f"{target.label}: {exc}", severity="error", timeout=10)
        finally:
            await source.close()

    def _set_link(self, index: int, state: object) -> None:
        from kdtui.remote.link import CONNECTED, RECONNECTED

        if state is None or getattr(state, "state", None) in (CONNECTED, RECONNECTED):
            self.links.pop(index, None)
        else:
            self.links[index] = state
        self._show_links()

    def _show_links(self) -> None:
        """One line a remote run whose link is down (short: it fits 80 columns), none when
        every link is up."""
        lines = []
        for i, state in sorted(self.links.items()):
            target = self.targets[i]
            text = state if isinstance(state, str) else state.line(short=True)  # type: ignore
            # the label names the host already: "kd-3@gpu1: link lost 12s ago; retry in 4s..."
            lines.append(f"{target.label}: " + text.replace(f"link to {target.host} ", "link "))
        links = self.query_one("#compare-links", Static)
        links.update("\n".join(lines))
        links.display = bool(lines)

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
            table.add_row(name, *row[1:], key=self.targets[i].key)
        self._show_warnings()

    def _show_warnings(self) -> None:
        runs_of: dict[str, list[str]] = {}
        for summary in self.summaries:
            for warning in summary.report.warnings:
                runs_of.setdefault(warning, []).append(summary.label)
        lines = [f"⚠ {', '.join(labels)}: {warning}" for warning, labels in runs_of.items()]
        warnings = self.query_one("#compare-warnings", Static)
        warnings.update(Text("\n".join(lines), no_wrap=True, overflow="ellipsis"))
        warnings.display = bool(lines)

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
