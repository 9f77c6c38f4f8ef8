"""Start from the form as a user presses it: the engine's check takes seconds (a loaded laptop, a
remote host's wheel being built), so the Start button says what is under way and a second
ctrl+r is told so instead of starting the check again; a refused start gives the button back."""

from __future__ import annotations

import threading

from textual.widgets import Button, Input, Switch

from kdtui.app import KDApp
from kdtui.launch.local import LocalLauncher
from kdtui.screens.dialogs import PlanScreen

START_LABEL = "Start (ctrl+r)"


async def _form(pilot):
    while not pilot.app.screen.form_ready:
        await pilot.pause(0.05)
    await pilot.pause()
    return pilot.app.screen


async def test_start_pressed_twice_checks_once_and_the_button_says_so(runs_dir, monkeypatch,
                                                                     wait_for):
    # the real check, held until the test has pressed twice (a loaded machine's slow check)
    release = threading.Event()
    calls: list[str] = []
    check = LocalLauncher.check

    def slow_check(self):
        calls.append(self.config.run_name)
        release.wait(30)
        return check(self)

    monkeypatch.setattr(LocalLauncher, "check", slow_check)
    app = KDApp(runs_dir=runs_dir)
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
