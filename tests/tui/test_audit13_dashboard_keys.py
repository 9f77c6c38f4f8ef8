"""Keys docs/dashboard.md promises that no test pressed (audit 13): `n`/`N` in the log's search,
`r` on the runs list, `g` on the samples pane; each pressed as a person would."""

from __future__ import annotations

from kdtui.app import KDApp
from kdtui.screens.run import RunScreen
from kdtui.widgets.log_view import LogView
from kdtui.widgets.samples import SamplesView

from .conftest import verdict_shown


async def test_audit13_n_and_shift_n_step_through_the_log_s_matches_both_ways(
        runs_dir, write_run, wait_for):
    run = write_run(runs_dir / "searched", steps=20,
                    log_extra=["needle one", "hay", "NEEDLE two", "hay", "needle three"])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        log = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: "needle three" in log.lines)
        await pilot.press("slash", *"needle", "enter")
        await pilot.pause()
        seen = [log.lines[log.cursor]]
        for key in ("n", "n", "N", "N"):
            await pilot.press(key)
            await pilot.pause()
            seen.append(log.lines[log.cursor])
        assert seen == ["needle one", "NEEDLE two", "needle three", "NEEDLE two",
                        "needle one"], seen


async def test_audit13_r_on_the_runs_list_shows_a_run_that_appeared_since(runs_dir, write_run,
                                                                         wait_for):
    from kdtui.screens.runs import RunsScreen

    write_run(runs_dir / "first", steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        app.action_runs()
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and len(app.screen.runs) == 1)
        write_run(runs_dir / "second", steps=20)
        await pilot.press("r")  # before the 2 s refresh
        await pilot.pause()
        assert sorted(r.run_id for r in app.screen.runs) == ["first", "second"]


async def test_audit13_g_on_the_samples_pane_goes_back_to_the_newest_sample(
        on_policy_run, runs_dir, wait_for):
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="on-policy")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: verdict_shown(app))
        pane = app.screen.query_one(SamplesView)
        await pilot.press("s")
        await pilot.pause()
        assert pane.has_focus
        await pilot.press("pagedown", "pagedown")
        await pilot.pause()
        assert pane.scroll_offset.y > 0
        await pilot.press("g")
        await pilot.pause()
        assert pane.scroll_offset.y == 0
