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


async def test_a_local_start_remembers_relative_model_and_data_paths_as_absolute(
        runs_dir, make_tiny_inputs, tmp_path, monkeypatch, wait_for):
    # getting-started: `kdtui launch --config run.toml` in the project (teacher = "models/...");
    # the next day `kdtui` from elsewhere opened the form on 'models/teacher', which named
    # nothing there (or another model of that name)
    from kdtui.screens.dialogs import PlanScreen
    from kdtui.settings import Settings

    project = tmp_path / "project"
    make_tiny_inputs(project)
    monkeypatch.chdir(project)
    typed = {"teacher": "teacher", "student": "./student", "data": "data",
             "teacher_cache": "", "steps": "20"}
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        for name, value in typed.items():
            form.query_one(f"#field-{name}", Input).value = value
        form.query_one("#dry_run").value = True
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, PlanScreen), 60)
        assert form.query_one("#field-teacher", Input).value == "teacher"  # the form: as typed
    remembered = Settings.load().values_for("local")
    assert remembered["teacher"] == str(project / "teacher")
    assert remembered["student"] == str(project / "student")
    assert remembered["data"] == str(project / "data")
    assert remembered["teacher_cache"] == "" and remembered["steps"] == "20"


async def test_the_error_of_the_field_being_typed_in_scrolls_into_view_at_80x24(runs_dir,
                                                                                 wait_for):
    # steps on the form's last row (clicked there, or left there by the scroll): typing 0 put
    # its error three rows further down, under the buttons: nothing said what was wrong
    from textual.containers import VerticalScroll
    from textual.widgets import Static

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        scroll = form.query_one("#form", VerticalScroll)
        steps = form.query_one("#field-steps", Input)
        steps.focus(scroll_visible=False)
        await pilot.pause()
        # the row's label line at the bottom of the view
        scroll.scroll_to(y=scroll.scroll_y + steps.region.y - scroll.region.bottom + 1,
                         animate=False)
        await pilot.pause()
        assert steps.region.bottom == scroll.region.bottom, (steps.region, scroll.region)
        await pilot.press("0")
        await wait_for(pilot, lambda: form.field_error("steps").startswith("steps: must be"), 10)
        await pilot.pause()
        error = form.query_one("#row-steps .field-error", Static)
        view = scroll.region
        assert error.region.height > 0 and view.contains_region(error.region), (error.region,
                                                                                view)
        assert steps.region.height > 0 and view.contains_region(steps.region)


async def test_a_refused_start_shows_the_first_invalid_fields_error_at_80x24(runs_dir, wait_for):
    from textual.containers import VerticalScroll
    from textual.widgets import Static

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        await pilot.press("f2")
        await pilot.pause()
        form.query_one("#field-steps", Input).value = "0"  # below the fold, the form at its top
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.focused is form.query_one("#field-steps"), 10)
        await pilot.pause()
        error = form.query_one("#row-steps .field-error", Static)
        view = form.query_one("#form", VerticalScroll).region
        assert error.region.height > 0 and view.contains_region(error.region), (error.region,
                                                                                view)


async def test_the_cache_dialog_shows_why_it_refuses_a_k(runs_dir, wait_for):
    # F4 with K 0 and Enter: the dialog stayed and said nothing (its error line was one of the
    # form's, hidden outside an invalid field's row)
    from textual.widgets import Static

    from kdtui.screens.cache_teacher import CacheTeacherDialog

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        await pilot.press("f2", "f4")
        await wait_for(pilot, lambda: isinstance(app.screen, CacheTeacherDialog), 10)
        dialog = app.screen
        await pilot.press("backspace", "0", "enter")
        await pilot.pause()
        assert isinstance(app.screen, CacheTeacherDialog)  # refused
        error = dialog.query_one("#cache-error", Static)
        assert str(error.render()) == "K: must be a whole number of at least 1 (got 0)"
        assert error.region.height > 0 and dialog.query_one("#cache-dialog").region.contains_region(
            error.region)
        assert list(runs_dir.iterdir()) == []


async def test_apr_start_without_a_host_shows_the_hosts_error_at_80x24(runs_dir, wait_for):
    # the host's error line is under its long help: at 80x24 it was out of sight, the toast
    # alone said it (and went)
    from textual.containers import VerticalScroll
    from textual.widgets import Select, Static

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        form.select_profile("apr")
        await wait_for(pilot, lambda: form.profile_ready("apr"), 30)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: form.host_error().startswith("host: "), 10)
        await pilot.pause()
        error = form.query_one("#row-host .field-error", Static)
        view = form.query_one("#form", VerticalScroll).region
        assert error.region.height > 0 and view.contains_region(error.region), (error.region,
                                                                                view)
        host = form.query_one("#host", Select)
        assert app.focused is host and view.contains_region(host.region)
