"""The dashboard's loose ends audit 13 left (audit 14): a bad --theme refused before the app
starts and a bad saved one named with its file; the form's toasts gone once the form is left or
mended; a --config file's key named as the file spells it when the check refuses it; and
`"notifications": false` keeping a run's end silent."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kdtui.app import DEFAULT_THEME, KDApp
from kdtui.cli import main as kdtui_main
from kdtui.screens.launch import DEMO_PRESET_NOTE, LaunchScreen
from kdtui.screens.run import RunScreen
from kdtui.settings import SETTINGS_FILE, Settings


def _one_line(capsys: pytest.CaptureFixture[str], code: int, prog: str) -> str:
    out = capsys.readouterr()
    assert code == 2, out.err
    assert out.out == "" and "Traceback" not in out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


# -- 1. themes -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, prog", [
    (["--theme", "nosuch"], "kdtui"),
    (["runs", "--theme", "nosuch"], "kdtui runs"),
    (["--theme", "nosuch", "watch", "somerun"], "kdtui watch"),
])
def test_audit14_an_unknown_theme_flag_is_refused_before_the_dashboard_starts(
        capsys, runs_dir, argv, prog):
    line = _one_line(capsys, kdtui_main(argv), prog)
    assert "--theme nosuch: no such theme" in line
    for name in ("kdtui-dark", "kdtui-light", "kdtui-high-contrast", "textual-dark", "nord"):
        assert name in line  # kdtui's themes and Textual's
    assert "(kdtui's)" in line and "(Textual's)" in line
    assert f"--theme {DEFAULT_THEME}" in line  # the fix
    assert not Settings.load().path.exists()  # nothing remembered of it


def test_audit14_a_known_theme_flag_still_passes_the_check(capsys, runs_dir):
    # `kdtui runs --plain` opens no dashboard: the theme is checked, then the list printed
    assert kdtui_main(["--theme", "kdtui-light", "runs", "--plain"]) == 0
    assert kdtui_main(["runs", "--plain", "--theme", "nord"]) == 0
    assert "error" not in capsys.readouterr().err


async def test_audit14_a_saved_unknown_theme_opens_the_default_and_names_the_file_and_key(
        runs_dir):
    path = Path(os.environ["KDTUI_CONFIG_DIR"]) / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"theme": "gone-theme", "notifications": True}))
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.theme == DEFAULT_THEME
        errors = [str(n.message) for n in app._notifications if n.severity == "error"]
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"{path}: \"theme\" is 'gone-theme', no theme kdtui knows; "
                                    f"{DEFAULT_THEME} is used"), errors[0]
        assert errors[0].endswith("Pick one with ctrl+p, 'theme' (remembered there)")


# -- 2. the form's toasts --------------------------------------------------------------------
def _form_toasts(app: KDApp) -> list[str]:
    return [str(n.message) for n in app._notifications
            if n.title == "Invalid run" or str(n.message).startswith(DEMO_PRESET_NOTE)]


async def test_audit14_the_demo_toast_goes_when_the_form_is_left_for_a_run(
        runs_dir, write_run, wait_for):
    run = write_run(runs_dir / "shown", steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.form_ready)
        await pilot.press("f2")
        await pilot.pause()
        assert any(m.startswith(DEMO_PRESET_NOTE) for m in _form_toasts(app))
        app.open_run(str(run))  # as a Start shows the run screen: pushed over the form
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.pause()
        assert _form_toasts(app) == []
        # and the runs list (F3) from the form
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen))
        await pilot.press("f2")
        await pilot.pause()
        await pilot.press("f3")
        await wait_for(pilot, lambda: not isinstance(app.screen, LaunchScreen))
        await pilot.pause()
        assert _form_toasts(app) == []


async def test_audit14_invalid_run_goes_once_every_field_it_names_is_mended(runs_dir, wait_for):
    from textual.widgets import Input

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        form = app.screen
        await wait_for(pilot, lambda: isinstance(form, LaunchScreen) and form.form_ready)
        await pilot.press("f2")  # every field valid, then two broken
        await pilot.pause()
        form.query_one("#field-steps", Input).value = "0"
        form.query_one("#field-lr", Input).value = "x"
        await pilot.pause()
        await pilot.press("ctrl+r")
        await pilot.pause()
        invalid = _form_toasts(app)
        assert len(invalid) == 1 and invalid[0].startswith("2 fields to fix: steps, lr"), invalid
        form.query_one("#field-steps", Input).value = "10"
        await pilot.pause()
        assert len(_form_toasts(app)) == 1  # lr still wrong: the toast stays
        form.query_one("#field-lr", Input).value = "1e-3"
        await pilot.pause()
        assert form.field_error("lr") == "" and form.field_error("steps") == ""
        assert _form_toasts(app) == []


# -- 3. a --config file's key, refused at the check ------------------------------------------
def test_audit14_a_headless_check_names_a_config_file_key_as_the_file_spells_it(
        capsys, runs_dir, tmp_path):
    missing = tmp_path / "no-teacher-here"
    config = tmp_path / "run.toml"
    config.write_text(f'teacher = "{missing}"\nstudent = "demo://student"\n'
                      'data = "demo://python-stdlib"\nsteps = 2\n')
    assert kdtui_main(["launch", "--headless", "--config", str(config)]) == 2
    out = capsys.readouterr().out
    said = f"teacher in {config}: {missing} does not exist"
    assert "[check] failed" in out and f"on local: {said}" in out, out
    assert f"ERROR: {said}" in out
    assert "--teacher" not in out
    assert not any(runs_dir.iterdir())  # no run directory of a run that never was
    # a flag over the file's value is the flag's: named as the flag
    assert kdtui_main(["launch", "--headless", "--config", str(config),
                       "--teacher", str(missing)]) == 2
    assert f"ERROR: --teacher: {missing} does not exist" in capsys.readouterr().out


def test_audit14_a_remote_check_s_refusal_of_a_file_key_is_named_as_the_file_spells_it(
        tmp_path):
    from kdtui.cli import build_parser
    from kdtui.headless import as_spelled, file_spellings

    config = tmp_path / "run.toml"
    config.write_text('teacher = "org/t"\nstudent = "org/s"\ndata = "d.jsonl"\njsd_beta = 0.3\n')
    args = build_parser().parse_args(["launch", "--headless", "--config", str(config),
                                      "--data", "other.jsonl"])
    spellings = file_spellings(args, environ={})
    line = "the engine on gpu1 refused the run: --teacher: org/t is not on the box"
    assert as_spelled(line, spellings) == \
        f"the engine on gpu1 refused the run: teacher in {config}: org/t is not on the box"
    assert as_spelled("--beta: must be in (0, 1)", spellings) == \
        f"jsd_beta in {config}: must be in (0, 1)"  # its older name, as the file has it
    assert as_spelled("--data: d does not exist", spellings) == "--data: d does not exist"


# -- 4. notifications: false ------------------------------------------------------------------
def _settings(notifications: bool) -> None:
    path = Path(os.environ["KDTUI_CONFIG_DIR"]) / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"notifications": notifications}))


@pytest.mark.parametrize("notifications", [True, False])
async def test_audit14_notifications_false_sends_nothing_when_a_run_ends(
        runs_dir, write_run, wait_for, monkeypatch, notifications):
    """A run ending on screen: with notifications on, the terminal gets the OSC 9 sequence;
    with `"notifications": false` in settings.json, no OSC 9/777 sequence and no bell."""
    monkeypatch.setenv("TERM_PROGRAM", "WezTerm")  # an OSC 9 terminal
    monkeypatch.delenv("TMUX", raising=False)
    _settings(notifications)
    run = write_run(runs_dir / "ending", steps=20, upto=10, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(80, 24)) as pilot:
        written: list[str] = []
        driver_write = app._driver.write
        app._driver.write = lambda data: (written.append(data), driver_write(data))[1]
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.pause(0.3)
        with (run / "events.jsonl").open("a") as events:
            events.write(json.dumps({"v": 1, "seq": 10_000, "t": time.time(),
                                     "type": "run_finished", "status": "failed",
                                     "exit_code": 1, "steps": 10}) + "\n")
        (run / "engine.pid").unlink()
        await wait_for(pilot, lambda: str(run) in app.announced or "ending" in app.announced,
                       timeout=15)
        await pilot.pause()
        sent = "".join(written)
        if notifications:
            assert "\x1b]9;kdtui: ending: failed\a" in sent
        else:
            assert "\x1b]9;" not in sent and "\x1b]777;" not in sent and "\a" not in sent
