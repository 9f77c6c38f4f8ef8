"""The launcher's words the audit-14 helpers left (audit 15): the form's demo preset with another
teacher blamed max_new_tokens, as `kdengine train --demo --teacher DIR` did; apr's teacher ==
student fix named a key on the command line; `kdtui launch` said `config:` where the engine says
`--config:`, and `--student:` for a student a --config file set."""

from __future__ import annotations

import pytest

from kdtui.cli import main as kdtui_main


def _line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and "Traceback" not in out.err, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    return lines[0]


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


# -- 2. apr's teacher == student fix, on its command line -------------------------------------
def test_apr_plan_names_the_allow_same_teacher_student_flag() -> None:
    from kdengine.config import ConfigError, RunConfig
    from kdtui.profiles.apr.schema import AprSettings, build_invocation
    from kdtui.screens.launch import form_error_text

    same = RunConfig(teacher="/m/t.apr", student="/m/t.apr", run_dir="/r")
    with pytest.raises(ConfigError) as refused:
        build_invocation(same, AprSettings())
    assert refused.value.message.endswith("pick another student or set "
                                          "--allow-same-teacher-student"), refused.value.message
    # the form says its field, as it says every flag
    assert form_error_text(refused.value).endswith("set allow_same_teacher_student")


# -- 3. kdtui launch: --config's own refusal, a file's value -----------------------------------
@pytest.mark.parametrize("argv", [
    ["launch", "--headless", "--dry-run"],
    ["launch"],  # the form's prefill: said before the dashboard
    ["launch", "--profile", "apr", "--headless", "--dry-run"],
])
def test_kdtui_launch_names_an_unreadable_config_by_its_flag(capsys, tmp_path, argv) -> None:
    missing = tmp_path / "nosuch.toml"
    line = _line(capsys, kdtui_main([*argv, "--config", str(missing)]))
    assert line == (f"kdtui launch: error: --config: cannot read {missing}: No such file or "
                    "directory")


@pytest.mark.parametrize("profile", [[], ["--profile", "apr"]])
def test_a_headless_launch_names_a_file_set_student_as_the_file_spells_it(
        capsys, tmp_path, profile) -> None:
    model = tmp_path / "m"
    model.mkdir()
    run = tmp_path / "run.toml"
    run.write_text(f'teacher = "{model}"\nstudent = "{model}"\ndata = "demo://python-stdlib"\n')
    argv = ["launch", "--headless", "--dry-run", *profile, "--config", str(run)]
    assert _line(capsys, kdtui_main(argv)) == (
        f"kdtui launch: error: student in {run}: is the same model as the teacher, so the KD "
        f"signal is zero; pick another student or set allow_same_teacher_student = true in {run}")
    # a flag over the file's: the flag, and the flag's fix
    assert _line(capsys, kdtui_main([*argv, "--student", str(model)])) == (
        "kdtui launch: error: --student: is the same model as the teacher, so the KD signal is "
        "zero; pick another student or set --allow-same-teacher-student")
