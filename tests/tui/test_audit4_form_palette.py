"""The command palette reads the runs dir once when it opens, not at every key typed: each
search read every run's events (head and tail), which held the dashboard up while typing in a
runs dir of hundreds of runs; a run is still found by its name."""

from __future__ import annotations

from kdtui import runs as runs_module
from kdtui.app import KDApp
from kdtui.screens.run import RunScreen


async def test_palette_reads_the_runs_once_per_opening_and_finds_a_run_by_name(
        runs_dir, write_run, wait_for, monkeypatch):
    for i in range(5):
        write_run(runs_dir / f"sweep-{i}", steps=20)
    reads: list[int] = []
    all_runs = runs_module.all_runs

    def counted(*args, **kwargs):
        reads.append(1)
        return all_runs(*args, **kwargs)

    monkeypatch.setattr(runs_module, "all_runs", counted)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        for key in "open run sweep-3":
            await pilot.press(key if key != " " else "space")
            await pilot.pause(0.05)
        await pilot.pause(0.5)
        assert len(reads) == 1, len(reads)  # before: one read of every run per key typed
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        assert app.screen.title_text.startswith("sweep-3")
