"""The cache dialog's K (audit 13): checked at each keystroke, as the form's fields are, so
its error never contradicts what the field holds."""

from __future__ import annotations

from textual.widgets import Input, Static

from kdtui.app import KDApp
from kdtui.screens.cache_teacher import CacheTeacherDialog


async def test_audit13_the_cache_dialog_s_k_error_goes_once_k_is_mended(runs_dir, wait_for):
    """F2, F4, K emptied and Enter: 'K: must be a whole number of at least 1 (got '')'. The
    user typed 4: the field said 4 and the error under it still said got ''; only Enter again
    took it down."""
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "form_ready", False))
        await pilot.press("f2", "f4")
        await wait_for(pilot, lambda: isinstance(app.screen, CacheTeacherDialog))
        dialog = app.screen
        error = dialog.query_one("#cache-error", Static)
        await pilot.press("backspace", "enter")  # the focus selected 64: one key empties it
        await pilot.pause()
        assert error.display and "got ''" in str(error.render()), str(error.render())
        await pilot.press("4")
        await pilot.pause()
        assert dialog.query_one("#cache-top-k", Input).value == "4"
        assert not error.display or not str(error.render()).strip(), str(error.render())
        await pilot.press("x")  # as the form's fields: a bad keystroke says so at once
        await pilot.pause()
        assert error.display and "got '4x'" in str(error.render()), str(error.render())
        await pilot.press("backspace")
        await pilot.pause()
        assert not error.display or not str(error.render()).strip()
        assert isinstance(app.screen, CacheTeacherDialog)  # nothing started by typing
