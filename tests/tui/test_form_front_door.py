"""The launch form as a new user drives it with the keyboard: Tab into a field and type over it,
fix what a refused Start points at, start again."""

from __future__ import annotations

from textual.widgets import Input

from kdtui.app import KDApp


async def test_tab_back_into_a_field_a_refused_start_focused_selects_its_text(runs_dir, wait_for):
    # the user is in steps, types 0, presses ctrl+r: refused, the focus stays on steps; they Tab
    # away and back: their Tab selects the text again, so the next key replaces it (it added to
    # it: '0' then '7' made steps '07')
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        await pilot.press("f2")
        steps = form.query_one("#field-steps", Input)
        steps.focus()
        await pilot.pause()
        await pilot.press("0", "ctrl+r")
        await wait_for(pilot, lambda: form.field_error("steps").startswith("steps: must be"), 10)
        assert app.focused is steps
        await pilot.press("tab")
        await pilot.pause()
        assert app.focused is form.query_one("#field-batch_size", Input)
        await pilot.press("shift+tab")
        await pilot.pause()
        assert app.focused is steps
        await pilot.press("7")
        await pilot.pause()
        assert steps.value == "7"
        assert list(runs_dir.iterdir()) == []
