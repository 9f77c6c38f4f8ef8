"""The command palette (ctrl+p) offers kdtui's own actions for the screen it is opened on, taken
from the screens' and widgets' key bindings (so the palette and the keys cannot drift), plus the
way to a new run, the runs list, any run by its name, and the theme."""

from __future__ import annotations

from textual.command import CommandPalette

from kdtui.app import KDApp
from kdtui.palette import binding_commands
from kdtui.screens.launch import LaunchScreen
from kdtui.screens.runs import RunsScreen
from kdtui.widgets.log_view import LogView
from kdtui.widgets.loss_chart import LossChart
from kdtui.widgets.run_panels import VerdictPanel

SIZE = (100, 32)


async def run_command(pilot, wait_for, typed: str) -> None:
    """ctrl+p, type `typed` as a person would, Enter on the first hit."""
    app = pilot.app
    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 10)
    for ch in typed:
        await pilot.press("space" if ch == " " else ch)
    palette = app.screen
    await wait_for(pilot, lambda: palette.query_one("CommandList").option_count > 0, 10)
    await pilot.press("enter")
    await wait_for(pilot, lambda: not isinstance(app.screen, CommandPalette), 10)
    await pilot.pause()


async def palette_names(pilot, wait_for) -> list[str]:
    """What the palette lists before anything is typed."""
    app = pilot.app
    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 10)
    command_list = app.screen.query_one("CommandList")
    await wait_for(pilot, lambda: command_list.option_count > 0, 10)
    await pilot.pause(0.3)
    names = [str(command_list.get_option_at_index(i).prompt).split("\n")[0]
             for i in range(command_list.option_count)]
    await pilot.press("escape")
    await wait_for(pilot, lambda: not isinstance(app.screen, CommandPalette), 10)
    return names


async def test_run_screen_palette_toggles_the_chart_and_the_log_filter(runs_dir, write_run,
                                                                        wait_for):
    write_run(runs_dir / "done", steps=60)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="done")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.query(VerdictPanel))
                       and app.screen.query_one(VerdictPanel).status == "pass", 30)
        names = " | ".join(await palette_names(pilot, wait_for))
        for wanted in ("EMA", "Log scale", "Search", "Filter", "Next error", "New run",
                       "Runs", "Theme", "Help"):
            assert wanted in names, (wanted, names)
        assert "Stop run" not in names  # a finished run has nothing to stop
        chart = app.screen.query_one(LossChart)
        await run_command(pilot, wait_for, "log y")
        assert chart.log_y
        await run_command(pilot, wait_for, "ema")
        assert chart.smooth
        log = app.screen.query_one(LogView)
        await run_command(pilot, wait_for, "filter")
        assert log.filtered
        # a word of what a command does finds it too ('sideways' is in Wrap's tooltip)
        wrapped = log.wrap
        await run_command(pilot, wait_for, "sideways")
        assert log.wrap is not wrapped
        await run_command(pilot, wait_for, "search")
        assert app.focused is app.screen.query_one("#search")
        await pilot.press("escape")
        await run_command(pilot, wait_for, "runs")
        assert isinstance(app.screen, RunsScreen)


async def test_launch_form_palette_fills_the_demo_and_opens_a_run_by_name(runs_dir, write_run,
                                                                          wait_for):
    write_run(runs_dir / "older-run", steps=40)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.form_ready, 30)
        form = app.screen
        await run_command(pilot, wait_for, "demo")
        assert form.query_one("#field-teacher").value == "demo://teacher"
        await run_command(pilot, wait_for, "open run older")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "").startswith(
            "older-run"), 10)
        await run_command(pilot, wait_for, "new run")
        assert isinstance(app.screen, LaunchScreen)


async def test_palette_picks_a_theme_and_it_is_remembered(runs_dir, wait_for):
    from kdtui.settings import Settings

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen), 30)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 10)
        first = app.screen
        for ch in "theme":
            await pilot.press(ch)
        await pilot.pause(0.3)
        await pilot.press("enter")
        # Textual's theme picker: a second palette, of theme names
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette)
                       and app.screen is not first, 10)
        for ch in "kdtui-light":
            await pilot.press(ch)
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.theme == "kdtui-light", 10)
    assert Settings.load().theme == "kdtui-light"


async def test_palette_commands_are_the_keys_of_the_screen(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        commands = {c.name: c.help for c in binding_commands(screen, app)}
        for binding in LaunchScreen.BINDINGS:
            assert binding.description in commands
            assert commands[binding.description].endswith(f"({app.get_key_display(binding)})")
        # Textual's text-editing keys are no kdtui actions
        assert not any("cursor" in name.lower() for name in commands)


async def test_palette_resumes_a_cancelled_run_from_its_checkpoint(runs_dir, tiny_run_inputs,
                                                                   tiny_args, wait_for):
    import os
    import signal
    import subprocess
    import sys

    from kdtui.runs import run_info

    run_dir = runs_dir / "to-resume"
    engine = subprocess.Popen([sys.executable, "-m", "kdengine",
                               *tiny_args(tiny_run_inputs, run_dir, steps=100000,
                                          checkpoint_every=2, eval_every=100000)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any(run_dir.glob("checkpoints/step-*/meta.json")), 240)
        os.killpg(engine.pid, signal.SIGTERM)  # a stopped run with a complete checkpoint
        await wait_for(pilot, lambda: engine.poll() is not None, 120)
        assert run_info(run_dir).status == "cancelled"
        before = _events(run_dir).count(b'"run_started"')
        assert app.open_run(str(run_dir))
        await wait_for(pilot, lambda: bool(app.screen.query(LogView)), 10)
        await run_command(pilot, wait_for, "resume")
        await wait_for(pilot, lambda: _events(run_dir).count(b'"run_started"') > before, 240)
        # the earlier part's run_finished no longer ends the screen: it follows the resumed run
        await wait_for(pilot, lambda: app.screen._sub_title().endswith("· resumed"), 30)
        assert app.screen.state.finished is None
        handle = app.owned_runs[-1]
        await handle.cancel()
        await wait_for(pilot, lambda: not handle.is_alive(), 120)


async def test_palette_offers_no_resume_for_a_completed_run(runs_dir, write_run, wait_for):
    write_run(runs_dir / "completed", steps=40)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="completed")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.query(LogView)), 10)
        assert "Resume run" not in await palette_names(pilot, wait_for)


def _events(run_dir) -> bytes:
    try:
        return (run_dir / "events.jsonl").read_bytes()
    except OSError:
        return b""
