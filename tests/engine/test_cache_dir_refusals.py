"""The engine's cache directory (KDENGINE_CACHE, else the user's cache dir) and cache-teacher's
--out are refused like a run directory when they cannot be made or written: exit 2, one line
naming KDENGINE_CACHE or --out and the fix, before anything is created, by `--check` too (a
KDENGINE_CACHE that is a file used to pass --check and fail the demo run after ~85 s of teacher
training; an --out under a file passed --check and crashed the real run with a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from file_modes import modes_apply  # noqa: E402

DEMO = ["train", "--demo", "--steps", "5", "--warmup-steps", "1"]
CACHE_JOB = ["cache-teacher", "--teacher", "demo://teacher", "--data", "demo://python-stdlib",
             "--device", "cpu", "--seq-len", "64"]
FIX = "set KDENGINE_CACHE to a directory you can write"


def _engine(*argv: str, modes: bool = False,
            **env: str | None) -> subprocess.CompletedProcess[str]:
    """`python -m kdengine argv` with `env` changed (None: unset); `modes`: with file modes
    binding it, as root too (tests/file_modes.py)."""
    full = dict(os.environ)
    for name, value in env.items():
        if value is None:
            full.pop(name, None)
        else:
            full[name] = value
    return subprocess.run([sys.executable, "-m", "kdengine", *argv], capture_output=True,
                          text=True, timeout=120, env=full, **(modes_apply() if modes else {}))




def _in_process(engine_in_process, monkeypatch: pytest.MonkeyPatch, *argv: str,
                **env: str) -> subprocess.CompletedProcess[str]:
    """_engine's command through kdengine.cli.main in this process, `env` set for it
    (cache-teacher imports torch before its checks: 1.5 s a new interpreter)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return engine_in_process(*argv)


def _nothing_made(tmp_path: Path, a_file: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert a_file.read_text() == "not a directory\n"


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_train_refuses_a_kdengine_cache_that_is_or_is_under_a_file(
        tmp_path, a_file, check, under, one_line_refusal) -> None:
    cache = a_file / "cache" if under else a_file
    done = _engine(*DEMO, *(["--check"] if check else []), KDENGINE_CACHE=str(cache),
                   KDENGINE_RUNS_DIR=str(tmp_path / "runs"))
    line = one_line_refusal(done, "train", "KDENGINE_CACHE: ")
    where = f" (on the path to {cache})" if under else ""
    assert f"{a_file} is a file, not a directory{where}; {FIX}" in line
    _nothing_made(tmp_path, a_file)  # no runs dir, no run dir


def test_train_refuses_a_bad_cache_with_real_models_too(
        tmp_path, a_file, tiny_run_inputs, one_line_refusal) -> None:
    # the compile cache, the data's token cache and the CPU thread registry live there too
    done = _engine("train", "--teacher", str(tiny_run_inputs["teacher"]),
                   "--student", str(tiny_run_inputs["student"]),
                   "--data", str(tiny_run_inputs["data"]), "--check",
                   KDENGINE_CACHE=str(a_file), KDENGINE_RUNS_DIR=str(tmp_path / "runs"))
    assert FIX in one_line_refusal(done, "train", "KDENGINE_CACHE: ")
    assert not (tmp_path / "runs").exists() and a_file.read_text() == "not a directory\n"


def test_the_default_cache_dir_is_checked_and_named_by_kdengine_cache(
        tmp_path, a_file, one_line_refusal) -> None:
    # no KDENGINE_CACHE: the user's cache dir (XDG_CACHE_HOME/kdengine here) is the one checked
    done = _engine(*DEMO, "--check", KDENGINE_CACHE=None, XDG_CACHE_HOME=str(a_file),
                   KDENGINE_RUNS_DIR=str(tmp_path / "runs"))
    line = one_line_refusal(done, "train", "KDENGINE_CACHE: ")
    assert f"{a_file} is a file, not a directory (on the path to {a_file / 'kdengine'})" in line


@pytest.mark.parametrize("command", [DEMO, CACHE_JOB], ids=["train", "cache-teacher"])
def test_a_read_only_kdengine_cache_is_refused(tmp_path, command, one_line_refusal) -> None:
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        done = _engine(*command, "--check", modes=True, KDENGINE_CACHE=str(cache),
                       KDENGINE_RUNS_DIR=str(tmp_path / "runs"))
        line = one_line_refusal(done, command[0], "KDENGINE_CACHE: ")
        assert f"{cache} is not writable; {FIX}" in line
        assert not (tmp_path / "runs").exists()
    finally:
        cache.chmod(0o755)


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_cache_teacher_refuses_a_kdengine_cache_that_is_a_file(
        tmp_path, a_file, check, one_line_refusal, engine_in_process, monkeypatch) -> None:
    done = _in_process(engine_in_process, monkeypatch, *CACHE_JOB,
                       *(["--check"] if check else []), KDENGINE_CACHE=str(a_file))
    line = one_line_refusal(done, "cache-teacher", "KDENGINE_CACHE: ")
    assert f"{a_file} is a file, not a directory; {FIX}" in line
    _nothing_made(tmp_path, a_file)


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
@pytest.mark.parametrize("under", [True, False], ids=["under-a-file", "a-file"])
def test_cache_teacher_refuses_an_out_that_is_or_is_under_a_file(
        tmp_path, a_file, check, under, one_line_refusal, engine_in_process) -> None:
    out = a_file / "c" if under else a_file
    done = engine_in_process(*CACHE_JOB, "--out", str(out), *(["--check"] if check else []))
    line = one_line_refusal(done, "cache-teacher", "--out: ")
    where = f" (on the path to {out})" if under else ""
    assert f"{a_file} is a file, not a directory{where}; pick another --out" in line
    _nothing_made(tmp_path, a_file)


# (--out under a read-only parent, a good --out, a failed mkdir: test_run_dir_refusals.py)


def test_the_cache_root_resolves_without_torch_and_demo_keeps_its_name() -> None:
    done = subprocess.run([sys.executable, "-c", (
        "import sys, kdengine.cache_dir, kdengine.preflight, kdengine.teacher.command\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "kdengine.preflight.check_cache_root()\n"
        "from kdengine.demo import cache_root\n"
        "assert cache_root is kdengine.cache_dir.cache_root\n")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
