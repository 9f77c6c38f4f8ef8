"""A run started with relative paths (`--teacher models/teacher --data data`) resumes from any
working directory: its config.json keeps them absolute. A run written before that, with its
paths as typed, still resumes from the directory it started in, and elsewhere is refused in one
line that names the field, the run's config.json and that directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _kdengine(argv: list[str], cwd: Path, launcher: list[str] | None = None,
              **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(launcher or [sys.executable, "-m", "kdengine"]), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_a_run_started_with_relative_paths_resumes_from_another_directory(
        tmp_path: Path, make_tiny_inputs, killed_at_step, one_line_refusal, engine_in_process,
        monkeypatch) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    make_tiny_inputs(work / "models")
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    started = _kdengine(["train", "--teacher", "models/teacher", "--student", "models/student",
                         "--data", "models/data", "--run-dir", str(run_dir), "--steps", "4",
                         "--batch-size", "2", "--seq-len", "32", "--eval-every", "0",
                         "--checkpoint-every", "2", "--device", "cpu"],
                        work, killed_at_step, KD_KILL_AT="3")
    assert started.returncode != 0
    assert (run_dir / "checkpoints" / "step-00000002" / "meta.json").exists()
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text())
    for name, typed in (("teacher", "models/teacher"), ("student", "models/student"),
                        ("data", "models/data")):
        assert config[name] == str(work / typed)

    # --check runs every check the resume makes before training: the models and data found
    # (the checks through kdengine.cli.main in this process, from the directory they name)
    monkeypatch.chdir(elsewhere)
    resumed = engine_in_process("train", "--resume", str(run_dir), "--check")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["config"]["teacher"] == str(work / "models/teacher")

    # a run from before: its paths as typed, relative to the directory it started in
    config.update(teacher="models/teacher", student="models/student", data="models/data")
    config_path.write_text(json.dumps(config))
    refused = engine_in_process("train", "--resume", str(run_dir), "--check")
    line = one_line_refusal(refused, "train", f"--resume: teacher in {config_path}: "
                            "models/teacher ")
    assert " (a path relative to the directory the run was started in: resume from there) (" \
        in line
    monkeypatch.chdir(work)
    checked = engine_in_process("train", "--resume", str(run_dir), "--check")
    assert checked.returncode == 0, checked.stderr


def test_cache_teacher_keeps_its_data_path_absolute(tmp_path: Path, monkeypatch) -> None:
    """The job's config.json, which a resume of the job rebuilds its command from."""
    from kdengine.teacher.command import plan

    (tmp_path / "notes.txt").write_text("def f(x):\n    return x\n" * 400)
    monkeypatch.chdir(tmp_path)
    job = plan(["--teacher", "demo://teacher", "--data", "notes.txt", "--out", "cache"])[0]
    assert (job.config.teacher, job.config.data) == ("demo://teacher",
                                                     str(tmp_path / "notes.txt"))


def test_the_dashboard_takes_an_echoed_absolute_path_for_the_relative_one_asked() -> None:
    from kdtui.launch.base import config_differences

    asked = {"teacher": "models/teacher", "data": "~/data.txt", "student": "org/student"}
    assert config_differences(asked, {"teacher": "/w/models/teacher",
                                      "data": "/home/u/data.txt", "student": "org/student"}) == []
    assert config_differences({"teacher": "models/teacher"}, {"teacher": "/w/models/other"})
