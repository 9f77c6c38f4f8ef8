"""The launch form: generated from kdengine.config, the CLI's own messages inline (worded for the
form: fields by their labels), every invalid field marked, remembered values per host (never a
run's identity), the dry-run plan, hosts from ssh config, and the demo preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from textual.widgets import Input, Select, Switch

from kdengine.config import FIELDS, demo_config
from kdtui.app import KDApp
from kdtui.screens.dialogs import PlanScreen
from kdtui.screens.launch import FieldRow, LaunchScreen
from kdtui.settings import Settings


async def test_form_has_a_widget_and_help_for_every_schema_field(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LaunchScreen)
        rows = {row.spec.name: row for row in screen.query(FieldRow)}
        assert list(rows) == [f.name for f in FIELDS]
        assert isinstance(screen.query_one("#field-loss"), Select)
        assert isinstance(screen.query_one("#field-allow_same_teacher_student"), Switch)
        assert isinstance(screen.query_one("#field-lr"), Input)


async def test_invalid_value_shows_the_cli_message_with_the_field_label(runs_dir):
    cli = subprocess.run([sys.executable, "-m", "kdengine", "train", "--demo", "--steps", "0",
                          "--check"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        steps = screen.query_one("#field-steps", Input)
        steps.focus()
        steps.value = ""
        await pilot.press("0")
        await pilot.pause()
        message = screen.field_error("steps")
        assert message == "steps: must be an integer >= 1 and <= 1000000000 (got 0)"
        # the engine's own words; the form names the field by its label, the CLI by its flag
        assert "error: --" + message in cli.stderr
        await pilot.press("backspace", "5")
        await pilot.pause()
        assert screen.field_error("steps") == ""
        temperature = screen.query_one("#field-temperature", Input)
        temperature.value = "hot"
        await pilot.pause()
        assert screen.field_error("temperature") == "temperature: must be a number (got 'hot')"


async def test_start_with_errors_starts_nothing_and_names_the_field(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.screen is screen  # still the form
        assert screen.field_error("teacher") == "teacher: is required: type a model folder or " \
            "hub id, or press F2 for the demo preset"
        screen.query_one("#field-teacher", Input).value = "demo://teacher"
        screen.query_one("#field-student", Input).value = "demo://teacher"
        screen.query_one("#field-data", Input).value = "demo://python-stdlib"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert screen.field_error("student").startswith("student: is the same model as the "
                                                        "teacher")
        screen.query_one("#field-student", Input).value = "/nonexistent/student"
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
        assert screen.field_error("student").startswith("student: /nonexistent/student does "
                                                        "not exist")
        assert list(runs_dir.iterdir()) == []


async def test_demo_preset_fills_the_form_and_dry_run_shows_the_plan(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        await pilot.press("f2")
        await pilot.pause()
        demo = demo_config()
        assert screen.query_one("#field-teacher", Input).value == demo.teacher
        assert screen.query_one("#field-steps", Input).value == str(demo.steps)
        screen.query_one("#field-run_name", Input).value = "dry"
        screen.query_one("#dry_run", Switch).value = True
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
        assert isinstance(app.screen, PlanScreen)
        plan = "\n".join(app.screen.lines)
        assert "-m kdengine train" in plan and "--steps 500" in plan
        assert "--run-dir " + str(runs_dir / "dry") in plan
        assert not (runs_dir / "dry").exists()  # a dry run touches nothing


async def test_last_values_are_remembered_per_host(runs_dir, isolated_kdtui, wait_for):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        await pilot.press("f2")
        screen.query_one("#field-steps", Input).value = "123"
        screen.query_one("#dry_run", Switch).value = True
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, PlanScreen), 10)  # saved before
    saved = Settings.load()
    assert saved.values_for("local")["steps"] == "123"
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert screen.query_one("#field-steps", Input).value == "123"
        assert screen.query_one("#field-teacher", Input).value == "demo://teacher"
        # another host has its own values (none yet): switching keeps the form as it is,
        # and switching back brings local's back
        assert "gpu-box" in screen.hosts
        screen.query_one("#field-steps", Input).value = "7"
        screen.query_one("#host", Select).value = "gpu-box"
        await pilot.pause()
        screen.query_one("#host", Select).value = "local"
        await pilot.pause()
        assert screen.query_one("#field-steps", Input).value == "123"


async def test_hosts_come_from_ssh_config_without_wildcards(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        assert app.screen.hosts == ["local", "gpu-box"]


async def test_remote_host_dry_run_shows_the_remote_plan(runs_dir, wait_for):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 10)
        screen = app.screen
        await pilot.press("f2")
        screen.query_one("#host", Select).value = "gpu-box"
        screen.query_one("#field-run_name", Input).value = "remote-dry"
        screen.query_one("#dry_run", Switch).value = True
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, PlanScreen), 120)
        plan = "\n".join(app.screen.lines)
        assert "gpu-box" in plan and "remote-dry" in plan
        assert not (runs_dir / "remote-dry").exists()


async def test_help_lists_the_keys_of_the_screen_beneath_and_of_the_app(runs_dir):
    from kdtui.app import KDApp
    from kdtui.screens.dialogs import HelpScreen

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(150, 44)) as pilot:
        await pilot.pause()
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = app.export_screenshot().replace("&#160;", " ")
        for key, what in (("^r", "Start"), ("f2", "Demo preset"), ("f3", "Runs"),
                          ("^q", "Quit"), ("f8", "Screenshot")):
            assert key in text and what in text, (key, what)
        assert "Move cursor" not in text  # Textual's text-field keys are not kdtui's


async def test_help_fits_80x24_and_scrolls_to_its_end(runs_dir, write_run, wait_for):
    from kdtui.screens.dialogs import HelpScreen

    write_run(runs_dir / "helped", steps=40)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="helped")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.query("LogView"), 30)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 10)
        await pilot.pause()
        dialog = app.screen.query_one(".dialog")
        assert dialog.region.width <= 80 and dialog.region.height <= 24
        text = app.export_screenshot().replace("&#160;", " ")
        assert "Esc, F1 or q closes" in text  # the whole frame is on screen
        assert "F8 saves an SVG" not in text  # the end is below: scroll to it with the keys
        await pilot.press("pagedown", "pagedown")
        await pilot.pause()
        text = app.export_screenshot().replace("&#160;", " ")
        assert "F8 saves an SVG" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), 10)


async def _type(pilot, text: str) -> None:
    for ch in text:
        await pilot.press(ch)


async def test_start_marks_every_invalid_field_and_names_them_all(runs_dir, wait_for):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        screen = app.screen
        for name, text in (("steps", "0"), ("warmup_steps", "x"), ("temperature", "hot")):
            screen.query_one(f"#field-{name}", Input).value = ""
            screen.query_one(f"#field-{name}", Input).focus()
            await _type(pilot, text)
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.screen is screen
        bad = ["teacher", "student", "data", "steps", "warmup_steps", "temperature"]
        for name in bad:
            assert screen.field_error(name).startswith(f"{name}: "), name
            assert screen.query_one(f"#row-{name}", FieldRow).has_class("-invalid")
        assert screen.field_error("lr") == ""
        summary = "\n".join(n.message for n in app._notifications)
        assert "6 fields to fix: " + ", ".join(bad) in summary
        assert app.focused is screen.query_one("#field-teacher")  # the first, to start with
        # the cross-field rules are all reported too, not only the first one broken
        await pilot.press("f2")
        screen.query_one("#field-student", Input).value = "demo://teacher"
        screen.query_one("#field-warmup_steps", Input).value = "900"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert screen.field_error("student").startswith("student: is the same model")
        assert screen.field_error("warmup_steps") == "warmup_steps: must be below steps (500) " \
            "(got 900)"
        assert list(runs_dir.iterdir()) == []


async def test_after_f2_typing_adds_to_the_field_instead_of_replacing_a_stale_selection(
        runs_dir, wait_for):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        screen = app.screen
        teacher = screen.query_one("#field-teacher", Input)
        await wait_for(pilot, lambda: app.focused is teacher, 10)
        await _type(pilot, "./mine")
        await pilot.press("tab")  # to student: Tab selects what is there (the user moved)
        await pilot.pause()
        student = screen.query_one("#field-student", Input)
        assert app.focused is student
        await pilot.press("f2")
        await pilot.pause()
        assert student.value == "demo://student"
        await _type(pilot, "-x")  # the F2 text is new: no selection of the old text eats a key
        await pilot.pause()
        assert student.value == "demo://student-x"
        await pilot.press("shift+tab")
        await pilot.pause()
        assert app.focused is teacher and teacher.value == "demo://teacher"
        await _type(pilot, "q")  # the user moved here with Tab: their selection, replaced
        assert teacher.value == "q"


async def test_form_focuses_remembered_text_without_selecting_it(runs_dir, wait_for):
    Settings.load().remember("local", {"teacher": "./kept"})
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        teacher = app.screen.query_one("#field-teacher", Input)
        await wait_for(pilot, lambda: app.focused is teacher, 10)
        await pilot.pause()
        await _type(pilot, "-2")
        assert teacher.value == "./kept-2"


async def test_start_twice_from_the_form_starts_two_runs(runs_dir, tiny_run_inputs, wait_for):
    from kdtui.screens.run import RunScreen

    tiny = dict(steps="400", batch_size="2", seq_len="16", eval_every="200", eval_batches="1",
                checkpoint_every="0", **tiny_run_inputs)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        for name, value in tiny.items():
            form.query_one(f"#field-{name}", Input).value = value
        form.query_one("#field-run_name", Input).focus()
        await _type(pilot, "first")
        started: list[str] = []
        for _ in range(2):
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 60)
            await wait_for(pilot, lambda: len(app.owned_runs) == len(started) + 1, 60)
            handle = app.owned_runs[-1]
            run_dir = Path(handle.run_dir)
            await wait_for(pilot, lambda d=run_dir: b'"run_started"' in _events(d), 240)
            started.append(run_dir.name)
            await pilot.press("escape")  # back to the form, the run goes on
            await wait_for(pilot, lambda: app.screen is form, 10)
            assert form.query_one("#field-run_name", Input).value == ""  # that run's name
            assert form.query_one("#field-run_dir", Input).value == ""
        assert started[0] == "first" and started[1].startswith("kd-")
        for handle in app.owned_runs:  # no engine left behind
            await handle.cancel()
        await wait_for(pilot, lambda: not any(h.is_alive() for h in app.owned_runs), 120)
    remembered = Settings.load().values_for("local")
    assert "run_name" not in remembered and "run_dir" not in remembered
    assert remembered["steps"] == "400"


def _events(run_dir) -> bytes:
    try:
        return (run_dir / "events.jsonl").read_bytes()
    except OSError:
        return b""


async def test_a_value_remembered_under_a_fields_old_name_comes_back_under_the_new(runs_dir,
                                                                                  wait_for):
    Settings.load().remember("local", {"jsd_beta": "0.7"})  # beta's name before the rename
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        await wait_for(pilot, lambda: bool(app.screen.query("#field-beta")), 30)
        await wait_for(pilot, lambda: app.screen.query_one("#field-beta", Input).value == "0.7",
                       30)
