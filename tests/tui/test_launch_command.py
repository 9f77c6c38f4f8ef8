"""`kdtui launch ...` (not headless): the dashboard starts the run at once, or, when a value is
bad, stays on the form with the error on its field and starts nothing."""

from __future__ import annotations

import argparse

from kdtui.app import KDApp, prefill_from_args


def launch_args(**values: object) -> argparse.Namespace:
    from kdtui.cli import build_parser

    argv = ["launch"]
    for key, value in values.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return build_parser().parse_args(argv)


TINY = dict(steps=10, batch_size=4, seq_len=32, lr=3e-3, eval_every=5, eval_batches=2,
            log_every=1, checkpoint_every=0, temperature=2.0, run_name="from-cli")


async def test_launch_command_starts_the_run_in_the_dashboard(runs_dir, tiny_run_inputs,
                                                             wait_for):
    from kdtui.screens.run import RunScreen
    from kdtui.widgets.run_panels import VerdictPanel

    args = launch_args(**tiny_run_inputs, **TINY)
    app = KDApp(runs_dir=runs_dir, command="launch", prefill=prefill_from_args(args))
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 30)
        panel = app.screen.query_one(VerdictPanel)
        await wait_for(pilot, lambda: panel.status != "pending", 180)
        assert panel.status == "pass"
    assert (runs_dir / "from-cli" / "events.jsonl").exists()


async def test_launch_command_with_a_bad_value_stays_on_the_form(runs_dir, tiny_run_inputs,
                                                                 wait_for):
    from kdtui.screens.launch import LaunchScreen

    args = launch_args(**tiny_run_inputs, **{**TINY, "alpha": "2"})
    app = KDApp(runs_dir=runs_dir, command="launch", prefill=prefill_from_args(args))
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.form_ready, 30)
        await pilot.pause(0.5)
        assert isinstance(app.screen, LaunchScreen)
        assert "must be a number >= 0 and <= 1 (got 2)" in app.screen.field_error("alpha")
    assert not (runs_dir / "from-cli").exists()
