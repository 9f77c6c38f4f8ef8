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


async def _command(pilot, text: str) -> None:
    await pilot.press("ctrl+p")
    await pilot.pause(0.3)
    for key in text:
        await pilot.press(key if key != " " else "space")
    await pilot.pause(0.4)
    await pilot.press("enter")
    await pilot.pause(0.3)


async def test_new_run_from_a_run_goes_back_to_the_form_with_what_was_typed(
        runs_dir, write_run, wait_for):
    # before: "New run" pushed a second form over the run, filled with the values of the last
    # start; the values typed into the first (not started) were buried under it, out of reach
    from textual.widgets import Input

    from kdtui.screens.launch import LaunchScreen

    write_run(runs_dir / "earlier", steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        form.query_one("#field-steps", Input).value = "1234"
        await _command(pilot, "open run earlier")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 10)
        await _command(pilot, "new run")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen), 10)
        assert app.screen is form
        assert form.query_one("#field-steps", Input).value == "1234"
        assert sum(isinstance(s, LaunchScreen) for s in app.screen_stack) == 1
