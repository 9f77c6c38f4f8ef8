"""A virtual view of a run's launch.log that keeps up with a fast engine.

Only the visible lines are rendered (a ScrollView over a plain list of lines), each line is
classified once on arrival (error / warning / filter match), and following stops as soon as the
user scrolls up, counting the lines that arrived since ("+N new lines"). Highlights panics,
errors, whole Python Traceback blocks, CUDA out-of-memory and NaN lines, case-insensitively.
"""

from __future__ import annotations

import re

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.strip import Strip

# One pass per line: which of these a line has decides its class.
_ERROR_RE = re.compile(
    r"panic|error|traceback|exception|out of memory|out-of-memory|\bnan\b|fatal", re.IGNORECASE)
_WARN_RE = re.compile(r"warn", re.IGNORECASE)
# The seed's watch grep (`^step|initial_loss|final_loss|panic|error|F-DISTILL`), made
# case-insensitive and indentation-tolerant (its `^step` missed `  Step N/M`), plus verdict lines.
FILTER_RE = re.compile(
    r"^\s*step\b|initial_loss|final_loss|panic|error|verdict|F-DISTILL", re.IGNORECASE)
_TRACEBACK_START = "Traceback (most recent call last)"

# ERROR_MORE: a line inside a Traceback block after its header: shown as an error, but a jump
# lands on the block's head, so one traceback is one jump
NORMAL, ERROR, WARNING, ERROR_MORE = 0, 1, 2, 3
MAX_LINE_CELLS = 2000  # a giant line is cut for display (and for highlighting), never for search


def classify(line: str) -> int:
    if _ERROR_RE.search(line):
        return ERROR
    if _WARN_RE.search(line):
        return WARNING
    return NORMAL


class LogView(ScrollView, can_focus=True):
    """The log pane: follow, highlight, jump to errors, filter, search."""

    BINDINGS = [
        Binding("e", "next_error", "Next error", id="log.next_error",
                tooltip="Jump to the next panic, error, traceback, OOM or NaN line"),
        Binding("E", "previous_error", "Prev error", show=False, id="log.previous_error"),
        Binding("f", "toggle_filter", "Filter", id="log.filter",
                tooltip="Show only step, loss, panic, error and verdict lines"),
        Binding("n", "next_match", "Next match", show=False, id="log.next_match"),
        Binding("N", "previous_match", "Prev match", show=False, id="log.previous_match"),
        Binding("end,G", "follow", "Follow", show=False, id="log.follow"),
        Binding("home,g", "scroll_home", "Top", show=False, id="log.top"),
    ]

    COMPONENT_CLASSES = {"logview--error", "logview--warning", "logview--match",
                         "logview--cursor"}

    DEFAULT_CSS = """
    LogView {
        background: $surface;
        color: $foreground;
        overflow: auto scroll;
        border: round $foreground 35%;
        border-subtitle-color: $warning;
        border-subtitle-style: bold;
        & > .logview--error { color: $text-error; background: $error-muted; text-style: bold; }
        & > .logview--warning { color: $text-warning; }
        & > .logview--match { background: $accent; color: $text; }
        & > .logview--cursor { background: $primary-muted; }
        &:focus { border: round $primary; }
    }
    """

    filtered: var[bool] = var(False)
    following: var[bool] = var(True)

    class Jumped(Message):
        """The view moved its cursor to a line (an error or a search match)."""

        def __init__(self, index: int, line: str) -> None:
            super().__init__()
            self.index = index
            self.line = line

    def __init__(self, *, max_lines: int = 500_000, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.max_lines = max_lines
        self.lines: list[str] = []
        self.kinds = bytearray()
        self._in_traceback = False
        self._view: list[int] | None = None  # line indices shown while filtered
        self._width = 0
        self.new_lines = 0  # arrived since the user stopped following
        self.cursor: int | None = None  # a line index (in self.lines)
        self.search_term = ""
        self._search_re: re.Pattern[str] | None = None
        self._dropped = 0  # lines pruned from the front (max_lines)

    # -- content ------------------------------------------------------------------------------
    @property
    def line_count(self) -> int:
        return len(self.lines)

    @property
    def error_count(self) -> int:
        return self.kinds.count(ERROR)

    def append_lines(self, new: list[str]) -> None:
        """Add lines at the end; classify each once; follow if following."""
        if not new:
            return
        start = len(self.lines)
        kinds = self.kinds
        for line in new:
            kind = classify(line)
            # A Traceback block is an error as a whole: the header, its indented frames, and
            # the unindented exception line that ends it.
            if line.startswith(_TRACEBACK_START):
                self._in_traceback = True
                kind = ERROR
            elif self._in_traceback:
                kind = ERROR_MORE
                if line and not line[0].isspace() and not line.startswith("During handling") \
                        and not line.startswith("The above exception"):
                    self._in_traceback = False
            kinds.append(kind)
        self.lines.extend(new)
        widest = max(map(len, new))  # characters, not cells: cheap, and close enough for scroll
        if widest > self._width:
            self._width = min(widest, MAX_LINE_CELLS)
        if self._view is not None:
            self._view.extend(i for i in range(start, len(self.lines)) if self._keep(i))
        if len(self.lines) > self.max_lines:
            self._prune()
        added = len(new) if self._view is None else None
        self._update_virtual_size()
        if self.following:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        else:
            self.new_lines += added if added is not None else len(new)
            self._show_new_lines()
        self.refresh()

    def _prune(self) -> None:
        # drop a tenth at once so pruning is rare
        drop = len(self.lines) - self.max_lines + self.max_lines // 10
        del self.lines[:drop]
        del self.kinds[:drop]
        self._dropped += drop
        if self.cursor is not None:
            self.cursor = self.cursor - drop if self.cursor >= drop else None
        if self._view is not None:
            self._view = [i - drop for i in self._view if i >= drop]

    def _keep(self, index: int) -> bool:
        return self.kinds[index] in (ERROR, ERROR_MORE) or bool(
            FILTER_RE.search(self.lines[index]))

    def clear(self) -> None:
        self.lines.clear()
        self.kinds = bytearray()
        self._view = [] if self._view is not None else None
        self.cursor = None
        self.new_lines = 0
        self._update_virtual_size()
        self.refresh()

    def _update_virtual_size(self) -> None:
        rows = len(self._view) if self._view is not None else len(self.lines)
        self.virtual_size = Size(self._width, rows)

    @property
    def visible_count(self) -> int:
        return len(self._view) if self._view is not None else len(self.lines)

    def _index_at_row(self, row: int) -> int | None:
        if self._view is not None:
            return self._view[row] if 0 <= row < len(self._view) else None
        return row if 0 <= row < len(self.lines) else None

    def _row_of_index(self, index: int) -> int | None:
        if self._view is None:
            return index
        from bisect import bisect_left

        pos = bisect_left(self._view, index)
        return pos if pos < len(self._view) and self._view[pos] == index else None

    def visible_lines(self) -> list[str]:
        """The lines on screen now, top to bottom (what a user would read)."""
        top = self.scroll_offset.y
        rows = range(top, min(top + self.size.height, self.visible_count))
        return [self.lines[i] for r in rows if (i := self._index_at_row(r)) is not None]

    # -- following ----------------------------------------------------------------------------
    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        # the user moved: follow only while at the very end
        at_end = round(new) >= self.max_scroll_y
        if at_end != self.following:
            self.following = at_end
        if at_end and self.new_lines:
            self.new_lines = 0
            self._show_new_lines()

    def _show_new_lines(self) -> None:
        self.border_subtitle = (f"+{self.new_lines:,} new lines (End: follow)"
                                if self.new_lines else "")

    def action_follow(self) -> None:
        self.following = True
        self.new_lines = 0
        self._show_new_lines()
        self.scroll_end(animate=False, immediate=True, x_axis=False)

    def action_scroll_home(self) -> None:
        self.following = False
        self.scroll_home(animate=False, immediate=True)

    # -- filter -------------------------------------------------------------------------------
    def watch_filtered(self, filtered: bool) -> None:
        anchor = self.cursor
        if anchor is None:
            anchor = self._index_at_row(self.scroll_offset.y)
        if filtered:
            self._view = [i for i in range(len(self.lines)) if self._keep(i)]
        else:
            self._view = None
        self.border_title = "log (filtered: step, loss, panic, error, verdict)" if filtered \
            else "log"
        self._update_virtual_size()
        if self.following:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        elif anchor is not None:
            self._scroll_to_index(anchor)
        self.refresh()

    def action_toggle_filter(self) -> None:
        self.filtered = not self.filtered

    # -- jumping ------------------------------------------------------------------------------
    def _scroll_to_index(self, index: int) -> None:
        row = self._row_of_index(index)
        if row is None:
            return
        self.following = False
        target = max(0, row - self.size.height // 3)
        self.scroll_to(y=target, animate=False, immediate=True)

    def _jump(self, index: int) -> None:
        self.cursor = index
        self._scroll_to_index(index)
        self.refresh()
        self.post_message(self.Jumped(index, self.lines[index]))

    def _start(self) -> int:
        if self.cursor is not None:
            return self.cursor
        top = self._index_at_row(self.scroll_offset.y)
        return (top if top is not None else 0) - 1

    def action_next_error(self) -> None:
        found = self.kinds.find(ERROR, self._start() + 1)
        if found < 0:
            found = self.kinds.find(ERROR)  # wrap around
        if found < 0:
            self.notify("No errors in the log", timeout=2)
            return
        self._jump(found)

    def action_previous_error(self) -> None:
        found = self.kinds.rfind(ERROR, 0, max(self._start(), 0))
        if found < 0:
            found = self.kinds.rfind(ERROR)
        if found < 0:
            self.notify("No errors in the log", timeout=2)
            return
        self._jump(found)

    # -- search -------------------------------------------------------------------------------
    def search(self, term: str, *, backwards: bool = False) -> bool:
        """Jump to the next line containing term (case-insensitive); False when none does."""
        self.search_term = term
        self._search_re = re.compile(re.escape(term), re.IGNORECASE) if term else None
        self.refresh()
        if not term:
            return False
        return self._find(backwards=backwards)

    def _find(self, *, backwards: bool) -> bool:
        assert self._search_re is not None
        pattern = self._search_re
        n = len(self.lines)
        start = self._start()
        order = (list(range(start - 1, -1, -1)) + list(range(n - 1, start - 1, -1))) \
            if backwards else (list(range(start + 1, n)) + list(range(0, min(start + 1, n))))
        for i in order:
            if pattern.search(self.lines[i]) and self._row_of_index(i) is not None:
                self._jump(i)
                return True
        self.notify(f"{self.search_term!r} not found", timeout=2)
        return False

    def action_next_match(self) -> None:
        if self._search_re is not None:
            self._find(backwards=False)

    def action_previous_match(self) -> None:
        if self._search_re is not None:
            self._find(backwards=True)

    # -- rendering ----------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        index = self._index_at_row(scroll_y + y)
        if index is None:
            return Strip.blank(width, base)
        text = self.lines[index][:MAX_LINE_CELLS].expandtabs(4)
        kind = self.kinds[index]
        style = base
        if kind == ERROR or kind == ERROR_MORE:
            style = base + self.get_component_rich_style("logview--error")
        elif kind == WARNING:
            style = base + self.get_component_rich_style("logview--warning")
        if index == self.cursor:
            style = style + self.get_component_rich_style("logview--cursor")
        segments = self._segments(text, style)
        strip = Strip(segments, cell_len(text))
        return strip.crop_extend(scroll_x, scroll_x + width, style)

    def _segments(self, text: str, style: Style) -> list[Segment]:
        if self._search_re is None:
            return [Segment(text, style)]
        match_style = style + self.get_component_rich_style("logview--match")
        out: list[Segment] = []
        pos = 0
        for m in self._search_re.finditer(text):
            if m.start() > pos:
                out.append(Segment(text[pos:m.start()], style))
            out.append(Segment(m.group(), match_style))
            pos = m.end()
        if pos < len(text):
            out.append(Segment(text[pos:], style))
        return out or [Segment("", style)]
