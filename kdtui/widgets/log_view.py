"""A virtual view of a run's launch.log that keeps up with a fast engine.

Only the visible rows are rendered (a ScrollView over a plain list of lines), each line is
classified and measured once on arrival (error / warning / filter match, width in cells), and
following stops as soon as the user scrolls up, counting the lines that arrived since ("+N new
lines"). Highlights panics, errors, whole Python Traceback blocks, CUDA out-of-memory and NaN
lines, case-insensitively.

Long lines wrap (soft: at the pane's edge, continuation rows marked with "↪"), or with wrap off
(`w`) run on and scroll sideways. Wrapping maps visual rows to lines through `_starts`, the first
row of each shown line, built once per width from the cached cell widths and extended as lines
arrive; while every line fits, there is no map at all (row == line).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable
from itertools import accumulate, compress, count, islice

from rich.cells import cell_len, get_character_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.strip import Strip

# Which of these a line has decides its class (case-insensitive). Plain substring tests on the
# lowered line, not one IGNORECASE regex alternation: 10x faster (0.3 us a line, not 3.7 us),
# which pays for measuring each line's width for wrapping.
_ERROR_WORDS = ("error", "panic", "traceback", "exception", "out of memory", "out-of-memory",
                "fatal")
_NAN_RE = re.compile(r"\bnan\b")  # a word: not "nano", "finance"
# The seed's watch grep (`^step|initial_loss|final_loss|panic|error|F-DISTILL`), made
# case-insensitive and indentation-tolerant (its `^step` missed `  Step N/M`), widened to what a
# run's outline needs: every eval (not only step 0's, tagged initial_loss), every stage line
# (`[train] failed (0.1s): ...` names no error), and verdict lines; warnings and errors are kept
# by their class (LogView._keep).
FILTER_RE = re.compile(
    r"^\s*(?:step|eval)\b|^\[[\w.-]+\] (?:running|done|failed|skipped|cancelled)\b"
    r"|initial_loss|final_loss|panic|error|verdict|F-DISTILL", re.IGNORECASE)
_TRACEBACK_START = "Traceback (most recent call last)"

# ERROR_MORE: a line inside a Traceback block after its header: shown as an error, but a jump
# lands on the block's head, so one traceback is one jump
NORMAL, ERROR, WARNING, ERROR_MORE = 0, 1, 2, 3
MAX_LINE_CELLS = 2000  # a giant line is cut for display (and for highlighting), never for search
WRAP_MARK = "↪ "  # starts each continuation row of a wrapped line
_MARK_CELLS = 2
_MARK_MIN_WIDTH = 12  # narrower than this, continuation rows get no mark (it would crowd them)
MAPS_KEPT = 4  # row maps cached (by width and filter)


def display_text(line: str) -> str:
    """What a line shows: cut to MAX_LINE_CELLS, tabs expanded (what is measured and drawn)."""
    text = line[:MAX_LINE_CELLS]
    return text.expandtabs(4) if "\t" in text else text


def display_cells(text: str) -> int:
    # printable ASCII is one cell per character: skip rich's per-character table for it
    return len(text) if text.isascii() and text.isprintable() else cell_len(text)


def wrap_chunks(width: int) -> tuple[int, int]:
    """Cells of a wrapped line's first row and of each continuation row (after the mark)."""
    return width, (width - _MARK_CELLS if width >= _MARK_MIN_WIDTH else width)


def row_breaks(text: str, cells: int, width: int) -> list[int]:
    """Where each visual row of a display text `cells` wide starts, in cells (the first at 0),
    in a pane `width` cells wide.

    A row ends after its last space when that leaves it at least half full (words stay whole:
    `tok/s=3083`, a path), else at the pane's edge (a long token is cut). Text with wide or
    zero-width characters (CJK, emoji) is cut where the row is full, never inside a character."""
    if cells <= width:
        return [0]
    first, rest = wrap_chunks(width)
    if len(text) != cells:
        return _cell_breaks(text, first, rest)
    breaks = [0]
    pos, room = 0, first
    while cells - pos > room:
        end = pos + room
        # a space just past the edge counts too: the row is full and the space is the break
        cut = text.rfind(" ", pos + (room >> 1), end + 1)
        pos = cut + 1 if cut >= 0 else end
        breaks.append(pos)
        room = rest
    return breaks


def count_rows(text: str, cells: int, width: int) -> int:
    """len(row_breaks(text, cells, width)) without the list: the layout's hot path (about
    1 us for a 300-character line)."""
    if cells <= width:
        return 1
    first, rest = wrap_chunks(width)
    if len(text) != cells:
        return len(_cell_breaks(text, first, rest))
    rows, pos, room = 1, 0, first
    rfind = text.rfind
    while cells - pos > room:
        end = pos + room
        cut = rfind(" ", pos + (room >> 1), end + 1)
        pos = cut + 1 if cut >= 0 else end
        rows += 1
        room = rest
    return rows


def _cell_breaks(text: str, first: int, rest: int) -> list[int]:
    """Row starts (in cells) of text whose characters are not all one cell wide: a step per
    character, so only for such lines (rare in a training log)."""
    breaks = [0]
    room, used, at = first, 0, 0  # at: cells before the current character
    for char in text:
        size = get_character_cell_size(char)
        if used + size > room:
            breaks.append(at)
            room, used = rest, 0
        used += size
        at += size
    return breaks


def wrapped_rows(line: str, width: int) -> int:
    """Visual rows a log line takes in a pane `width` cells wide."""
    text = display_text(line)
    return count_rows(text, display_cells(text), width)


def classify(line: str) -> int:
    low = line.lower()
    for word in _ERROR_WORDS:
        if word in low:
            return ERROR
    if "nan" in low and _NAN_RE.search(low):
        return ERROR
    return WARNING if "warn" in low else NORMAL


class LogView(ScrollView, can_focus=True):
    """The log pane: follow, highlight, jump to errors, filter, search."""

    BINDINGS = [
        Binding("e", "next_error", "Next error", id="log.next_error",
                tooltip="Jump to the next panic, error, traceback, OOM or NaN line"),
        Binding("E", "previous_error", "Prev error", show=False, id="log.previous_error"),
        Binding("f", "toggle_filter", "Filter", id="log.filter",
                tooltip="Show only step, eval, stage, error, warning and verdict lines"),
        Binding("w", "toggle_wrap", "Wrap", show=False, id="log.wrap",  # F1, ctrl+p: 80 cols
                tooltip="Wrap long lines at the edge, or let them run on (scroll sideways)"),
        Binding("n", "next_match", "Next match", show=False, id="log.next_match"),
        Binding("N", "previous_match", "Prev match", show=False, id="log.previous_match"),
        Binding("end,G", "follow", "Follow", show=False, id="log.follow"),
        Binding("home,g", "scroll_home", "Top", show=False, id="log.top"),
    ]

    COMPONENT_CLASSES = {"logview--error", "logview--warning", "logview--match",
                         "logview--cursor", "logview--wrap-mark"}

    DEFAULT_CSS = """
    LogView {
        background: $surface;
        color: $foreground;
        overflow: auto scroll;
        border: round $foreground 35%; border-title-color: $foreground;
        border-subtitle-color: $warning;
        border-subtitle-style: bold;
        & > .logview--error { color: $text-error; background: $error-muted; text-style: bold; }
        & > .logview--warning { color: $text-warning; }
        & > .logview--match { background: $accent; color: $text; }
        & > .logview--cursor { background: $primary-muted; }
        & > .logview--wrap-mark { color: $text-muted; text-style: not bold; }
        &:focus { border: round $primary; }
    }
    """

    filtered: var[bool] = var(False)
    following: var[bool] = var(True)
    wrap: var[bool] = var(True)

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
        self.cells = array("I")  # each line's display width in cells, measured once
        self._in_traceback = False
        self._view: list[int] | None = None  # line indices shown while filtered
        self._widest = 0  # cells of the widest line seen (not lowered by pruning: only a bound)
        # Wrap layout, valid for _layout_width (0: not wrapping, or no size yet): the first
        # visual row of each shown line, then the total; None while every line fits in one row.
        self._layout_width = 0
        self._starts: array[int] | None = None
        # row maps by (width, filtered), the current one among them, kept up to date lazily:
        # wrap off and on again, or a pane back to a width it had, costs no rebuild
        self._maps: OrderedDict[tuple[int, bool], array[int]] = OrderedDict()
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
        widths = array("I", [display_cells(display_text(line)) for line in new])
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
        self.cells.extend(widths)
        widest = max(widths)
        if widest > self._widest:
            self._widest = widest
        if self._view is not None:
            kept = [i for i in range(start, len(self.lines)) if self._keep(i)]
            self._view.extend(kept)
            shown: list[int] | array[int] = [widths[i - start] for i in kept]
        else:
            shown = widths
        if len(self.lines) > self.max_lines:
            self._prune()
            self._layout()
        else:
            self._extend_layout(shown, self.visible_count - len(shown))
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
        del self.cells[:drop]
        self._maps.clear()  # every position moved
        self._dropped += drop
        if self.cursor is not None:
            self.cursor = self.cursor - drop if self.cursor >= drop else None
        if self._view is not None:
            self._view = [i - drop for i in self._view if i >= drop]

    def _keep(self, index: int) -> bool:
        return self.kinds[index] in (ERROR, ERROR_MORE, WARNING) or bool(
            FILTER_RE.search(self.lines[index]))

    def clear(self) -> None:
        self.lines.clear()
        self.kinds = bytearray()
        self.cells = array("I")
        self._widest = 0
        self._starts = None
        self._maps.clear()
        self._view = [] if self._view is not None else None
        self.cursor = None
        self.new_lines = 0
        self._update_virtual_size()
        self.refresh()

    # -- rows: shown lines (positions in the view) and the visual rows they take --------------
    @property
    def visible_count(self) -> int:
        """Lines shown (all, or the filter's), whatever rows they take."""
        return len(self._view) if self._view is not None else len(self.lines)

    @property
    def row_count(self) -> int:
        """Visual rows of the shown lines (more than visible_count when long lines wrap)."""
        return self._starts[-1] if self._starts is not None else self.visible_count

    def _update_virtual_size(self) -> None:
        # wrapped, nothing is wider than the pane: no sideways scrolling
        width = self._layout_width if self.wrap else self._widest
        self.virtual_size = Size(width, self.row_count)

    def _wrap_width(self) -> int:
        """Cells per row to wrap at now: 0 when not wrapping or before the first layout."""
        return max(self.scrollable_content_region.width, 0) if self.wrap else 0

    def _layout(self) -> None:
        """The row map for the current width (on resize, wrap toggle, filter, prune): from the
        cache when this width (and filter) had one, brought up to date with the lines that came
        since; else built in one pass over the wide lines."""
        width = self._layout_width = self._wrap_width()
        if width <= 0 or self._widest <= width:
            self._starts = None
        else:
            key = (width, self._view is not None)
            starts = self._maps.pop(key, None)
            if starts is None:
                shown = self.cells if self._view is None else \
                    [self.cells[i] for i in self._view]
                starts = _row_starts(shown, width, self._text_at_pos)
            else:
                first = len(starts) - 1
                self._extend_starts(starts, width, first, self._cells_from(first))
            self._maps[key] = starts
            while len(self._maps) > MAPS_KEPT:
                del self._maps[next(iter(self._maps))]
            self._starts = starts
        self._update_virtual_size()

    def _cells_from(self, pos: int) -> list[int] | array[int]:
        return self.cells[pos:] if self._view is None else \
            [self.cells[i] for i in self._view[pos:]]

    def _text_at_pos(self, pos: int) -> str:
        index = self._view[pos] if self._view is not None else pos
        return display_text(self.lines[index])

    def _extend_layout(self, shown: list[int] | array[int], first_pos: int) -> None:
        """Lines `shown` cells wide were appended at view positions first_pos...: extend the
        row map, O(new lines) (only a line wider than the pane is looked at more closely)."""
        width = self._layout_width
        if width <= 0:
            return
        starts = self._starts
        if starts is None:
            if self._widest > width:
                self._layout()  # the first line that wraps: from now on there is a map
            return
        self._extend_starts(starts, width, first_pos, shown)

    def _extend_starts(self, starts: array[int], width: int, first_pos: int,
                       shown: list[int] | array[int]) -> None:
        rows = _rows(shown, width, lambda i: self._text_at_pos(first_pos + i))
        starts.extend(islice(accumulate(rows, initial=starts[-1]), 1, None))

    def _line_at_pos(self, pos: int) -> int | None:
        if self._view is not None:
            return self._view[pos] if 0 <= pos < len(self._view) else None
        return pos if 0 <= pos < len(self.lines) else None

    def _pos_of_index(self, index: int) -> int | None:
        if self._view is None:
            return index if 0 <= index < len(self.lines) else None
        pos = bisect_left(self._view, index)
        return pos if pos < len(self._view) and self._view[pos] == index else None

    def _pos_at_row(self, row: int) -> int | None:
        starts = self._starts
        if starts is None:
            return row if 0 <= row < self.visible_count else None
        if not 0 <= row < starts[-1]:
            return None
        return bisect_right(starts, row) - 1

    def _first_row(self, pos: int) -> int:
        return self._starts[pos] if self._starts is not None else pos

    def _index_at_row(self, row: int) -> int | None:
        pos = self._pos_at_row(row)
        return None if pos is None else self._line_at_pos(pos)

    def _row_of_index(self, index: int) -> int | None:
        pos = self._pos_of_index(index)
        return None if pos is None else self._first_row(pos)

    def rows_of(self, index: int) -> range:
        """The visual rows line `index` takes now (empty when the filter hides it)."""
        pos = self._pos_of_index(index)
        if pos is None:
            return range(0)
        return range(self._first_row(pos), self._first_row(pos + 1)
                     if self._starts is not None else pos + 1)

    def visible_lines(self) -> list[str]:
        """The lines on screen now, top to bottom (what a user would read), each once."""
        top = self.scroll_offset.y
        out: list[int] = []
        for row in range(top, min(top + self.size.height, self.row_count)):
            index = self._index_at_row(row)
            if index is not None and (not out or out[-1] != index):
                out.append(index)
        return [self.lines[i] for i in out]

    # -- wrapping -----------------------------------------------------------------------------
    def on_resize(self) -> None:
        # only a new width changes the rows; a new height moves the end: a shorter pane (the
        # band above grew after the lines came) no longer shows it, so following scrolls there
        if self._wrap_width() != self._layout_width:
            self._relayout_keeping_place()
        elif self.following:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def watch_wrap(self, wrap: bool) -> None:
        self._retitle()
        if self.is_mounted:
            self._relayout_keeping_place()

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap

    def _relayout_keeping_place(self) -> None:
        """New rows for a new width or wrap mode; the line at the top (or the followed end)
        stays where the user was reading."""
        anchor = None if self.following else self._index_at_row(self.scroll_offset.y)
        following = self.following
        self._layout()
        if self.wrap and self.scroll_x:
            self.scroll_to(x=0, animate=False, immediate=True)  # wrapped: nothing to the right
        if following:
            self.following = True
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        elif anchor is not None:
            row = self._row_of_index(anchor)
            if row is not None:
                self.scroll_to(y=row, animate=False, immediate=True)
                self.following = False
        self.refresh()

    def _retitle(self) -> None:
        notes = (["filtered: steps, evals, stages, errors, warnings, verdict"]
                 if self.filtered else []) + ([] if self.wrap else ["no wrap"])
        self.border_title = f"log ({'; '.join(notes)})" if notes else "log"

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
        self._retitle()
        self._layout()
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
        row = scroll_y + y
        pos = self._pos_at_row(row)
        index = None if pos is None else self._line_at_pos(pos)
        if pos is None or index is None:
            return Strip.blank(width, base)
        text = display_text(self.lines[index])
        kind = self.kinds[index]
        style = base
        if kind == ERROR or kind == ERROR_MORE:
            style = base + self.get_component_rich_style("logview--error")
        elif kind == WARNING:
            style = base + self.get_component_rich_style("logview--warning")
        if index == self.cursor:
            style = style + self.get_component_rich_style("logview--cursor")
        strip = Strip(self._segments(text, style), self.cells[index])
        wrap_at = self._layout_width
        if wrap_at <= 0:
            return strip.crop_extend(scroll_x, scroll_x + width, style)
        # a wrapped line: every row gets the line's style (error band, cursor), the
        # continuation rows a dim mark first
        sub_row = row - self._first_row(pos)
        cells = self.cells[index]
        breaks = row_breaks(text, cells, wrap_at)
        if sub_row >= len(breaks):  # cannot happen while the map is current; draw nothing
            return Strip.blank(width, style)
        first, rest = wrap_chunks(wrap_at)
        start = breaks[sub_row]
        end = breaks[sub_row + 1] if sub_row + 1 < len(breaks) else cells
        if sub_row == 0:
            return strip.crop(0, min(end, first)).extend_cell_length(width, style)
        piece = strip.crop(start, min(end, start + rest))
        if rest < wrap_at:
            # only the mark's colour (blended against the pane, so muted), on the row's band
            muted = self.get_component_rich_style("logview--wrap-mark").color
            mark = style + Style(color=muted, bold=False)
            piece = Strip.join([Strip([Segment(WRAP_MARK, mark)], _MARK_CELLS), piece])
        return piece.extend_cell_length(width, style)

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


def _rows(widths: list[int] | array[int], width: int,
          text_at: Callable[[int], str]) -> array[int]:
    """Visual rows of each line, for lines `widths` cells wide (`text_at(i)`: the display text
    of line i, asked only for the lines wider than the pane). Lines that fit (most of a log)
    are one row each: found and filled at C speed, only the wide ones looked at one by one."""
    rows = array("I", [1]) * len(widths)
    for i in compress(count(), map(width.__lt__, widths)):
        rows[i] = count_rows(text_at(i), widths[i], width)
    return rows


def _row_starts(widths: list[int] | array[int], width: int,
                text_at: Callable[[int], str]) -> array[int]:
    """First visual row of each line, then the total (a running sum of _rows)."""
    return array("q", accumulate(_rows(widths, width, text_at), initial=0))
