"""`kdtui launch --config FILE` (audit 13): the file's paths get the check `kdengine train
--config FILE` gives them, in every way kdtui launches (headless, the dashboard, a cache job,
apr), as one line and exit 2 before anything starts."""

from __future__ import annotations

import pytest

from kdtui.cli import main


def _refusal(capsys: pytest.CaptureFixture[str], code: int) -> str:
    out = capsys.readouterr()
    assert code == 2, out.err
    assert "Traceback" not in out.err and out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    return lines[0]


@pytest.mark.parametrize("how", [["--headless"], [], ["--cache-teacher", "--headless"],
                                 ["--cache-teacher"], ["--headless", "--dry-run"],
                                 ["--profile", "apr", "--host", "gpu-box", "--headless"]],
                         ids=["headless", "dashboard", "cache-headless", "cache-dashboard",
                              "dry-run", "apr"])
def test_audit13_a_config_file_s_path_beside_the_file_is_refused_as_kdengine_refuses_it(
        how, tmp_path, monkeypatch, capsys, runs_dir):
    """A project folder holds run.toml and its models and data; the user runs `kdtui launch
    --config proj/run.toml` from its parent. `kdengine train --config` says at once that
    `in/teacher` is read from the working directory and the file's folder has it; kdtui let it
    pass for a hub id, and the check (after a second) said '--teacher: in/teacher is no folder
    in the working directory ... not in the local hub cache', a flag the user never typed."""
    proj = tmp_path / "proj"
    for name in ("teacher", "student"):
        (proj / "in" / name).mkdir(parents=True)
        (proj / "in" / name / "config.json").write_text("{}")
    (proj / "in" / "data.txt").write_text("text\n")
    config = proj / "run.toml"
    config.write_text('teacher = "in/teacher"\nstudent = "in/student"\n'
                      'data = "in/data.txt"\nsteps = 2\n')
    monkeypatch.chdir(tmp_path)
    line = _refusal(capsys, main(["launch", *how, "--config", "proj/run.toml"]))
    assert line.startswith("kdtui launch: error: teacher in proj/run.toml: in/teacher is read "
                           f"from the working directory ({tmp_path})"), line
    assert f"write it as {proj / 'in' / 'teacher'} in proj/run.toml" in line, line
    # the same words as the engine's own refusal, after its prefix
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
    from kdengine.cli import main as engine_main

    capsys.readouterr()
    assert engine_main(["train", "--check", "--config", "proj/run.toml"]) == 2
    engine_line = capsys.readouterr().err.strip()
    assert line.split(": error: ", 1)[1] == engine_line.split(": error: ", 1)[1]


def test_audit13_a_flag_over_the_file_s_path_is_not_refused_for_it(tmp_path, monkeypatch,
                                                                   capsys, runs_dir):
    """The flag names the teacher: the file's misplaced one is not read, as in kdengine."""
    proj = tmp_path / "proj"
    (proj / "in" / "teacher").mkdir(parents=True)
    config = proj / "run.toml"
    config.write_text('teacher = "in/teacher"\nstudent = "s"\ndata = "d"\nsteps = 2\n')
    monkeypatch.chdir(tmp_path)
    code = main(["launch", "--headless", "--dry-run", "--config", "proj/run.toml",
                 "--teacher", "org/teacher"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "teacher = 'org/teacher'" in out.out


def test_audit13_a_cache_job_s_run_dir_refusal_names_run_dir_not_the_engine_s_out(
        tiny_run_inputs, tmp_path, capsys, runs_dir):
    """`kdtui launch --cache-teacher --run-dir FILE/x` was refused as '--out: FILE is a file,
    not a directory ...; pick another --out', a flag kdtui launch does not take (the job's
    --out is the run directory kdtui gives it)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code = main(["launch", "--cache-teacher", "--headless", "--teacher",
                 tiny_run_inputs["teacher"], "--data", tiny_run_inputs["data"],
                 "--seq-len", "32", "--run-dir", str(a_file / "job")])
    out = capsys.readouterr()
    assert code == 2, out
    said = out.out + out.err
    assert f"--run-dir: {a_file} is a file, not a directory" in said, said
    assert "--out" not in said and "pick another --run-dir" in said, said
    assert not (a_file.parent / "job").exists()
