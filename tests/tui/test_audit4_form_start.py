"""Start from the form as a user presses it: the engine's check takes seconds (a loaded laptop, a
remote host's wheel being built), so the Start button says what is under way and a second
ctrl+r is told so instead of starting the check again; a refused start gives the button back."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from textual.color import Color
from textual.widgets import Button, Input, Switch

from kdtui.app import KDApp
from kdtui.launch.local import LocalLauncher
from kdtui.screens.dialogs import PlanScreen

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from contrast import contrast  # noqa: E402

START_LABEL = "Start (ctrl+r)"


async def _form(pilot):
    while not pilot.app.screen.form_ready:
        await pilot.pause(0.05)
    await pilot.pause()
    return pilot.app.screen


def _label_contrast(app, button: Button) -> float:
    """The lowest contrast of the button's label as drawn (glyph colour on its background)."""
    region = button.region
    strip = app.screen._compositor.render_strips()[region.y]
    x, worst = 0, 21.0
    for seg in strip:
        for ch in seg.text:
            if region.x <= x < region.right and ch.strip():
                style = seg.style
                worst = min(worst, contrast(Color.from_rich_color(style.color),
                                             Color.from_rich_color(style.bgcolor)))
            x += 1
    return worst


@pytest.mark.parametrize("theme", ["kdtui-dark", "kdtui-light", "ansi-dark"])
async def test_start_pressed_twice_checks_once_and_the_button_says_so(runs_dir, monkeypatch,
                                                                     wait_for, theme):
    # the real check, held until the test has pressed twice (a loaded machine's slow check)
    release = threading.Event()
    calls: list[str] = []
    check = LocalLauncher.check

    def slow_check(self):
        calls.append(self.config.run_name)
        release.wait(30)
        return check(self)

    monkeypatch.setattr(LocalLauncher, "check", slow_check)
    app = KDApp(runs_dir=runs_dir, theme=theme)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await _form(pilot)
        await pilot.press("f2")
        form.query_one("#dry_run", Switch).value = True
        await pilot.pause()
        app.clear_notifications()
        start = form.query_one("#start", Button)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: calls, 10)
        assert start.disabled and "Checking" in str(start.label)  # before: no sign at all
        # the label whole in the compact button ('Checking the run…' showed 'Checking the')
        assert len(str(start.label)) + 2 <= start.region.width
        await pilot.pause(0.3)
        # readable: a disabled button's faded label was 1.5:1 (light), 2.2:1 (dark); an ANSI
        # theme's took a border and three rows, its label drawn off the bar
        row = "".join(seg.text for seg in app.screen._compositor.render_strips()[start.region.y])
        assert start.region.height == 1 and "Checking…" in row
        if not app.current_theme.ansi:
            assert _label_contrast(app, start) >= 4.5
        await pilot.press("ctrl+r")
        await pilot.pause(0.2)
        assert any("Already starting: checking the run" in str(n.message)
                   for n in app._notifications)
        release.set()
        await wait_for(pilot, lambda: isinstance(app.screen, PlanScreen), 30)
        assert len(calls) == 1  # one check, one plan
        await pilot.press("escape")
        assert app.screen is form
        assert not start.disabled and str(start.label) == START_LABEL
        assert not any(runs_dir.iterdir())  # a dry run wrote nothing


async def test_a_refused_start_gives_the_start_button_back(runs_dir, wait_for):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await _form(pilot)
        await pilot.press("f2")
        # valid as typed, refused by the engine's check: a teacher cache that is not there
        form.query_one("#field-teacher_cache", Input).value = str(runs_dir / "no-cache")
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: form.field_error("teacher_cache"), 60)
        start = form.query_one("#start", Button)
        await wait_for(pilot, lambda: not start.disabled, 10)
        assert str(start.label) == START_LABEL
        assert form.query_one("#field-teacher_cache", Input).value == str(runs_dir / "no-cache")
        assert app.focused is form.query_one("#field-teacher_cache")
