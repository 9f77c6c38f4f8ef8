"""Audit 14: refusals name a setting as the user gives it, wherever they gave it (a flag on the
command line, a key in a --config file, a field of the dashboard's form), and the value a fix
quotes is the one the run actually uses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdengine.cli import main
from kdengine.config import ConfigError, RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import one_line_in_process  # noqa: E402

SAME = "is the same model as the teacher, so the KD signal is zero; pick another student or set "


def _refusal(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> str:
    code = main(["train", "--check", "--run-dir", str(tmp_path / "run"), *argv])
    line = one_line_in_process(capsys, code, "train")
    assert not (tmp_path / "run").exists()
    return line.removeprefix("kdengine train: error: ")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def test_teacher_equal_to_student_by_flags_names_the_flag_that_allows_it(capsys, tmp_path):
    """It said 'set allow_same_teacher_student', a name the command line does not take."""
    line = _refusal(capsys, tmp_path, "--teacher", "m", "--student", "m", "--data", "d.txt")
    assert line == f"--student: {SAME}--allow-same-teacher-student", line


def test_teacher_equal_to_student_in_a_config_file_names_the_file_s_key(capsys, tmp_path):
    run = tmp_path / "run.toml"
    run.write_text('teacher = "m"\nstudent = "m"\ndata = "d.txt"\n')
    line = _refusal(capsys, tmp_path, "--config", str(run))
    assert line == f"student in {run}: {SAME}allow_same_teacher_student = true in {run}", line
    # the fix it names passes that rule
    RunConfig.from_file(run).with_values(allow_same_teacher_student=True).validate()


def test_the_same_directory_under_two_spellings_in_a_config_file_names_the_file_s_key(
        capsys, tmp_path, model_dir, monkeypatch):
    """The preflight's check (the same directory, or the same weights, under another name)."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run.toml"
    run.write_text(f'teacher = "{model_dir}"\nstudent = "./m"\ndata = "d.txt"\n')
    line = _refusal(capsys, tmp_path, "--config", str(run))
    assert line.startswith(f"student in {run}: {model_dir} is the same directory as the "
                           f"teacher {model_dir}, so the KD signal is zero"), line
    assert line.endswith("set allow_same_teacher_student = true in " + str(run)), line
    line = _refusal(capsys, tmp_path, "--teacher", str(model_dir), "--student", "./m",
                    "--data", "d.txt")
    assert line.startswith("--student: ") and line.endswith(
        "set --allow-same-teacher-student"), line


def test_teacher_equal_to_student_in_the_form_names_its_field():
    from kdtui.screens.launch import form_error_text

    with pytest.raises(ConfigError) as refused:
        RunConfig(teacher="m", student="m", data="d.txt").validate()
    assert form_error_text(refused.value) == f"student: {SAME}allow_same_teacher_student"


def test_an_unused_max_new_tokens_on_a_demo_run_quotes_the_demo_s_value(capsys, tmp_path):
    """`--demo --max-new-tokens 10` said 'leave it at its default (128)': the demo runs 64."""
    line = _refusal(capsys, tmp_path, "--demo", "--max-new-tokens", "10")
    assert line.endswith("or leave it at its default (the demo preset's 64)"), line
    line = _refusal(capsys, tmp_path, "--teacher", "t", "--student", "s", "--data", "d.txt",
                    "--max-new-tokens", "10")
    assert line.endswith("or leave it at its default (128)"), line
