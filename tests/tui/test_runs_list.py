"""The runs list: local runs and dispatches started in one time zone (this machine's, named once
in the header); every column on screen at 80 columns, the run and host columns giving way to the
others (a selection mark included), the started column to run ids too short to read; R offered
on a run that resumes only. Recorded runs with fixed times, a fixed clock and a fixed zone (CET,
no DST).

Snapshots: pytest tests/tui/test_runs_list.py --snapshot-update (then look at the pictures).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable

import kdtui.screens.runs as runs_screen
from kdtui.app import KDApp
from kdtui.screens.runs import started_label, zone_label

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from runs_list import open_runs_list  # noqa: E402

T0 = 1_760_000_000.0  # 2025-10-09 08:53:20 UTC, 09:53:20 CET (tests/tui/conftest.py's clock)
NOW = T0 + 6 * 3600


@pytest.fixture
def cet(monkeypatch: pytest.MonkeyPatch):
    """This machine's zone is CET (UTC+1, no DST), and now is NOW."""
    monkeypatch.setenv("TZ", "CET-1")
    time.tzset()
    monkeypatch.setattr(runs_screen, "clock", lambda: NOW)
    yield
    monkeypatch.undo()
    time.tzset()


def shifted(run_dir: Path, by: float) -> Path:
    """The run as if it had started `by` seconds after T0, its files last written then too."""
    events = run_dir / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    events.write_text("".join(json.dumps({**e, "t": e["t"] + by}) + "\n" for e in lines))
    for path in run_dir.iterdir():
        os.utime(path, (T0 + by + 60, T0 + by + 60))
    return run_dir


def dispatch(evidence: Path, run_id: str, at: str, **manifest) -> None:
    (evidence / run_id).mkdir(parents=True)
    (evidence / run_id / "dispatch.json").write_text(json.dumps(
        {"run_id": run_id, "host": "gpu1", "launched": False, "dispatched_at": at,
         "config": {"steps": 200}, **manifest}))


@pytest.fixture
def todays_runs(runs_dir: Path, write_run, cet) -> Path:
    """Three of today's runs (two local, one dispatch that failed) and one from last year."""
    shifted(write_run(runs_dir / "kd-20251009-085320", steps=200), 0)
    shifted(write_run(runs_dir / "kd-20251009-101500", steps=200, upto=80, finished=False),
            4900)
    shifted(write_run(runs_dir / "last-years", steps=50), -400 * 86400)
    dispatch(Path(os.environ["KDTUI_EVIDENCE_DIR"]), "kd-20251009-120000",
             "2025-10-09T12:00:00Z")
    return runs_dir


def _started_column(table: DataTable) -> list[str]:
    index = next(i for i, c in enumerate(table.ordered_columns)
                 if str(c.label).startswith("started"))
    return [str(table.get_row_at(row)[index]) for row in range(table.row_count)]


async def test_local_runs_and_dispatches_start_in_one_zone_named_in_the_header(todays_runs):
    app = KDApp(runs_dir=todays_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        table = (await open_runs_list(pilot)).query_one(DataTable)
        labels = [str(c.label) for c in table.ordered_columns]
        assert labels == ["run", "host", "status", "verdict", "started CET", "step", "updated"]
        assert [str(table.get_row_at(r)[0]) for r in range(table.row_count)] == [
            "kd-20251009-120000", "kd-20251009-101500", "kd-20251009-085320", "last-years"]
        # the dispatch's 12:00 UTC is 13:00 here, as the local runs' times are
        assert _started_column(table) == ["10-09 13:00", "10-09 11:15", "10-09 09:53",
                                          "2024-09-04"]


async def test_at_80_columns_the_started_column_gives_way_to_readable_run_ids(todays_runs):
    """Beside 'dispatch failed', INCONCLUSIVE, '400d05h ago' and a run selected, keeping the
    started column left the ids `k…0`: it goes, the ids keep their time, and the line above the
    table says the start of the run under the cursor."""
    app = KDApp(runs_dir=todays_runs)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs_list(pilot)
        table = screen.query_one(DataTable)
        await pilot.press("down", "space")  # a local run: "✓ " widens the run column
        assert str(table.get_row_at(1)[0]).startswith("✓ ")
        assert [str(c.label) for c in table.ordered_columns] == [
            "run", "host", "status", "verdict", "step", "updated"]
        assert _on_screen(table)
        names = [str(table.get_row_at(r)[0]) for r in range(table.row_count)]
        assert all(name.endswith(("-120000", "-101500", "-085320", "last-years"))
                   for name in names), names
        assert table.cursor_row == 2  # space moved the cursor down
        where = str(screen.query_one("#runs-where").render())
        assert where == "kd-20251009-085320 on local, started CET 10-09 09:53"


def test_started_label_is_eleven_columns_this_year_and_the_date_before(cet):
    assert started_label(T0, NOW) == "10-09 09:53"
    assert started_label(T0 - 300 * 86400, NOW) == "2024-12-13"
    assert started_label(None, NOW) == "–"
    assert zone_label(NOW) == "CET"


def test_a_zone_without_a_short_name_is_its_offset(monkeypatch):
    monkeypatch.setenv("TZ", "<+0530>-5:30")
    time.tzset()
    try:
        assert zone_label(NOW) == "+0530"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_of_the_runs_list_with_one_run_selected(snap_compare, todays_runs, size,
                                                         monkeypatch):
    async def select_one(pilot) -> None:
        await open_runs_list(pilot)
        await pilot.press("down", "space")
        await pilot.pause()

    monkeypatch.chdir(todays_runs.parent)  # "runs in runs": no tmp path in the picture
    app = KDApp(runs_dir=Path(todays_runs.name), theme="kdtui-dark")
    assert snap_compare(app, terminal_size=size, run_before=select_one)


LONG = "distill-qwen2.5-0.5b-from-7b-instruct-sweep-lr3e-4-20251009-1"  # + "01500" / "21500"


def from_a_teacher_cache(run_dir: Path) -> Path:
    """The run as one that trained from a teacher cache (its run_started says so)."""
    events = run_dir / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    lines[0]["teacher_cache"] = {"k": 64, "targets": "topk", "bytes": 1.2e9}
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return run_dir


@pytest.fixture
def long_runs(runs_dir: Path, write_run, cet) -> Path:
    """Two runs with one long name that differ at its end only (one from a teacher cache), a
    teacher-cache run with a short id, and a dispatch that failed (the widest status)."""
    shifted(write_run(runs_dir / f"{LONG}01500", steps=200), 0)
    shifted(from_a_teacher_cache(write_run(runs_dir / f"{LONG}21500", steps=200)), 600)
    shifted(from_a_teacher_cache(write_run(runs_dir / "kd-20251009-101500", steps=1000,
                                           upto=80, finished=False)), 1200)
    dispatch(Path(os.environ["KDTUI_EVIDENCE_DIR"]), "kd-20251009-120000",
             "2025-10-09T12:00:00Z")
    return runs_dir


def _run_column(table: DataTable) -> list[str]:
    return [str(table.get_row_at(row)[0]) for row in range(table.row_count)]


def _on_screen(table: DataTable) -> bool:
    """Every column whole on screen (none past the right edge)."""
    width = sum(c.get_render_width(table) for c in table.ordered_columns)
    return width <= table.scrollable_content_region.width


async def test_a_long_run_name_and_a_teacher_cache_label_give_way_to_the_other_columns(
        long_runs):
    app = KDApp(runs_dir=long_runs)
    async with app.run_test(size=(100, 24)) as pilot:
        screen = await open_runs_list(pilot)
        table = screen.query_one(DataTable)
        await pilot.press("down", "down", "space")  # "✓ " on a long one
        await pilot.pause()
        assert _on_screen(table)
        assert _started_column(table)[0] == "10-09 13:00"  # whole
        names = _run_column(table)
        assert names[0] == "kd-20251009-120000"  # what fits stays whole
        # beside "dispatch failed" there is no room for the label: the id that fits is whole
        assert names[1] == "kd-20251009-101500"
        # the long ones lose their middle and keep their ends apart
        assert names[2].startswith("✓ disti") and names[2].endswith("…-20251009-121500")
        assert names[3].startswith("distill") and names[3].endswith("-20251009-101500")
        assert "…" in names[3]
        # at 80 columns the run column keeps what the others leave: each name cut
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        await pilot.pause()
        assert _on_screen(table)
        assert all("…" in name for name in _run_column(table))
    # the same rows at 120 columns: every column whole, the long names still cut in the middle
    async with KDApp(runs_dir=long_runs).run_test(size=(120, 40)) as pilot:
        table = (await open_runs_list(pilot)).query_one(DataTable)
        assert _on_screen(table)
        assert _run_column(table)[1].startswith("kd-20251009-101500 (cached K=64 topk")


async def test_the_run_column_gives_way_again_when_the_terminal_narrows(long_runs):
    app = KDApp(runs_dir=long_runs)
    async with app.run_test(size=(160, 40)) as pilot:
        table = (await open_runs_list(pilot)).query_one(DataTable)
        assert _run_column(table)[3] == f"{LONG}01500"  # room enough: whole
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        await pilot.pause()
        assert _on_screen(table)
        assert "…" in _run_column(table)[3]


def test_fit_run_cuts_the_label_then_the_ids_middle():
    from kdtui.screens.runs import fit_run

    label = "kd-20251009-101500 (cached K=64 topk, 1.2 GB)"
    assert fit_run("", label, 60) == label
    assert fit_run("", label, 33) == "kd-20251009-101500 (cached K=64…)"  # at a word
    assert fit_run("• ", label, 20) == "• kd-20251009-101500"  # no room for the label
    cut = fit_run("✓ ", f"{LONG}21500 (cached K=64 topk)", 33)
    assert cut == "✓ dist…-20251009-121500 (cached…)"  # 33 columns
    assert fit_run("", f"{LONG}21500", 24) == "distill…-20251009-121500"
    # where the other columns leave the run column almost nothing, it still fits in it
    assert [fit_run("✓ ", f"{LONG}21500", w) for w in (2, 3, 4, 5)] == [
        "✓ ", "✓ …", "✓ …0", "✓ d…0"]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_of_the_runs_list_with_long_names_and_teacher_caches(snap_compare, long_runs,
                                                                      size, monkeypatch):
    async def select_one(pilot) -> None:
        await open_runs_list(pilot)
        await pilot.press("down", "down", "space")
        await pilot.pause()

    monkeypatch.chdir(long_runs.parent)
    app = KDApp(runs_dir=Path(long_runs.name), theme="kdtui-dark")
    assert snap_compare(app, terminal_size=size, run_before=select_one)


async def test_resume_is_offered_on_a_row_that_can_resume_only(runs_dir, write_run, end_run,
                                                               cet):
    """`R Resume` in the footer follows the cursor: a failed or stopped run with a checkpoint
    has it; a completed run, and a failed one with nothing to continue from, do not."""
    expected = {}
    for i, (name, status, checkpoint) in enumerate((
            ("completed", "completed", None), ("failed", "failed", 20),
            ("stopped", "stopped", 20), ("no-checkpoint", "failed", None))):
        run = write_run(runs_dir / name, steps=40, upto=None if status == "completed" else 30,
                        finished=status == "completed")
        if status != "completed":
            end_run(run, status, checkpoint)
        shifted(run, 600 * i)
        expected[name] = status != "completed" and checkpoint is not None
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs_list(pilot)
        table = screen.query_one(DataTable)
        offered = {}
        for row, run in enumerate(screen.runs):
            table.move_cursor(row=row)
            await pilot.pause()
            offered[run.run_id] = any(b.binding.action == "resume" and b.binding.show
                                      for b in screen.active_bindings.values())
        assert offered == expected


WIDE_HOST = "gpu-box-a100-eu-west-1.example.com"


def with_steps_times(run_dir: Path, factor: int) -> Path:
    """The run as one `factor` times as long: a million-step run's step column."""
    events = run_dir / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    for e in lines:
        if e["type"] == "step":
            e.update(step=e["step"] * factor, total_steps=e["total_steps"] * factor)
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return run_dir


@pytest.fixture
def wide_runs(runs_dir: Path, write_run, cet) -> Path:
    """Rows as wide as they come: a long name at a million steps, a teacher-cache run, a
    dispatch on a long host name at 123,456 of a million steps, and one that failed to start
    (the widest status)."""
    shifted(with_steps_times(write_run(runs_dir / f"{LONG}01500", steps=200), 5000), 0)
    shifted(from_a_teacher_cache(write_run(runs_dir / "kd-20251009-101500", steps=1000,
                                           upto=80, finished=False)), 1200)
    evidence = Path(os.environ["KDTUI_EVIDENCE_DIR"])
    dispatch(evidence, "kd-20251009-120000", "2025-10-09T12:00:00Z", host=WIDE_HOST,
             launched=True, state="completed", engine_last_step=123456,
             config={"steps": 1_000_000}, verdict={"status": "inconclusive"})
    dispatch(evidence, "kd-20251009-130000", "2025-10-09T13:00:00Z",
             host="h100-node-17.cluster.internal")
    return runs_dir


async def test_every_column_stays_on_screen_with_wide_rows_at_80_columns(wide_runs):
    """The run and host columns give way (an ellipsis) and big step counts go short (123k /
    1M), so that status, verdict, started, step and updated stay whole on screen."""
    app = KDApp(runs_dir=wide_runs)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs_list(pilot)
        table = screen.query_one(DataTable)
        await pilot.pause(0.3)
        assert _on_screen(table), [(str(c.label), c.get_render_width(table))
                                   for c in table.ordered_columns]
        # as painted from the first refresh on (the columns were as wide as their labels,
        # 'verdi' and 'step', until the next refresh 2 s later)
        lines = ["".join(segment.text for segment in strip)
                 for strip in screen._compositor.render_strips()]
        assert any("INCONCLUSIVE  123k / 1M" in line for line in lines), lines
        # the started column gave way (the line above says the start of the row under the
        # cursor): kept, it left the ids `k…00`
        cells = [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]
        assert [c[2:] for c in cells] == [
            ["dispatch failed", "–", "–", "–"],
            ["completed", "INCONCLUSIVE", "123k / 1M", "–"],
            ["stopped", "INCONCLUSIVE", "80 / 1,000", "5h39m ago"],
            ["completed", "PASS", "1M / 1M", "5h59m ago"]]
        assert all(c[0].endswith(("0000", "1500")) for c in cells), cells
        hosts = [c[1] for c in cells]
        assert hosts[2:] == ["local", "local"]
        assert hosts[1].startswith("gpu") and hosts[1].endswith("…")
        assert all("…" in c[0] for c in cells)
        # the line above the table names the run under the cursor whole
        await pilot.press("down")
        where = str(app.screen.query_one("#runs-where").render())
        assert where == f"kd-20251009-120000 on {WIDE_HOST}"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_of_the_runs_list_with_wide_rows(snap_compare, wide_runs, size, monkeypatch):
    # at 120 columns the step counts are whole (123,456 / 1,000,000); the host still gives way
    monkeypatch.chdir(wide_runs.parent)
    app = KDApp(runs_dir=Path(wide_runs.name), theme="kdtui-dark")
    assert snap_compare(app, terminal_size=size, run_before=open_runs_list)

