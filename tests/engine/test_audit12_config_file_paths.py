"""Audit 12: a relative path in a --config file (teacher = "in/teacher") is read from the working
directory, as the same value given by a flag is (docs/hyperparameters.md says so now). Run from
another directory, `in/teacher` passed for a hub id: offline it was refused as 'not in the local
hub cache', online --check passed and the run failed at load. Now a path the file's folder has
but the working directory has not is refused at once, online too, saying where it was looked
for and the fix; a value found in neither says it was looked for in the working directory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_tiny_inputs  # noqa: E402


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: run.toml beside in/ (teacher, student, data), paths relative."""
    root = tmp_path_factory.mktemp("project")
    write_tiny_inputs(root / "in")
    (root / "run.toml").write_text('teacher = "in/teacher"\nstudent = "in/student"\n'
                                   'data = "in/data"\nsteps = 2\nseq_len = 32\nbatch_size = 4\n')
    return root


@pytest.mark.parametrize("offline", ["1", "0"])
def test_a_path_only_the_config_files_folder_has_is_refused_naming_both(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: str,
        engine_in_process, one_line_refusal) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)  # online, it passed for a hub id to download
    config = project / "run.toml"
    for check in (("--check",), ()):
        done = engine_in_process("train", "--config", str(config), "--run-name", "r", *check)
        line = one_line_refusal(done, "train", "")
        assert line == (f"kdengine train: error: teacher in {config}: in/teacher is read from "
                        f"the working directory ({elsewhere}), which has no in/teacher; the "
                        f"file's folder has it: write it as {project / 'in' / 'teacher'} in "
                        f"{config}, or run from {project}"), line
    assert not (tmp_path / "runs").exists()
    # a flag that sets it instead: the file's value is not read (the next one is named)
    done = engine_in_process("train", "--config", str(config), "--teacher",
                             str(project / "in" / "teacher"), "--check")
    assert one_line_refusal(done, "train", "").startswith(
        f"kdengine train: error: student in {config}: in/student is read from"), done.stderr


def test_the_same_file_from_its_own_folder_is_taken(project: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    engine_in_process) -> None:
    monkeypatch.chdir(project)
    done = engine_in_process("train", "--config", "run.toml", "--run-dir",
                             str(tmp_path / "run"), "--check")
    assert done.returncode == 0, done.stderr


def test_a_relative_path_found_nowhere_says_it_was_looked_for_in_the_working_directory(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_in_process,
        one_line_refusal) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.toml"
    shutil.copy(project / "run.toml", other)
    other.write_text(other.read_text().replace('"in/teacher"', '"zz/teacher"')
                     .replace('"in/', f'"{project}/in/'))
    line = one_line_refusal(engine_in_process("train", "--config", str(other), "--check"),
                            "train", "")
    # named as the file spells it (audit 14: it said '--teacher', a flag the user never typed)
    assert line == (f"kdengine train: error: teacher in {other}: zz/teacher is no folder in the "
                    "working "
                    f"directory ({tmp_path}) and is not in the local hub cache, and "
                    "HF_HUB_OFFLINE=1 forbids downloading it (a folder: give its path from "
                    "there, or an absolute one; a hub id: download it first, or unset "
                    "HF_HUB_OFFLINE)"), line
    line = one_line_refusal(engine_in_process("train", "--config", str(other), "--teacher",
                                              "./zz/teacher", "--check"), "train", "")
    assert line == ("kdengine train: error: --teacher: ./zz/teacher does not exist in the "
                    f"working directory ({tmp_path}) (give an HF-layout directory or a hub repo "
                    "id like org/name)"), line
    assert not (tmp_path / "runs").exists()


def test_a_relative_path_the_run_tries_to_download_says_no_folder_was_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, `zz/teacher` passes --check as a hub id to download; when the download fails at
    load, the refusal says it was no folder in the working directory either. The hub here is a
    closed local port (no network)."""
    import huggingface_hub.constants as constants

    from kdengine.config import ConfigError
    from kdengine.sources import resolve_model_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ConfigError) as refused:
        resolve_model_dir("zz/teacher", "teacher")
    assert refused.value.field == "teacher"
    assert refused.value.message.startswith(
        f"cannot download zz/teacher (no folder zz/teacher in the working directory "
        f"({tmp_path}) either): "), refused.value.message
    assert "\n" not in refused.value.message  # the hub's two lines, on one
