"""`kdtui launch [flags]` as docs/dashboard.md says it: it starts at once, from the host's values
remembered in settings.json with the flags over them (a field the flags do not give keeps the
form's last value), where `kdtui launch --headless` refuses the missing --teacher."""

from __future__ import annotations

from kdtui.app import KDApp, prefill_from_args
from kdtui.cli import build_parser
from kdtui.cli import main as kdtui_main
from kdtui.screens.dialogs import PlanScreen
from kdtui.settings import Settings


async def test_launch_flags_go_over_the_forms_last_values_and_it_starts_at_once(
        runs_dir, tiny_run_inputs, wait_for, capsys):
    settings = Settings.load()
    settings.remember("local", {**tiny_run_inputs, "steps": "30", "batch_size": "4",
                                "seq_len": "32"})
    args = build_parser().parse_args(["launch", "--steps", "7", "--dry-run"])
    app = KDApp(runs_dir=runs_dir, command="launch", prefill=prefill_from_args(args))
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PlanScreen), 60)  # no key pressed
    started_with = Settings.load().values_for("local")  # what Start remembered it started
    assert started_with["teacher"] == tiny_run_inputs["teacher"]  # the form's last value
    assert started_with["steps"] == "7"  # the flag's
    assert started_with["dry_run"] is True
    # headless remembers nothing: the same flags lack a teacher
    assert kdtui_main(["launch", "--headless", "--steps", "7", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("kdtui launch: error: --teacher: is required")


async def test_launch_on_a_host_the_form_does_not_know_starts_nothing(runs_dir, wait_for):
    """`kdtui launch --host nosuch --demo` (the dashboard) put the form on local, for want of
    the host, and started the demo run at once on this machine; now it stays on the form, the
    host's error on its row, nothing started."""
    from textual.widgets import Select

    from kdtui.screens.launch import LaunchScreen

    args = build_parser().parse_args(["launch", "--host", "nosuch", "--demo"])
    app = KDApp(runs_dir=runs_dir, command="launch", prefill=prefill_from_args(args))
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.form_ready, 30)
        form = app.screen
        await pilot.pause(1.0)  # where it used to start
        assert app.screen is form and not form._starting
        assert "nosuch" in form.query_one("#row-host").query_one(".field-error").render().plain
        assert form.query_one("#host", Select).value == "local"
    assert not any(runs_dir.iterdir())  # no run directory: nothing started
