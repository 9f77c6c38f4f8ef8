"""The runs list: Enter typed ahead opens the row the keys before it moved to (it opened the row
the cursor was on when the burst came); at 80 columns the worst rows (a dispatch that failed, an
INCONCLUSIVE verdict, 'updated 44m08s ago') leave the run names readable (they were `k…00`)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from textual import events
from textual.widgets import DataTable

import kdtui.screens.runs as runs_screen
from kdtui.app import KDApp
from kdtui.screens.run import RunScreen

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from runs_list import open_runs_list  # noqa: E402

T0 = 1_760_000_000.0  # tests/tui/conftest.py's clock


@pytest.fixture
def cet(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "CET-1")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def test_enter_typed_ahead_opens_the_row_the_keys_before_it_moved_to(
        runs_dir, write_run, wait_for):
    for name in ("run-a", "run-b", "run-c"):
        write_run(runs_dir / name, steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_runs_list(pilot)
        assert screen.query_one(DataTable).cursor_row == 0
        wanted = screen.runs[1].run_id
        # one burst, as a terminal delivers typed-ahead keys: nothing runs between them
        for key, char in (("down", None), ("enter", "\r")):
            app.post_message(events.Key(key, char))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 30)
        assert app.screen.handle.run_id == wanted, (app.screen.handle.run_id, wanted)


def _worst_rows(runs_dir: Path, write_run) -> None:
    """A run that stopped (INCONCLUSIVE) updated 44m08s ago, one that passed, and a dispatch
    that failed (the widest status), at a fixed clock."""
    stopped = write_run(runs_dir / "kd-20251009-085320", steps=200, upto=80, finished=False)
    passed = write_run(runs_dir / "kd-20251009-090000", steps=200)
    for run_dir in (stopped, passed):
        for path in run_dir.iterdir():
            os.utime(path, (T0 + 600, T0 + 600))
    evidence = Path(os.environ["KDTUI_EVIDENCE_DIR"])
    (evidence / "kd-20251009-100000").mkdir(parents=True)
    (evidence / "kd-20251009-100000" / "dispatch.json").write_text(json.dumps(
        {"run_id": "kd-20251009-100000", "host": "gpu1", "launched": False,
         "dispatched_at": "2025-10-09T10:00:00Z", "config": {"steps": 200}}))


async def test_run_names_stay_readable_at_80_columns_with_the_widest_rows(
        runs_dir, write_run, cet, monkeypatch):
    _worst_rows(runs_dir, write_run)
    monkeypatch.setattr(runs_screen, "clock", lambda: T0 + 600 + 44 * 60 + 8)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs_list(pilot)
        await pilot.pause(0.3)
        table = screen.query_one(DataTable)
        cells = [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]
        assert any("dispatch failed" in row for row in cells), cells
        assert any("INCONCLUSIVE" in row for row in cells), cells
        assert any("44m08s ago" in row or "44m ago" in row for row in cells), cells
        # each run's id shows its time whole (what tells timestamped ids apart)
        names = [row[0] for row in cells]
        for run in screen.runs:
            assert any(run.run_id[3:] in name for name in names), (run.run_id, names)
        # every column still on screen, within 80 columns
        lines = ["".join(segment.text for segment in strip)
                 for strip in screen._compositor.render_strips()]
        assert any("dispatch failed" in line for line in lines), lines
        assert any("INCONCLUSIVE" in line for line in lines), lines
        assert all(len(line.rstrip()) <= 80 for line in lines)
