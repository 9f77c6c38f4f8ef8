"""Audit 8 of the dashboard as a new user meets it at 80x24: keys typed ahead of the form,
the compare screen's warning mark, and the log filter's help."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from textual import events
from textual.widgets import Input, Static

from kdtui.app import KDApp
from kdtui.compare import CompareTarget
from kdtui.screens.compare import CompareScreen
from kdtui.screens.run import RunScreen
from kdtui.widgets.log_view import LogView

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_compare import write_kd_run  # noqa: E402


async def _until(pilot, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await pilot.pause(0.05)


async def test_keys_typed_right_after_tab_go_to_the_next_field(runs_dir):
    """`8<Tab>64` typed fast (or on a loaded machine: a run training beside the dashboard) put
    '864' in batch_size and left seq_len as it was: the Tab reached the field after the keys
    that followed it. Each key now goes to the field that Tab moved to."""
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        form = app.screen
        await _until(pilot, lambda: form.form_ready)
        batch = form.query_one("#field-batch_size", Input)
        seq_len = form.query_one("#field-seq_len", Input)
        batch.focus()
        await pilot.pause()
        batch.select_all()
        # as the terminal delivers them: all in one read, nothing awaited in between
        for key, char in (("8", "8"), ("tab", None), ("6", "6"), ("4", "4")):
            app.post_message(events.Key(key, char))
        await pilot.pause()
        await pilot.pause()
        assert (batch.value, seq_len.value) == ("8", "64")
        assert app.focused is seq_len
        for key in ("shift+tab", "2"):  # and back: shift+tab as promptly
            app.post_message(events.Key(key, "2" if key == "2" else None))
        await pilot.pause()
        await pilot.pause()
        assert (batch.value, seq_len.value) == ("2", "64")


@asynccontextmanager
async def _compared(runs_dir: Path, dirs: list[Path]) -> AsyncIterator[Static]:
    """`kdtui compare` of `dirs` at 80x24, loaded: its warnings line."""
    app = KDApp(runs_dir=runs_dir, command="compare",
                compare_targets=[CompareTarget.local(d) for d in dirs])
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, CompareScreen)
                     and app.screen.loaded)
        await pilot.pause()
        yield app.screen.query_one("#compare-warnings", Static)


async def test_compare_says_what_its_warning_mark_means(runs_dir):
    """The table's verdict read 'PASS ⚠' and nothing on the screen (nor F1) said what the
    warning was; the warnings now show under the table, each with the runs it is about."""
    dirs = [write_kd_run(runs_dir / "weak-teacher", ce=(5.3, 3.7), val_loss=(1.8, 1.2),
                         teacher_ce=5.6),
            write_kd_run(runs_dir / "fine", ce=(5.3, 1.7), val_loss=(7.0, 1.2), alpha=0.8)]
    async with _compared(runs_dir, dirs) as warnings:
        assert warnings.display
        text = str(warnings.render())
        assert "⚠ weak-teacher: teacher's CE ≥ student's at step 0" in text
        assert "fine" not in text
        assert warnings.region.height == 1 and warnings.region.bottom <= 23  # above the footer


async def test_compare_without_warnings_shows_no_warning_line(runs_dir):
    dirs = [write_kd_run(runs_dir / "a", ce=(5.3, 1.7), val_loss=(7.0, 1.2)),
            write_kd_run(runs_dir / "b", ce=(5.3, 1.9), val_loss=(7.0, 1.3), alpha=0.8)]
    async with _compared(runs_dir, dirs) as warnings:
        assert not warnings.display


async def test_log_filter_help_names_what_the_filter_keeps(runs_dir, write_run):
    """F1 said f shows 'only step, loss, panic, error and verdict lines'; the log's title said
    it keeps steps, evals, stages, errors, warnings, verdict. Both now say the same."""
    write_run(runs_dir / "r1")
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="r1")
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.pause()
        binding = next(b for b in LogView.BINDINGS if b.id == "log.filter")
        await pilot.press("f")
        await pilot.pause()
        title = str(app.screen.query_one(LogView).border_title)
        kept = title.split("filtered: ", 1)[1].rstrip(")").split(", ")
        for word in kept:
            assert word.rstrip("s") in binding.tooltip, (word, binding.tooltip)


async def test_runs_list_help_says_what_its_marks_mean(runs_dir, write_run):
    """The runs list marks runs with '•' (ended, not looked at yet) and '✓' (selected to
    compare); F1 listed the keys and said nothing of either mark."""
    from kdtui.screens.dialogs import HelpScreen
    from kdtui.screens.runs import RunsScreen

    write_run(runs_dir / "r1")
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: getattr(app.screen, "form_ready", False))
        await pilot.press("f3")
        await _until(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("f1")
        await _until(pilot, lambda: isinstance(app.screen, HelpScreen))
        body = str(app.screen.query_one(".dialog-body", Static).render())
        assert "✓" in body and "•" in body


async def test_a_pending_verdict_shows_the_latest_val_loss_beside_step_0s(runs_dir, write_run):
    """While a run went, the verdict panel showed step 0's val loss alone (val CE and KD each
    with '→ latest'): the number the verdict will judge, the objective's latest, was nowhere
    but in the log. It now shows 'latest val loss N (step S)' under step 0's, as the finished
    verdict shows 'final val loss'."""
    from kdtui.widgets.run_panels import RunProgress, VerdictPanel

    write_run(runs_dir / "going", steps=400, upto=130, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="going")
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, RunScreen)
                     and app.screen.query_one(RunProgress).step == 130)
        await pilot.pause()
        lines = str(app.screen.query_one(VerdictPanel).render()).splitlines()
        assert lines[0] == "PENDING"
        assert lines[1].split() == ["step-0", "val", "loss", "3.0000"]
        # write_run's val(100) = 3 * (0.5 + 0.5 / 3.5)
        assert lines[2].split() == ["latest", "val", "loss", "1.9286", "(step", "100)"]
