"""Soft wrapping in the run screen's log pane: long lines wrap at the pane's edge (on by
default), `w` toggles back to one row per line with sideways scrolling, and following, error
jumps, filter, search and the highlights all work on the wrapped rows; the view stays virtual."""

from __future__ import annotations

import os
import random
import time

from textual.app import App, ComposeResult

from kdtui.app import KDApp
from kdtui.palette import binding_commands
from kdtui.screens.run import RunScreen
from kdtui.widgets import log_view
from kdtui.widgets.log_view import (
    WRAP_MARK,
    LogView,
    count_rows,
    display_cells,
    display_text,
    row_breaks,
    wrapped_rows,
)

SIZE = (100, 40)  # the log pane spans the screen: 96 cells of text (border and scrollbar off)
LONG = "apr: " + " ".join(f"w{i:03d}" for i in range(60))  # 5 + 60*5 - 1 = 304 cells
LONG_ERROR = "RuntimeError: " + "x" * 280 + " <needle> tail"  # the needle on a later row


async def _open(app, pilot, wait_for) -> LogView:
    await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
    log = app.screen.query_one(LogView)
    await wait_for(pilot, lambda: log.line_count > 20)
    await wait_for(pilot, lambda: log._layout_width > 0)
    return log


def _rows_text(log: LogView, rows: range) -> list[str]:
    """What the pane shows on these visual rows (they must be on screen)."""
    top = log.scroll_offset.y
    return [log.render_line(row - top).text for row in rows]


def _unwrap(texts: list[str]) -> str:
    """The line back from its rows, for a line of words one space apart (each row of it
    ends with a word and padding: a break falls on a space)."""
    first, *rest = texts
    assert all(t.startswith(WRAP_MARK) for t in rest), rest
    return " ".join([first.strip()] + [t[len(WRAP_MARK):].strip() for t in rest])


async def test_a_300_char_line_takes_four_rows_at_width_100_and_reads_whole(
        runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "long", steps=20, log_extra=[LONG, "short after"])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        log = await _open(app, pilot, wait_for)
        assert log.wrap and log._layout_width == 96
        index = log.lines.index(LONG)
        rows = log.rows_of(index)
        assert len(rows) == 4  # 96 cells, then 94 after the mark, each ending at a word
        assert log.row_count == log.line_count + 3
        log.scroll_to(y=rows[0], animate=False, immediate=True)
        await pilot.pause()
        texts = _rows_text(log, rows)
        assert _unwrap(texts) == LONG  # whole words, nothing lost or repeated at the breaks
        assert [len(t.rstrip()) for t in texts] == [94, 2 + 94, 2 + 94, 2 + 19]
        assert all(len(t) <= log.size.width for t in texts)
        assert log.max_scroll_x == 0  # wrapped: nothing runs off to the right
        assert LONG in log.visible_lines() and "short after" in log.visible_lines()


async def test_w_toggles_wrap_off_to_sideways_scrolling_and_back(runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "toggle", steps=20, log_extra=[LONG, LONG_ERROR])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        log = await _open(app, pilot, wait_for)
        wrap_binding = [b.binding for b in app.screen.active_bindings.values()
                        if b.binding.action == "toggle_wrap"]
        # off the footer (80 columns are few), in the F1 help and the palette
        assert wrap_binding and wrap_binding[0].description == "Wrap"
        assert "Wrap" in {command.name for command in binding_commands(app.screen, app)}
        wrapped_height = log.virtual_size.height
        assert wrapped_height == log.line_count + 3 + 3
        await pilot.press("w")
        await pilot.pause()
        assert not log.wrap and log.border_title == "log (no wrap)"
        assert log.virtual_size.height == log.line_count  # one row per line
        assert log.virtual_size.width == len(LONG_ERROR) and log.max_scroll_x > 0
        index = log.lines.index(LONG)
        log.scroll_to(x=100, y=index, animate=False, immediate=True)
        await pilot.pause()
        top = log.scroll_offset.y
        assert log.render_line(index - top).text.startswith(LONG[100:150])  # scrolled sideways
        await pilot.press("w")
        await pilot.pause()
        assert log.wrap and log.virtual_size.height == wrapped_height
        assert log.scroll_offset.x == 0 and log.border_title == "log"


async def test_e_lands_on_the_first_row_of_a_wrapped_error_and_highlights_every_row(
        runs_dir, wait_for, write_run):
    extra = [LONG] * 30 + [LONG_ERROR] + [LONG] * 30
    run = write_run(runs_dir / "jump", steps=20, log_extra=extra)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        log = await _open(app, pilot, wait_for)
        log.focus()
        await pilot.press("home", "e")
        await pilot.pause()
        index = log.lines.index(LONG_ERROR)
        assert log.cursor == index
        rows = log.rows_of(index)
        assert len(rows) == 4
        top = log.scroll_offset.y
        assert top == rows[0] - log.size.height // 3  # a third down the pane, as unwrapped
        assert top <= rows[0] and rows[-1] < top + log.size.height  # all of it on screen
        texts = _rows_text(log, rows)
        assert texts[0].startswith("RuntimeError: ")
        error_bg = log.get_component_rich_style("logview--error").bgcolor
        cursor_bg = log.get_component_rich_style("logview--cursor").bgcolor
        assert error_bg is not None and cursor_bg is not None
        for row in rows:  # the cursor band and error colour on every row of the line
            segments = list(log.render_line(row - top))
            assert all(s.style.bgcolor == cursor_bg for s in segments if s.text.strip())
            assert all(s.style.bold for s in segments if s.text.strip("↪ "))
        # the rows of the line above are plain
        above = log.rows_of(index - 1)
        plain = list(log.render_line(above[-1] - top))
        assert not any(s.style.bgcolor in (error_bg, cursor_bg) for s in plain)
        await pilot.press("E")  # back: wraps around to the same, only error
        assert log.cursor == index


async def test_search_highlights_a_match_on_a_continuation_row(runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "search", steps=20, log_extra=[LONG] * 40 + [LONG_ERROR])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        log = await _open(app, pilot, wait_for)
        await pilot.press("home")
        await pilot.press("slash", *"NEEDLE", "enter")
        await pilot.pause()
        index = log.lines.index(LONG_ERROR)
        assert log.cursor == index
        rows = log.rows_of(index)
        top = log.scroll_offset.y
        match_bg = log.get_component_rich_style("logview--match").bgcolor
        last = list(log.render_line(rows[-1] - top))
        assert [s.text for s in last if s.style.bgcolor == match_bg] == ["needle"]
        await pilot.press("n")  # the only match: n comes back to it
        assert log.cursor == index


async def test_filter_keeps_wrapping_the_lines_it_shows(runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "filter", steps=20, log_extra=[LONG, LONG_ERROR, LONG])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        log = await _open(app, pilot, wait_for)
        log.focus()
        await pilot.press("f")
        await pilot.pause()
        shown = [log.lines[i] for i in log._view]
        assert LONG not in shown and LONG_ERROR in shown
        assert log.row_count == log.visible_count + 3  # the long error alone wraps
        assert log.virtual_size.height == log.row_count
        assert len(log.rows_of(log.lines.index(LONG_ERROR))) == 4
        assert log.rows_of(log.lines.index(LONG)) == range(0)  # hidden
        await pilot.press("f")
        await pilot.pause()
        assert log.row_count == log.line_count + 9


async def test_following_shows_the_last_row_of_wrapped_lines_and_counts_lines_not_rows(
        runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "follow", steps=200, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        log = await _open(app, pilot, wait_for)
        with open(run / "launch.log", "a") as fh:
            fh.write("".join(f"{LONG} late {i}\n" for i in range(5)))
        await wait_for(pilot, lambda: log.lines[-1].endswith("late 4"))
        await pilot.pause()
        assert log.following and log.scroll_offset.y == log.max_scroll_y
        assert log.max_scroll_y == log.row_count - log.scrollable_content_region.height
        last_rows = log.rows_of(log.line_count - 1)
        assert _rows_text(log, last_rows)[-1].rstrip().endswith("late 4")  # the very end
        log.scroll_to(y=0, animate=False, immediate=True)
        await pilot.pause()
        assert not log.following
        with open(run / "launch.log", "a") as fh:
            fh.write("".join(f"{LONG} later {i}\n" for i in range(3)))
        await wait_for(pilot, lambda: log.new_lines == 3)  # 3 lines, 12 rows
        assert log.border_subtitle.startswith("+3 new lines")
        assert log.scroll_offset.y == 0
        await pilot.press("end")
        await pilot.pause()
        assert log.following and log.scroll_offset.y == log.max_scroll_y
        assert f"{LONG} later 2" in log.visible_lines()


async def test_a_new_width_rewraps_and_keeps_the_line_the_user_reads_at_the_top(
        runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "resize", steps=20, log_extra=[LONG] * 60)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        log = await _open(app, pilot, wait_for)
        index = log.line_count - 30
        log.scroll_to(y=log.rows_of(index)[0], animate=False, immediate=True)
        await pilot.pause()
        assert not log.following
        await pilot.resize_terminal(160, 40)
        await pilot.pause()
        await pilot.pause()
        assert log._layout_width == 156
        assert len(log.rows_of(index)) == wrapped_rows(LONG, 156) == 2
        assert log.row_count == log.line_count + 60
        assert log._index_at_row(log.scroll_offset.y) == index


class _LogOnly(App):
    def compose(self) -> ComposeResult:
        yield LogView(max_lines=1_000_000)


async def test_200k_lines_wrap_without_remeasuring_every_line_per_frame(monkeypatch):
    """The row map is built once per width and extended as lines come; frames, scrolling, a
    new height, wrap off and on, a width it had before never rebuild it; one rebuild of 200,000
    lines is one pass over the wide ones."""
    rebuilds: list[int] = []
    real = log_view._row_starts

    def counted(widths, width, text_at):
        rebuilds.append(width)
        return real(widths, width, text_at)

    monkeypatch.setattr(log_view, "_row_starts", counted)
    rng = random.Random(7)
    app = _LogOnly()
    async with app.run_test(size=(100, 40)) as pilot:
        log = app.query_one(LogView)
        await pilot.pause()
        log.append_lines([f"step {i} loss=1.0" for i in range(10_000)])  # all fit: no map
        assert log._starts is None and rebuilds == []
        for batch in range(19):  # as the run screen applies them: 10,000 lines a tick
            log.append_lines([LONG if rng.random() < 0.1 else f"step {batch} {i} loss=1.0"
                              for i in range(10_000)])
            await pilot.pause()
        assert log.line_count == 200_000
        assert rebuilds == [96]  # once, when the first long line came; extended since
        expected = sum(wrapped_rows(line, 96) for line in log.lines)
        assert log.row_count == expected == log.virtual_size.height
        assert log.following and log.scroll_offset.y == log.max_scroll_y
        for y in (0, 50_000, 150_000):
            log.scroll_to(y=y, animate=False, immediate=True)
            await pilot.pause()
        await pilot.press("e")
        await pilot.resize_terminal(100, 30)  # a new height: the same rows
        await pilot.pause()
        assert rebuilds == [96]
        started = time.perf_counter()
        await pilot.resize_terminal(140, 30)
        await pilot.pause()
        assert rebuilds == [96, 136]
        assert time.perf_counter() - started < 2.0  # one O(lines) pass (tens of ms), not more
        assert log.row_count == sum(wrapped_rows(line, 136) for line in log.lines)
        # back to a width it had, and wrap off and on: the cached maps, brought up to date
        log.append_lines([LONG] * 10)
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        log.focus()
        await pilot.press("w")
        await pilot.pause()
        assert log.virtual_size.height == log.line_count
        await pilot.press("w")
        await pilot.pause()
        assert rebuilds == [96, 136]
        assert log.row_count == sum(wrapped_rows(line, 96) for line in log.lines)
        assert log.virtual_size.height == log.row_count


def test_row_starts_match_a_line_by_line_count():
    rng = random.Random(3)
    for width in (20, 96, 157):
        lines = ["".join(rng.choice("ab  c/=.") for _ in range(n)) for n in (
            rng.choice((0, 5, width - 1, width, width + 1, 3 * width, 2500)) for _ in range(500))]
        lines += ["日本語のログ行" * 40, "tab\tseparated\t" * 30]
        texts = [display_text(line) for line in lines]
        widths = [display_cells(text) for text in texts]
        starts = log_view._row_starts(widths, width, texts.__getitem__)
        expected = [0]
        for line in lines:
            expected.append(expected[-1] + wrapped_rows(line, width))
        assert list(starts) == expected


def test_count_rows_agrees_with_row_breaks():
    rng = random.Random(5)
    for _ in range(3000):
        width = rng.randint(4, 120)
        text = "".join(rng.choice("xy  /日✓") for _ in range(rng.randint(0, 4 * width)))
        cells = display_cells(text)
        assert count_rows(text, cells, width) == len(row_breaks(text, cells, width))


def test_rows_break_after_a_space_and_cut_only_a_token_longer_than_half_a_row():
    width = 20  # rows of 20 cells, then 18 after the mark
    text = "alpha beta gamma delta epsilon zeta"
    breaks = row_breaks(text, len(text), width)
    rows = [text[a:b] for a, b in zip(breaks, [*breaks[1:], len(text)], strict=True)]
    assert rows == ["alpha beta gamma ", "delta epsilon zeta"]
    token = "x" * 50
    assert row_breaks(token, 50, width) == [0, 20, 38]  # no space: cut at the edge
    assert row_breaks("ab " + token, 53, width) == [0, 20, 38]  # a space too early: cut
    assert row_breaks("a" * 20 + " tail", 25, width) == [0, 21]  # the space after a full row
    assert row_breaks("日本" * 20, 80, width) == [0, 20, 38, 56, 74]  # wide: by cells
    # never inside a wide character: a row one cell short rather than half a character
    assert row_breaks("a" + "日" * 20, 41, width) == [0, 19, 37]
    assert row_breaks("✓ done → " * 5, 45, width) == [0, 20, 38]  # one-cell symbols: words


def test_classify_keeps_the_error_and_warning_words_case_insensitively():
    import re

    # the pattern classify had before it went to substring tests: the same answers
    error_re = re.compile(r"panic|error|traceback|exception|out of memory|out-of-memory|"
                          r"\bnan\b|fatal", re.IGNORECASE)
    lines = ["step 3 loss=NaN", "loss=nan,", "nano-gpt finance", "FATAL: x", "Out-Of-Memory",
             "CUDA out of memory", "thread 'main' PANICKED", "Traceback (most recent call",
             "ValueError: bad", "UserWarning: deprecated", "WARN x", "all good", "", "nan",
             "banana", "NaN!", "exceptional", "step 4/10 loss=1.9"]
    for line in lines:
        expected = log_view.ERROR if error_re.search(line) else (
            log_view.WARNING if re.search("warn", line, re.I) else log_view.NORMAL)
        assert log_view.classify(line) == expected, line
