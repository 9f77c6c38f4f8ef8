"""The runs list: local runs from the runs dir and remote dispatches from the evidence dir, past
and running; open one to see it, or to reattach to it while it runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from rich.cells import cell_len
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.geometry import Size
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from kdengine.durations import format_seconds
from kdtui.compare import CompareError, CompareTarget
from kdtui.runs import ID_MIN, RunEntry, all_runs, fit_end, fit_run
from kdtui.widgets.header import TitleHeader

REFRESH_S = 2.0
RUN_MIN = 22  # the run column's least width: a timestamped id (kd-20251009-101500), marked
HOST_MIN = 12  # the host column's width before the run column goes below RUN_MIN
HOST_FLOOR = 5  # the least of the host column: "local" whole, a remote host's start ("gpu-…")
clock = time.time  # what "now" is (tests fix it: "updated ... ago" and this year's dates)


class RunsTable(DataTable):
    """The runs list's table: Enter opens the row under the cursor (RowSelected), shown in the
    footer. The table's own binding, not a priority one on the screen: a priority binding runs
    as the key arrives, before the keys typed ahead of it (Down Enter in one burst) have moved
    the cursor."""

    BINDINGS = [
        Binding("enter", "select_cursor", "Open", id="runs.open",
                tooltip="Open the run under the cursor (a running one is followed live)"),
        # Textual's Home and End scroll a table sideways: on a list that fits the terminal they
        # did nothing, and Enter after Home opened the run the cursor was still on
        Binding("home", "scroll_top", "First run", show=False, id="runs.first",
                tooltip="Move to the first (newest) run"),
        Binding("end", "scroll_bottom", "Last run", show=False, id="runs.last",
                tooltip="Move to the last (oldest) run"),
    ]


class RunsScreen(Screen):
    """Every local run and remote dispatch, newest first; Enter opens it (live ones followed)."""

    # the line above the table is one line: a name longer than it is cut at its end
    DEFAULT_CSS = "#runs-where { text-wrap: nowrap; text-overflow: ellipsis; }"

    BINDINGS = [
        # Refresh and Back are off the footer so Select and Compare fit 80 columns (the list
        # refreshes itself every 2 s; F1 and ctrl+p list both)
        Binding("r", "refresh", "Refresh", show=False, id="runs.refresh"),
        Binding("n", "new", "New run", id="runs.new"),
        Binding("space", "select", "Select", id="runs.select", key_display="␣",
                tooltip="Select or unselect the run under the cursor, to compare"),
        Binding("c", "compare", "Compare", id="runs.compare",
                tooltip="Compare the selected runs (space selects; two or more)"),
        Binding("R", "resume", "Resume", id="runs.resume",
                tooltip="Continue a stopped, failed or cancelled run from its checkpoint"),
        # R on a run it does not resume (completed, running, no checkpoint) did nothing at all:
        # Textual tries this one when the one above is off (check_action); no description, so
        # neither the help nor the palette lists it
        Binding("R", "resume_refused", show=False),
        Binding("escape", "back", "Back", show=False, id="runs.back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunEntry] = []
        self.selected: list[str] = []  # row keys (run dirs), in the order chosen: their colours
        self._statuses: dict[str, str] = {}  # key -> status at the last refresh
        self._resumes: dict[str, bool] = {}  # key -> whether R resumes it (this refresh's)
        self._resume_shown = False  # whether Resume was offered when last asked
        self._rows: list[_Row] = []  # what the table shows, before the run and host are cut
        self._cut: set[int] = set()  # the rows whose run or host is cut
        self._labels: tuple[str, ...] = ()  # every column's label, started's included
        self._with_started = True  # whether the started column is shown (_fill)
        # (key, row) of the last run that a Space just selected: a Space more keeps it
        self._held: tuple[str, int] | None = None

    def compose(self) -> ComposeResult:
        yield TitleHeader()
        yield Static("", id="runs-where")
        yield RunsTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "runs"
        table = self.query_one(DataTable)
        # local runs and dispatches alike in this machine's time, its zone said once, here
        self._labels = ("run", "host", "status", "verdict", f"started {zone_label(clock())}",
                        "step", "updated")
        table.add_columns(*self._labels)
        self.action_refresh()
        self.set_interval(REFRESH_S, self.action_refresh)
        table.focus()

    def action_refresh(self) -> None:
        runs = all_runs(self.app.runs_dir)  # type: ignore[attr-defined]
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        now = clock()
        seen = self.app.seen  # type: ignore[attr-defined]
        if seen.fresh:  # the first list: what ended before counts as seen
            seen.mark(*(r.info.run_dir for r in runs if r.info and not r.info.is_running))
        rows = []
        for run in runs:
            key = str(run.info.run_dir if run.info is not None else run.manifest_path)
            rows.append(_Row(key, _marks(run, key in self.selected, seen), _cells(run, now),
                             short_step(run), short_updated(run, now)))
            self._note_end(run, key)
        self._fill(table, rows)
        self.runs = runs
        self._resumes.clear()  # a run may have ended, or been resumed, since
        if runs:
            table.move_cursor(row=min(keep, len(runs) - 1))
        self._show_where()
        self._refresh_resume_key()

    def _show_where(self) -> None:
        """The line above the table: where the runs are; the whole name and host of the run
        under the cursor where its row had to cut them, or the table has no started column
        (a narrow terminal), with its start then where the line has room for it."""
        row = self.query_one(DataTable).cursor_row
        if not self._rows:
            line = f"No runs yet in {self.app.runs_dir}: press n for a new run"  # type: ignore
        elif 0 <= row < len(self._rows) and (row in self._cut or not self._with_started):
            run, host = self._rows[row].cells[:2]
            line = f"{run} on {host}"
            started = f"{line}, {self._labels[STARTED]} {self._rows[row].cells[STARTED]}"
            room = (self.size.width or self.app.size.width) - 2  # its padding
            if not self._with_started and cell_len(started) <= room:
                line = started  # else the whole name is what the line is for
        else:
            line = f"runs in {self.app.runs_dir}"  # type: ignore[attr-defined]
        # one line (a long name is cut at its end), never markup (a run id may hold brackets)
        self.query_one("#runs-where", Static).update(Text(line, no_wrap=True,
                                                          overflow="ellipsis"))

    def _fill(self, table: DataTable, rows: list[_Row], screen: Size | None = None) -> None:
        """The rows, every column on screen: status, verdict, started, step and updated whole,
        the run and host columns sharing what is left (share_run_and_host: the run's id first).
        Where that leaves the run fewer than RUN_MIN columns, big step counts go short ('123k /
        1M'), then ages ('44m ago'); where the run would still keep fewer than ID_MIN (80
        columns beside 'dispatch failed', INCONCLUSIVE and '44m08s ago': `k…00`), the started
        column goes, the line above the table saying the start of the run under the cursor.
        `screen`: the screen's size (on a resize the table's own is still the old one)."""
        self._rows = rows
        pad = 2 * table.cell_padding
        # the table spans the screen, under the header and the "runs in" line, above the footer
        screen = screen or (self.size if self.size.width else self.app.size)
        width = screen.width
        visible = screen.height - 4  # its rows under its own header
        if len(rows) > visible:
            width -= table.styles.scrollbar_size_vertical
        run_natural = max([len(self._labels[0]),
                           *(cell_len(row.marks + row.cells[0]) for row in rows)])
        fits = []  # (with started, the labels, the cells, run width, host width), widest first
        for with_started, cells in layouts(rows):
            labels = [label for i, label in enumerate(self._labels)
                      if with_started or i != STARTED]
            widths = [max([cell_len(labels[i])] + [cell_len(c[i]) for c in cells])
                      for i in range(len(labels))]
            room = width - pad * len(labels) - sum(widths[2:])
            fits.append((with_started, labels, cells,
                         *share_run_and_host(room, run_natural, widths[1])))
        chosen = next((fit for fit in fits if fit[3] >= min(run_natural, RUN_MIN)),
                      next((fit for fit in fits if fit[3] >= min(run_natural, ID_MIN)),
                           fits[-1]))
        with_started, labels, cells, run_width, host_width = chosen
        if [str(c.label) for c in table.ordered_columns] != labels:
            table.clear(columns=True)
            table.add_columns(*labels)
        self._with_started = with_started
        self._cut = set()  # the rows whose run or host is cut: the line above names them whole
        for i, (row, row_cells) in enumerate(zip(rows, cells, strict=True)):
            run, host = fit_run(row.marks, row_cells[0], run_width), \
                fit_end(row_cells[1], host_width)
            if run != row.marks + row_cells[0] or host != row_cells[1]:
                self._cut.add(i)
            table.add_row(run, host, *row_cells[2:], key=row.key)
        # the widths of these rows, set now: DataTable's only grow (a narrower terminal, a row
        # gone), and it measures new rows when idle, after a first paint with the labels' widths
        for i, column in enumerate(table.ordered_columns):
            column.content_width = max([cell_len(labels[i])] +
                                       [cell_len(str(table.get_row_at(r)[i]))
                                        for r in range(table.row_count)])

    def on_resize(self, event: events.Resize) -> None:
        if self.is_mounted:
            table = self.query_one(DataTable)
            keep = table.cursor_row
            table.clear()
            self._fill(table, self._rows, event.size)
            if self._rows:
                table.move_cursor(row=min(keep, len(self._rows) - 1))
            self._show_where()

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        # the cursor now, not the event's row: a refresh passes row 0 on its way back
        if self._held is not None and self.query_one(DataTable).cursor_row != self._held[1]:
            self._held = None  # moved off the last row: a Space there toggles again
        self._show_where()
        self._refresh_resume_key()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "resume":  # the row under the cursor can be resumed: else off the footer
            return self._cursor_resumes()
        return True

    def _cursor_resumes(self) -> bool:
        """Whether R resumes the run under the cursor: it ended without completing and (a local
        run) the resume's own check passes (a checkpoint; a cache job needs none). A dispatch's
        host says the rest."""
        if not self.is_mounted:
            return False
        row = self.query_one(DataTable).cursor_row
        if not 0 <= row < len(self.runs):
            return False
        run = self.runs[row]
        if not run.may_resume:
            return False
        if run.info is None:
            return True
        key = str(run.info.run_dir)
        if key not in self._resumes:
            from kdtui.launch.resumers import local_resumer

            self._resumes[key] = local_resumer(run.info.run_dir).refusal() is None
        return self._resumes[key]

    def _refresh_resume_key(self) -> None:
        """The footer shows Resume while the cursor is on a run it resumes (check_action)."""
        shown = self._cursor_resumes()
        if shown != self._resume_shown:
            self._resume_shown = shown
            self.refresh_bindings()

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

        run = self.runs[row]
        if run.info is not None:
            if not run.info.is_running:
                self.app.seen.mark(run.info.run_dir)  # type: ignore[attr-defined]
            handle: Any = LocalRunHandle.attach(run.info.run_dir)
            handle.run_id = run.run_id
            state = "reattached (running)" if run.info.is_running else run.status
        else:
            try:
                handle = manifest_handle(run.manifest_path)
            except Exception as exc:  # never launched, or its host is gone from the hosts
                self.app.notify(str(exc), severity="error", timeout=10)
                return
            state = run.status
        self.app.show_run(handle=handle, title=describe(handle), status=state)

    def action_resume(self) -> None:
        row = self.query_one(DataTable).cursor_row
        if not 0 <= row < len(self.runs):
            return
        # offered on a run that resumes only (check_action): the resume's own check says why not
        # when the run changed since
        self.app.resume_run(self.runs[row].ref)  # type: ignore[attr-defined]

    def action_resume_refused(self) -> None:
        """R on a row it does not resume: why, as `kdtui resume` says it."""
        row = self.query_one(DataTable).cursor_row
        if not 0 <= row < len(self.runs):
            return
        run = self.runs[row]
        why = None
        if run.info is not None:
            from kdtui.launch.resumers import local_resumer

            why = local_resumer(run.info.run_dir).refusal()
        self.app.notify(why or f"{run.run_id} is {run.status}: only a stopped, failed or "
                        "cancelled run resumes", title="Nothing to resume", timeout=6,
                        markup=False)

    def _note_end(self, run: RunEntry, key: str) -> None:
        """A run seen running at the last refresh that has ended since: the app tells the user."""
        before = self._statuses.get(key)
        self._statuses[key] = run.status
        if before in ("starting", "running") and run.status not in ("starting", "running"):
            self.app.run_ended(run.run_id, run.status, run.verdict,  # type: ignore[attr-defined]
                               run.info.run_dir if run.info else key)

    def action_select(self) -> None:
        row = self.query_one(DataTable).cursor_row
        if not 0 <= row < len(self.runs):
            return
        run = self.runs[row]
        try:
            key = compare_target(run).key
        except CompareError as exc:
            self.app.notify(f"{exc}: not one to compare", timeout=5)
            return
        if self._held == (key, row):  # Space, Space on the last row: the first selected it
            self._held = None
            self.app.notify("The last run stays selected: space again unselects it", timeout=4)
            return
        if key in self.selected:
            self.selected.remove(key)
        else:
            self.selected.append(key)
            if row == len(self.runs) - 1:  # no row below to move to
                self._held = (key, row)
        self.action_refresh()
        self.query_one(DataTable).move_cursor(row=min(row + 1, len(self.runs) - 1))

    def action_compare(self) -> None:
        """The selected runs still listed, in the order chosen (their colours)."""
        listed = {}
        for run in self.runs:
            try:
                target = compare_target(run)
            except CompareError:
                continue
            listed[target.key] = target
        chosen = [listed[k] for k in self.selected if k in listed]
        if len(chosen) < 2:
            self.app.notify("Select two or more runs with space, then c to compare them",
                            timeout=5)
            return
        self.app.show_compare(chosen)  # type: ignore[attr-defined]

    def action_new(self) -> None:
        self.app.back_to_form()

    def action_back(self) -> None:
        self.action_new()


class _Row(NamedTuple):
    key: str  # the run dir, or a dispatch's manifest
    marks: str  # _marks
    cells: tuple[str, ...]  # _cells
    short_step: str  # its step cell where the list is narrow
    short_updated: str  # its updated cell where the list is narrower


STARTED, STEP, UPDATED = 4, 5, 6  # the columns of _cells that give way


def layouts(rows: list[_Row]) -> Iterator[tuple[bool, list[tuple[str, ...]]]]:
    """(whether the started column is shown, each row's cells), the widest layout first: every
    cell whole; short step counts; short ages too; then without the started column."""
    full = [row.cells for row in rows]
    short = [(*row.cells[:STEP], row.short_step, row.cells[UPDATED]) for row in rows]
    shorter = [(*row.cells[:STEP], row.short_step, row.short_updated) for row in rows]
    yield True, full
    yield True, short
    yield True, shorter
    yield False, [(*cells[:STARTED], *cells[STARTED + 1:]) for cells in shorter]


def share_run_and_host(room: int, run: int, host: int) -> tuple[int, int]:
    """The widths of the run and host columns (their text, `run` and `host` wide) in `room`:
    host its first HOST_FLOOR, the run up to RUN_MIN, host up to HOST_MIN, then each the rest
    it wants, the run first."""
    widths = [0, 0]
    left = max(room, 0)
    for column, upto in ((1, HOST_FLOOR), (0, RUN_MIN), (1, HOST_MIN), (0, run), (1, host)):
        give = min(max(0, min((run, host)[column], upto) - widths[column]), left)
        widths[column] += give
        left -= give
    return widths[0], widths[1]


def short_updated(run: RunEntry, now: float) -> str:
    """The updated column where the list is narrow: an age to the minute ('44m ago', not
    '44m08s ago'), seconds only under a minute."""
    if run.info is None:
        return "–"
    age = format_seconds(now - run.info.updated)
    minutes, sep, _ = age.partition("m")
    return (f"{minutes}m" if sep and age.endswith("s") else age) + " ago"


def short_step(run: RunEntry) -> str:
    """The step column where 80 columns are few: '123k / 1M', '80 / 1,000'."""
    return run.progress(_short_count) or "–"


def _short_count(n: int) -> str:
    """A count in at most 5 columns: 9,999 whole, then 12.3k, 123k, 1.23M, 1M."""
    if n < 10_000:
        return f"{n:,}"
    for unit, size in (("k", 1e3), ("M", 1e6)):
        value = f"{n / size:.3g}"
        if float(value) < 1000:  # 999,999 is 1M, not 1e+03k
            return f"{value}{unit}"
    return f"{n / 1e9:.3g}G"


def _marks(run: RunEntry, selected: bool, seen) -> str:
    """'✓ ' a run selected to compare; '• ' a run that ended and has not been looked at."""
    marks = "✓ " if selected else ""
    if run.info is not None and not run.info.is_running and not seen.is_seen(run.info.run_dir):
        marks += "• "
    return marks


def _cells(run: RunEntry, now: float) -> tuple[str, ...]:
    """run, host, status, verdict, started, step, updated (started in local time, local runs
    and dispatches alike: the column header names the zone)."""
    step = run.progress("{:,}".format) or "–"
    verdict = (run.verdict_word or "–").upper()
    updated = format_seconds(now - run.info.updated) + " ago" if run.info is not None else "–"
    # a run from a teacher cache, or a cache job, says so beside its id (as `kdtui runs`)
    name = run.run_id + (f" ({run.teacher})" if run.teacher else "")  # fit_run splits it
    return (name, run.where, run.status, verdict, started_label(run.started, now), step,
            updated)


def started_label(started: float | None, now: float) -> str:
    """When a run started, in local time and 11 columns, so that the runs list keeps it whole
    at 80 columns: '11-29 22:35' this year, '2025-11-29' an earlier one (its time matters less
    than its date by then), '–' unknown."""
    if not started:
        return "–"
    when = time.localtime(started)
    if when.tm_year == time.localtime(now).tm_year:
        return time.strftime("%m-%d %H:%M", when)
    return time.strftime("%Y-%m-%d", when)


def zone_label(now: float) -> str:
    """This machine's time zone as the column header says it: 'CET', 'UTC', or '+0530' where
    the zone has no short name."""
    name = time.strftime("%Z", time.localtime(now))
    return name if name.isalpha() and len(name) <= 5 else \
        time.strftime("%z", time.localtime(now))


def compare_target(run: RunEntry) -> CompareTarget:
    """Where a row's run can be compared from: its local directory, or its dispatch's host
    (CompareError: a dispatch with no run to read)."""
    if run.info is not None:
        return CompareTarget.local(run.info.run_dir)
    if run.manifest is None or run.manifest_path is None:
        raise CompareError(f"{run.run_id} has no events to read")
    return CompareTarget.dispatched(run.manifest_path, run.manifest)
