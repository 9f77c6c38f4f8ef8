"""The launch form's engine choice: kdengine or apr distill, each with the fields of its own
schema, the messages of its own CLI, and apr started (or dry-run) exactly as
`kdtui launch --profile apr` starts it.

The end-to-end test reuses tests/profiles' fixtures (the real test sshd, the git repo whose
`apr` is built by cargo on the host and execs the stand-in), imported, not copied.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from textual.widgets import Input, Select, Switch

from kdtui.app import KDApp
from kdtui.profiles.apr.schema import NOT_APPLIED, form_fields
from kdtui.screens.dialogs import PlanScreen
from kdtui.screens.launch import (
    APR,
    APR_HOST_MISSING,
    KDENGINE,
    LOCAL,
    NO_HOST,
    FieldRow,
    LaunchScreen,
)
from kdtui.settings import Settings

_spec = importlib.util.spec_from_file_location(
    "kdtui_tests_profiles_conftest", Path(__file__).resolve().parents[1] / "profiles" /
    "conftest.py")
_profiles = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_profiles)
# the fixtures of tests/profiles/conftest.py (and through it tests/remote's sshd), used here
sshd, apr_repo, apr_work, apr_host = (_profiles.sshd, _profiles.apr_repo, _profiles.apr_work,
                                      _profiles.apr_host)

SIZE = (140, 48)


async def open_form(app: KDApp, pilot) -> LaunchScreen:
    deadline = time.monotonic() + 10
    while not (isinstance(app.screen, LaunchScreen) and app.screen.form_ready):
        assert time.monotonic() < deadline, "the form did not load"
        await pilot.pause(0.05)
    return app.screen


async def pick_profile(screen: LaunchScreen, pilot, profile: str) -> None:
    """Pick the engine in the form's select, as a user does, and wait for its rows."""
    screen.query_one("#profile", Select).value = profile
    deadline = time.monotonic() + 10
    while not (screen.profile == profile and screen.profile_ready(profile)):
        assert time.monotonic() < deadline, f"the {profile} form did not load"
        await pilot.pause(0.05)
    await pilot.pause()


def apr_input(screen: LaunchScreen, name: str) -> Input:
    return screen.query_one(f"#apr-field-{name}", Input)


async def test_switching_to_apr_shows_the_fields_of_its_schema_and_hides_kdengines(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(app, pilot)
        assert screen.query_one("#profile", Select).value == KDENGINE
        assert not screen.query("#apr-field-teacher")  # apr's rows mount when apr is picked
        await pick_profile(screen, pilot, APR)
        rows = [row.spec.name for row in screen.query(FieldRow) if row.profile == APR]
        assert rows == [f.name for f in form_fields()]  # generated from apr's schema, in order
        assert "steps_per_epoch" in rows and "git_ref" in rows
        assert not set(rows) & set(NOT_APPLIED)  # apr cannot take them: not offered
        assert screen.query_one("#apr-form").display
        assert not screen.query_one("#kdengine-form").display
        assert not screen.query_one("#row-fallback_host").display  # apr dispatch has none
        assert apr_input(screen, "teacher").region.area > 0
        assert screen.query_one("#field-teacher").region.area == 0
        assert isinstance(screen.query_one("#apr-field-build"), Switch)
        # apr runs on an SSH host only: 'local' is not offered, and the form says why
        host = screen.query_one("#host", Select)
        values = [value for _, value in host._options]
        assert LOCAL not in values and "gpu-box" in values and host.value == NO_HOST
        help_text = str(screen.query_one("#host-help").render())
        assert "'local' cannot run it" in help_text and "--backend cuda" in help_text
        await pick_profile(screen, pilot, KDENGINE)
        assert screen.query_one("#field-teacher").region.area > 0
        assert apr_input(screen, "teacher").region.area == 0
        assert [v for _, v in screen.query_one("#host", Select)._options][0] == LOCAL


def cli_errors(argvs: list[list[str]]) -> list[str]:
    """stderr of `kdtui launch --profile apr ...` for each argv, run side by side."""
    procs = [subprocess.Popen([sys.executable, "-m", "kdtui", "launch", "--profile", "apr",
                               *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in argvs]
    out = []
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        out.append(err)
    return out


async def test_a_bad_apr_value_shows_the_message_of_its_cli_on_that_field(runs_dir, tmp_path):
    models = ["--host", "gpu-box", "--teacher", "/m/t.apr", "--student", "/m/s.apr"]
    bad_settings = tmp_path / "apr.toml"
    bad_settings.write_text("steps_per_epoch = 0\n")
    cases = {  # field: (text typed in the form, the same value given to the CLI)
        "steps": ("0", ["--steps", "0"]),
        "device": ("cpu", ["--device", "cpu"]),
        "git_ref": ("-x", ["--apr-ref=-x"]),
        "steps_per_epoch": ("0", ["--apr-settings", str(bad_settings)]),
    }
    stderr = dict(zip(cases, cli_errors([models + argv for _, argv in cases.values()]),
                      strict=True))
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(app, pilot)
        await pick_profile(screen, pilot, APR)
        for name, (text, _) in cases.items():
            field = apr_input(screen, name)
            field.value = text
            await pilot.pause()
            message = screen.field_error(name, APR)
            assert message, name
            # the CLI's own words; the form names the field by its label, the CLI a run field
            # by its flag
            label, _, words = message.partition(": ")
            assert f": {words}\n" in stderr[name] and label == name, (message, stderr[name])
        assert screen.field_error("steps", APR) == \
            "steps: must be an integer >= 1 and <= 1000000000 (got 0)"
        assert screen.field_error("git_ref", APR).startswith("git_ref: must be a name")
        # the same steps text in kdengine's form is untouched: its own field, no error
        assert screen.query_one("#field-steps", Input).value == "500"
        apr_input(screen, "steps").value = "8"
        await pilot.pause()
        assert screen.field_error("steps", APR) == ""
        # Start with the errors left starts nothing and names the first bad field
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.screen is screen


async def test_switching_profiles_back_and_forth_keeps_what_was_typed_even_if_bad(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(app, pilot)
        screen.query_one("#field-teacher", Input).value = "./kd-teacher"
        screen.query_one("#field-steps", Input).value = "many"
        await pilot.pause()
        kd_error = screen.field_error("steps")
        assert kd_error.startswith("steps: must be an integer")
        await pick_profile(screen, pilot, APR)
        apr_input(screen, "teacher").value = "/models/t.apr"
        apr_input(screen, "steps").value = "-1"
        apr_input(screen, "git_ref").value = "v-test"
        screen.query_one("#host", Select).value = "gpu-box"
        await pilot.pause()
        apr_error = screen.field_error("steps", APR)
        assert apr_error
        for _ in range(2):
            await pick_profile(screen, pilot, KDENGINE)
            assert screen.query_one("#field-teacher", Input).value == "./kd-teacher"
            assert screen.query_one("#field-steps", Input).value == "many"
            assert screen.field_error("steps") == kd_error
            assert screen.query_one("#host", Select).value == LOCAL
            await pick_profile(screen, pilot, APR)
            assert apr_input(screen, "teacher").value == "/models/t.apr"
            assert apr_input(screen, "steps").value == "-1"
            assert screen.field_error("steps", APR) == apr_error
            assert apr_input(screen, "git_ref").value == "v-test"
            assert screen.query_one("#host", Select).value == "gpu-box"
        # the demo preset is kdengine's: F2 switches to it, and apr's values stay as typed
        await pilot.press("f2")
        await pilot.pause()
        assert screen.profile == KDENGINE
        assert screen.query_one("#field-teacher", Input).value == "demo://teacher"
        assert apr_input(screen, "teacher").value == "/models/t.apr"


async def test_apr_needs_an_ssh_host_and_start_without_one_says_why(runs_dir):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(app, pilot)
        await pick_profile(screen, pilot, APR)
        apr_input(screen, "teacher").value = "/m/t.apr"
        apr_input(screen, "student").value = "/m/s.apr"
        await pilot.press("ctrl+r")
        await pilot.pause(0.3)
        assert app.screen is screen
        assert screen.host_error() == APR_HOST_MISSING
        screen.query_one("#host", Select).value = "gpu-box"
        await pilot.pause()
        assert screen.host_error() == ""
        # the apr plan's own check (teacher == student) lands on its field
        apr_input(screen, "student").value = "/m/t.apr"
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
        assert screen.field_error("student", APR).startswith("student: is the same model")


async def test_apr_dry_run_in_the_form_is_the_plan_the_cli_prints(runs_dir, tmp_path, capsys):
    from kdtui.cli import main

    settings = tmp_path / "apr.toml"
    settings.write_text('repo_url = "/srv/aprender"\ngit_ref = "v-test"\nsteps_per_epoch = 4\n'
                        "build = false\n")
    assert main(["launch", "--headless", "--profile", "apr", "--host", "gpu-box", "--dry-run",
                 "--teacher", "hf://org/t/model.apr", "--student", "/m/s.apr", "--steps", "10",
                 "--temperature", "2.5", "--run-name", "apr-dry", "--apr-settings",
                 str(settings)]) == 0
    cli_plan = capsys.readouterr().out
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(app, pilot)
        await pick_profile(screen, pilot, APR)
        screen.query_one("#host", Select).value = "gpu-box"
        for name, text in (("teacher", "hf://org/t/model.apr"), ("student", "/m/s.apr"),
                           ("steps", "10"), ("temperature", "2.5"), ("run_name", "apr-dry"),
                           ("repo_url", "/srv/aprender"), ("git_ref", "v-test"),
                           ("steps_per_epoch", "4")):
            apr_input(screen, name).value = text
        screen.query_one("#apr-field-build", Switch).value = False
        screen.query_one("#dry_run", Switch).value = True
        await pilot.pause()
        await pilot.press("ctrl+r")
        deadline = time.monotonic() + 20
        while not isinstance(app.screen, PlanScreen):
            assert time.monotonic() < deadline, "no plan"
            await pilot.pause(0.1)
        assert "\n".join(app.screen.lines) + "\n" == cli_plan  # line for line
    assert "applied  steps=10 -> --epochs 3" in cli_plan and "gitsync" not in cli_plan
    # the profile is remembered with the host, and the form opens on it next time
    saved = Settings.load()
    assert saved.last_host == "gpu-box"
    assert saved.values_for("gpu-box")["profile"] == APR
    assert saved.values_for("gpu-box")[APR]["git_ref"] == "v-test"
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(app, pilot)
        deadline = time.monotonic() + 10
        while not screen.profile_ready(APR):
            assert time.monotonic() < deadline, "the remembered apr form did not open"
            await pilot.pause(0.05)
        assert screen.profile == APR
        assert screen.query_one("#profile", Select).value == APR
        assert screen.query_one("#host", Select).value == "gpu-box"
        assert apr_input(screen, "steps_per_epoch").value == "4"
        assert not screen.query_one("#apr-field-build", Switch).value


@pytest.mark.ssh
@pytest.mark.timeout(180)
async def test_start_with_apr_on_the_test_sshd_runs_it_in_the_run_screen(
        apr_host, apr_repo, tmp_path, monkeypatch, runs_dir):
    from kdtui.screens.run import RunScreen
    from kdtui.widgets.run_panels import StageTracker, VerdictPanel

    host = apr_host("normal", step_delay=0.1)
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path / "evidence"))
    name = f"apr-form-{uuid.uuid4().hex[:8]}"
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(150, 44)) as pilot:
        screen = await open_form(app, pilot)
        await pick_profile(screen, pilot, APR)
        screen.query_one("#host", Select).value = host
        for field, text in (("teacher", "hf://org/teacher/model.apr"), ("student", "org/student"),
                            ("steps", "8"), ("temperature", "2.0"), ("run_name", name),
                            ("repo_url", str(apr_repo)), ("git_ref", "v-test"),
                            ("steps_per_epoch", "4")):
            apr_input(screen, field).value = text
        await pilot.pause()
        await pilot.press("ctrl+r")
        deadline = time.monotonic() + 150
        while not (isinstance(app.screen, RunScreen)
                   and app.screen.query_one(VerdictPanel).status != "pending"):
            assert time.monotonic() < deadline, "the apr run did not finish"
            await pilot.pause(0.1)
        run = app.screen
        assert run.sub_title == f"{name} on {host} · completed"  # how it ended
        assert run.query_one(VerdictPanel).status == "pass"
        rows = run.query_one(StageTracker).rows
        assert all(rows[s].state == "done" for s in ("preflight", "sync", "check", "models",
                                                      "launch", "manifest"))
    manifest = tmp_path / "evidence" / name / "dispatch.json"
    assert manifest.exists()
    data = json.loads(manifest.read_text())
    assert data["profile"] == "apr" and data["apr_settings"]["steps_per_epoch"] == 4
    assert data["engine_command"][1:4] == ["distill", data["models"]["teacher"], "--student"]


def test_apr_form_snapshot_with_a_bad_value(snap_compare, runs_dir):
    async def apr_with_bad_steps(pilot):
        screen = await open_form(pilot.app, pilot)
        await pick_profile(screen, pilot, APR)
        apr_input(screen, "steps").value = "0"
        await pilot.pause()
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(KDApp(runs_dir=runs_dir), terminal_size=(150, 44),
                        run_before=apr_with_bad_steps)
