"""A run directory (or cache-teacher's --out) that cannot be made is refused like any bad
input: exit 2, one line naming what picked the directory (--run-dir, KDENGINE_RUNS_DIR,
--run-name, kdtui's --runs-dir, --out) and the fix, before anything is created, by `--check`
too, and by kdtui's headless launch."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from file_modes import modes_apply  # noqa: E402

DEMO = ["train", "--demo", "--steps", "5", "--warmup-steps", "1"]


def _engine(*argv: str, runs_dir: Path | None = None,
            modes: bool = False) -> subprocess.CompletedProcess[str]:
    """`python -m kdengine argv`; `modes`: with file modes binding it, as root too
    (tests/file_modes.py)."""
    env = dict(os.environ)
    if runs_dir is not None:
        env["KDENGINE_RUNS_DIR"] = str(runs_dir)
    return subprocess.run([sys.executable, "-m", "kdengine", *argv], capture_output=True,
                          text=True, timeout=120, env=env, **(modes_apply() if modes else {}))




@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_a_run_dir_under_a_file_is_refused_with_one_line_naming_run_dir(
        a_file, check, one_line_refusal) -> None:
    run_dir = a_file / "y"
    done = _engine(*DEMO, "--run-dir", str(run_dir), *(["--check"] if check else []))
    line = one_line_refusal(done, "train", "--run-dir: ")
    assert f"{a_file} is a file, not a directory" in line and "pick another --run-dir" in line
    assert done.stdout == "" and a_file.read_text() == "not a directory\n"


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_a_runs_dir_that_is_a_file_is_refused_with_one_line_naming_the_variable(
        a_file, check, one_line_refusal) -> None:
    done = _engine(*DEMO, *(["--check"] if check else []), runs_dir=a_file)
    line = one_line_refusal(done, "train", "KDENGINE_RUNS_DIR: ")
    assert f"{a_file} is a file, not a directory" in line
    assert "set KDENGINE_RUNS_DIR to a directory you can write" in line


def test_a_runs_dir_under_a_file_is_refused_naming_the_variable(a_file, one_line_refusal) -> None:
    done = _engine(*DEMO, "--check", runs_dir=a_file / "runs")
    line = one_line_refusal(done, "train", "KDENGINE_RUNS_DIR: ")
    assert f"{a_file} is a file, not a directory (on the path to {a_file / 'runs'})" in line


def test_an_existing_run_dir_that_is_a_file_is_refused(a_file, one_line_refusal) -> None:
    done = _engine(*DEMO, "--check", "--run-dir", str(a_file))
    assert f"{a_file} is a file, not a directory;" in one_line_refusal(done, "train", "--run-dir: ")


def test_a_run_name_that_is_a_file_in_the_runs_dir_names_run_name(a_file, one_line_refusal) -> None:
    done = _engine(*DEMO, "--check", "--run-name", a_file.name, runs_dir=a_file.parent)
    line = one_line_refusal(done, "train", "--run-name: ")
    assert "pick another --run-name" in line


def test_a_run_dir_through_a_broken_symlink_is_refused(tmp_path, one_line_refusal) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    done = _engine(*DEMO, "--check", "--run-dir", str(tmp_path / "link" / "run"))
    assert "is a broken symlink, not a directory" in one_line_refusal(done, "train", "--run-dir: ")


# each command that makes a directory, the flag that names it, and a name under its parent
MAKERS = {"train": (DEMO, "--run-dir", "run"),
          "cache-teacher": (["cache-teacher", "--teacher", "demo://teacher", "--data",
                             "demo://python-stdlib", "--device", "cpu", "--seq-len", "64"],
                            "--out", "c")}
each_maker = pytest.mark.parametrize("command", list(MAKERS))


@each_maker
def test_a_directory_under_a_read_only_parent_is_refused(
        tmp_path, command, one_line_refusal) -> None:
    argv, flag, name = MAKERS[command]
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        done = _engine(*argv, "--check", flag, str(parent / name), modes=True)
        line = one_line_refusal(done, command, f"{flag}: ")
        assert f"{parent / name} cannot be created: {parent} is not writable" in line
    finally:
        parent.chmod(0o755)


@each_maker
def test_a_good_directory_under_a_missing_parent_passes_check_and_is_not_made(
        tmp_path, command, engine_in_process) -> None:
    argv, flag, name = MAKERS[command]
    # (in this process: cache-teacher's check imports torch, 1.5 s a new interpreter)
    done = engine_in_process(*argv, "--check", flag, str(tmp_path / "a" / "b" / name))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "a").exists()


@each_maker
def test_a_directory_where_the_filesystem_refuses_new_ones_is_refused(
        command, one_line_refusal, engine_in_process) -> None:
    # /proc takes no new directory, though root's access(W_OK) says yes: the check makes one
    argv, flag, _ = MAKERS[command]
    done = engine_in_process(*argv, "--check", flag, "/proc/nope")
    line = one_line_refusal(done, command, f"{flag}: ")
    assert "/proc/nope cannot be created" in line and line.endswith(f"pick another {flag}")


@each_maker
def test_the_check_leaves_nothing_beside_the_directory(tmp_path, command,
                                                       engine_in_process) -> None:
    argv, flag, name = MAKERS[command]
    (tmp_path / "parent").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    done = engine_in_process(*argv, "--check", flag, str(tmp_path / "parent" / name))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list((tmp_path / "parent").iterdir()) == []


@each_maker
def test_a_directory_that_fails_to_be_made_after_the_check_is_one_line_exit_2(
        a_file, monkeypatch, capsys, command) -> None:
    # the path changed between the check and the mkdir: the mkdir's own error, as one line
    import kdengine.preflight
    from kdengine.cli import main

    argv, flag, name = MAKERS[command]
    monkeypatch.setattr(kdengine.preflight, "check_run_dir", lambda *args: None)
    code = main([*argv, flag, str(a_file / name)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"kdengine {command}: error: {flag}: cannot create {a_file / name}: "
                          "Not a directory")
    assert err.rstrip().endswith(f"pick another {flag}")


def _kdtui(*argv: str, runs_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KDENGINE_RUNS_DIR": str(runs_dir)}
    return subprocess.run([sys.executable, "-m", "kdtui", *argv], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize(("argv", "runs_dir", "said"), [
    (["launch", "--headless", *DEMO[1:], "--run-dir", "{file}/y"], "{tmp}", "--run-dir: "),
    (["launch", "--headless", *DEMO[1:]], "{file}", "KDENGINE_RUNS_DIR: "),
    (["--runs-dir", "{file}", "launch", "--headless", *DEMO[1:]], "{tmp}", "--runs-dir: "),
], ids=["run-dir", "KDENGINE_RUNS_DIR", "runs-dir"])
def test_kdtui_headless_launch_refuses_a_run_dir_under_a_file_naming_what_picked_it(
        a_file, argv, runs_dir, said) -> None:
    def fill(text: str) -> str:
        return text.format(file=a_file, tmp=a_file.parent)

    done = _kdtui(*map(fill, argv), runs_dir=Path(fill(runs_dir)))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, done.stdout
    assert errors[0].startswith(f"ERROR: {said}{a_file} is a file, not a directory")
    assert a_file.read_text() == "not a directory\n"


def test_kdtui_start_turns_a_failed_mkdir_into_the_fields_launch_error(a_file) -> None:
    from kdengine.config import demo_config
    from kdtui.launch.local import LaunchError, LocalLauncher

    launcher = LocalLauncher(demo_config(run_dir=str(a_file / "y")), a_file.parent)
    launcher.check = lambda: None  # the path changed after the check passed
    stages: list = []
    with pytest.raises(LaunchError) as caught:
        asyncio.run(launcher.start(stages.append))
    assert caught.value.field == "run_dir"
    assert str(caught.value).startswith(f"--run-dir: cannot create {a_file / 'y'}: "
                                        "Not a directory")
    assert stages[-1].stage == "start" and stages[-1].state == "failed"
