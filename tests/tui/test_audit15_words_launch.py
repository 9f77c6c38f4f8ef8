"""The launcher's words the audit-14 helpers left (audit 15): the form's demo preset with another
teacher blamed max_new_tokens, as `kdengine train --demo --teacher DIR` did; apr's teacher ==
student fix named a key on the command line; `kdtui launch` said `config:` where the engine says
`--config:`, and `--student:` for a student a --config file set."""

from __future__ import annotations


# -- 1. the form: F2, then their own teacher --------------------------------------------------
async def test_the_demo_preset_with_another_teacher_does_not_blame_max_new_tokens(
        runs_dir, tmp_path, wait_for) -> None:
    from textual.widgets import Input

    from kdtui.app import KDApp
    from kdtui.screens.launch import LaunchScreen

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(100, 40)) as pilot:
        form = app.screen
        await wait_for(pilot, lambda: isinstance(form, LaunchScreen) and form.form_ready)
        await pilot.press("f2")
        await pilot.pause()
        form.query_one("#field-teacher", Input).value = str(tmp_path / "my-teacher")
        await pilot.pause()
        config = form.collect_config()  # Start's check (the sources' check comes after)
        await pilot.pause()
        toasts = [str(n.message) for n in app._notifications if n.title == "Invalid run"]
        assert toasts == [] and form.field_error("max_new_tokens") == "", toasts
        assert config is not None and config.max_new_tokens == 64  # the preset's, kept
