"""F8's line in the help (F1) and the palette says where the screenshot goes on the screen they
are shown over: it said "into the run's directory" everywhere, but on the form, the runs list
and compare it goes into the runs directory (tests/remote/test_screenshot_says_where_remote.py:
a remote run's, beside its dispatch.json)."""

from __future__ import annotations

from textual.widgets import Static

from kdtui.app import KDApp
from kdtui.palette import binding_commands
from kdtui.screens.dialogs import HelpScreen
from kdtui.screens.run import RunScreen


def help_text(app: KDApp) -> str:
    """The help's table of keys and its paragraphs below it, as its Statics hold them."""
    return "\n".join(str(static.render()) for static in app.screen.query(Static))


def palette_says(app: KDApp) -> str:
    return next(c.help for c in binding_commands(app.screen, app) if c.name == "Screenshot")


async def _help_over(app: KDApp, pilot, wait_for) -> str:
    await pilot.press("f1")
    await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 10)
    await pilot.pause(0.2)
    text = help_text(app)
    await pilot.press("escape")
    await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), 10)
    return text


async def test_f8_on_the_form_says_it_saves_into_the_runs_directory(runs_dir, wait_for):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        assert palette_says(app) == "Save an SVG screenshot into the runs directory (f8)"
        text = await _help_over(app, pilot, wait_for)
        assert "F8 saves an SVG screenshot into the runs directory." in text
        assert "run's directory" not in text
        await pilot.press("f8")  # and that is where it goes
        await wait_for(pilot, lambda: list(runs_dir.glob("kdtui-*.svg")), 10)


async def test_f8_on_a_local_runs_screen_says_it_saves_into_the_run(runs_dir, wait_for,
                                                                    write_run):
    run = write_run(runs_dir / "shot", steps=30)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="shot")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.screenshot_dir is not None, 30)
        assert palette_says(app) == "Save an SVG screenshot into this run's directory (f8)"
        text = await _help_over(app, pilot, wait_for)
        assert "F8 saves an SVG screenshot into this run's directory." in text
        await pilot.press("f8")
        await wait_for(pilot, lambda: list(run.glob("kdtui-*.svg")), 10)
