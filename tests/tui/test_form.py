"""The launch form: generated from kdengine.config, the CLI's own messages inline, remembered
values per host, the dry-run plan, hosts from ssh config, and the demo preset."""

from __future__ import annotations

import subprocess
import sys

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


async def test_invalid_value_shows_the_same_message_as_the_cli(runs_dir):
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
        assert message == "--steps: must be an integer >= 1 and <= 1000000000 (got 0)"
        assert message in cli.stderr
        await pilot.press("backspace", "5")
        await pilot.pause()
        assert screen.field_error("steps") == ""
        temperature = screen.query_one("#field-temperature", Input)
        temperature.value = "hot"
        await pilot.pause()
        assert screen.field_error("temperature") == "--temperature: must be a number (got 'hot')"


async def test_start_with_errors_starts_nothing_and_names_the_field(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.screen is screen  # still the form
        assert screen.field_error("teacher") == "--teacher: is required (give --teacher or use " \
            "--demo)"
        screen.query_one("#field-teacher", Input).value = "demo://teacher"
        screen.query_one("#field-student", Input).value = "demo://teacher"
        screen.query_one("#field-data", Input).value = "demo://python-stdlib"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert screen.field_error("student").startswith("--student: is the same model as the "
                                                        "teacher")
        screen.query_one("#field-student", Input).value = "/nonexistent/student"
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
        assert screen.field_error("student").startswith("--student: /nonexistent/student does "
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


async def test_last_values_are_remembered_per_host(runs_dir, isolated_kdtui):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        await pilot.press("f2")
        screen.query_one("#field-steps", Input).value = "123"
        screen.query_one("#dry_run", Switch).value = True
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
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
        for key, what in (("ctrl+r", "Start"), ("f2", "Demo preset"), ("f3", "Runs"),
                          ("ctrl+q", "Quit"), ("f8", "Screenshot")):
            assert key in text and what in text, (key, what)
