"""Promises of docs/dashboard.md that no test held: F8 on the form saves into the runs dir,
`--theme` picks a theme and is remembered (an unknown one is said, the default used), the
compare table's `peak GPU` column only when a run has one, and `kdtui launch` flags open the
kdengine form even on a host where apr was started last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual.widgets import DataTable

from kdtui.app import KDApp
from kdtui.compare import CompareTarget
from kdtui.settings import Settings

GIB = 1 << 30


async def test_f8_on_the_form_saves_a_screenshot_into_the_runs_dir(runs_dir, wait_for):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        await pilot.press("f8")
        await wait_for(pilot, lambda: list(runs_dir.glob("kdtui-*.svg")), 10)
        shot = next(runs_dir.glob("kdtui-*.svg"))
        assert "launch a run" in shot.read_text().replace("&#160;", " ")
        assert any(str(shot) in str(n.message) for n in app._notifications)


async def test_theme_flag_picks_the_theme_and_remembers_it(runs_dir):
    app = KDApp(runs_dir=runs_dir, theme="kdtui-light")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.theme == "kdtui-light"
    assert Settings.load().theme == "kdtui-light"


async def test_an_unknown_theme_is_said_and_the_default_used(runs_dir):
    app = KDApp(runs_dir=runs_dir, theme="no-such-theme")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.theme == "kdtui-dark"
        errors = [str(n.message) for n in app._notifications if n.severity == "error"]
        assert errors and errors[0].startswith("no theme 'no-such-theme'; themes: ")
        assert "kdtui-light" in errors[0] and "ansi-dark" in errors[0]
    assert Settings.load().theme == "kdtui-dark"  # nothing remembered of it


def _run(run_dir: Path, *, peak: int | None, seed: int) -> Path:
    run_dir.mkdir(parents=True)
    events: list[dict[str, Any]] = [{"type": "run_started", "run_id": run_dir.name,
                                     "config": {"seed": seed, "steps": 2}}]
    for step in (1, 2):
        gauges = {"gpu_mem_peak": peak} if peak else {}
        events.append({"type": "step", "step": step, "loss": 2.0, "ce": 2.5,
                       "tokens_per_s": 1000.0, **gauges})
    events.append({"type": "eval", "step": 2, "val_loss": 2.0, "val_ce": 2.5, "val_kd": 0.3})
    (run_dir / "events.jsonl").write_text("".join(
        json.dumps({"v": 1, "seq": i, "t": 1_760_000_000.0 + i, **e}) + "\n"
        for i, e in enumerate(events)))
    return run_dir


async def _table_head(runs_dir: Path, dirs: list[Path]) -> tuple[list[str], list[list[str]]]:
    app = KDApp(runs_dir=runs_dir, command="compare",
                compare_targets=[CompareTarget.local(d) for d in dirs])
    async with app.run_test(size=(120, 40)) as pilot:
        while not getattr(app.screen, "loaded", False):
            await pilot.pause(0.05)
        table = app.screen.query_one(DataTable)
        head = [str(c.label) for c in table.columns.values()]
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        return head, rows


async def test_compare_table_has_peak_gpu_only_when_a_run_has_one(runs_dir):
    cpu = [_run(runs_dir / "cpu-1", peak=None, seed=1), _run(runs_dir / "cpu-2", peak=None,
                                                              seed=2)]
    head, _ = await _table_head(runs_dir, cpu)
    assert "peak GPU" not in head and "tok/s" in head
    gpu = _run(runs_dir / "gpu-1", peak=int(13.2 * GIB), seed=3)
    head, rows = await _table_head(runs_dir, [cpu[0], gpu])
    column = head.index("peak GPU")
    assert [r[column] for r in rows] == ["–", "13.2G"]  # the largest gpu_mem_peak


async def test_launch_flags_open_the_kdengine_form_where_apr_was_started_last(runs_dir):
    settings = Settings.load()
    settings.remember("gpu-box", {"profile": "apr", "apr": {"steps": "31"}})
    app = KDApp(runs_dir=runs_dir)  # `kdtui`: the host's last profile, apr
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        assert app.screen.profile == "apr"
    app = KDApp(runs_dir=runs_dir, prefill={"host": "gpu-box", "steps": 7})  # launch flags
    async with app.run_test(size=(80, 24)) as pilot:
        while not app.screen.form_ready:
            await pilot.pause(0.05)
        assert app.screen.profile == "kdengine"
        assert app.screen.query_one("#field-steps").value == "7"
