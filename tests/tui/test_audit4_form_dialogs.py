"""The form's dialogs at 80x24: the dry run's plan keeps its Close button on screen and scrolls
to its last line from the keyboard, however long the plan (a remote one is dozens of lines)."""

from __future__ import annotations

import pytest
from textual.widgets import Button, Switch

from kdtui.app import KDApp
from kdtui.screens.dialogs import PlanScreen


def shows(app, button: Button) -> bool:
    """The button is drawn: the cell at its middle is the button's (not clipped by its dialog,
    not off the screen)."""
    region = button.region
    if not region.height:
        return False
    try:
        widget, _ = app.screen.get_widget_at(region.x + region.width // 2,
                                             region.y + region.height // 2)
    except Exception:  # noqa: BLE001 - off the screen
        return False
    return widget is button


async def _form(pilot):
    while not pilot.app.screen.form_ready:
        await pilot.pause(0.05)
    await pilot.pause()
    return pilot.app.screen


async def test_dry_run_plan_from_the_form_shows_its_close_button_at_80x24(runs_dir):
    # the demo's local plan wraps to 16 rows at 80 columns: the dialog ran off the screen's
    # bottom and its Close button was never drawn
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await _form(pilot)
        await pilot.press("f2")
        form.query_one("#dry_run", Switch).value = True
        await pilot.press("ctrl+r")
        while not isinstance(app.screen, PlanScreen):
            await pilot.pause(0.1)
        await pilot.pause(0.2)
        close = app.screen.query_one("#close", Button)
        assert shows(app, close), close.region
        assert "command:" in str(app.screen.query_one("#plan").render())
        await pilot.press("escape")
        assert app.screen is form  # nothing started: the form as it was
        assert not any(runs_dir.iterdir())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_a_long_plan_scrolls_to_its_last_line_with_close_on_screen(runs_dir, size):
    lines = [f"step {i:02d}: ssh gpu-box 'command number {i}'" for i in range(60)]
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=size) as pilot:
        await _form(pilot)
        app.show_plan(lines)
        await pilot.pause(0.3)
        plan = app.screen
        close = plan.query_one("#close", Button)
        assert shows(app, close), close.region
        scroll = plan.query_one(".dialog-scroll")
        assert app.focused is scroll  # the arrows and PgDn scroll the plan at once
        await pilot.press("end")
        await pilot.pause(0.2)
        assert scroll.scroll_y == scroll.max_scroll_y > 0
        await pilot.press("enter")
        assert not isinstance(app.screen, PlanScreen)
