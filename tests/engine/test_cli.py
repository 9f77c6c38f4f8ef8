"""`kdengine train` as a user meets it: one-line errors, nothing half-written, the demo passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BAD_ARGS = [
    (["--demo", "--steps", "-3"], "--steps: must be an integer >= 1"),
    (["--demo", "--alpha", "2"], "--alpha: must be a number >= 0 and <= 1 (got 2)"),
    (["--demo", "--temperature", "0"], "--temperature: must be a number > 0"),
    (["--demo", "--batchsize", "8"], "unknown argument --batchsize"),
    (["--demo", "--data", "/no/such/corpus.txt"], "--data: /no/such/corpus.txt does not exist"),
    (["--teacher", "org/m", "--student", "org/m", "--data", "."],
     "--student: is the same model as the teacher"),
    (["--demo", "--warmup-steps", "600"],  # 500: the preset's steps, named so
     "--warmup-steps: must be below the --demo preset's steps (500) (got 600)"),
    (["--teacher", "demo://teacher"], "--student: is required"),
    (["--demo", "--teacher-dtype", "float4"], "--teacher-dtype: must be one of auto, float8"),
    (["--demo", "--student-matmuls", "bf8"], "--student-matmuls: must be one of auto, float8"),
    (["--student", "demo://student", "--data", "demo://python-stdlib", "--teacher-cache",
      "/no/cache", "--teacher-dtype", "float8"], "--teacher-dtype: float8 is for a live teacher"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, engine_cmd, args,
                                                            message) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run([*engine_cmd, "train", *args, "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert message in lines[0]
    assert not run_dir.exists()
    assert not (tmp_path / "runs").exists()


def test_check_prints_the_effective_config_and_touches_nothing(tmp_path, engine_cmd) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run([*engine_cmd, "train", "--demo", "--check", "--batch-size", "7",
                          "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["config"]["batch_size"] == 7 and report["run_dir"] == str(run_dir)
    assert not run_dir.exists()


def test_a_second_run_into_the_same_dir_is_refused(tmp_path, tiny_run_inputs, tiny_args,
                                                   engine_cmd, engine_in_process) -> None:
    run_dir = tmp_path / "run"
    # the run and the refusal in this process; the --check below is a real one
    first = engine_in_process(*tiny_args(tiny_run_inputs, run_dir, steps=2))
    assert first.returncode == 0, first.stderr
    again = engine_in_process(*tiny_args(tiny_run_inputs, run_dir, steps=2))
    assert again.returncode == 2
    assert "already holds a run" in again.stderr
    # --check says the same before anything else (the remote check stage runs it)
    check = subprocess.run([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir, steps=2),
                            "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 2 and check.stdout == ""
    assert check.stderr.count("\n") == 1 and "--run-dir" in check.stderr
    assert "already holds a run" in check.stderr


def test_the_preflight_the_dashboard_runs_on_start_loads_no_torch() -> None:
    """The launch form checks a local run's inputs (kdengine.preflight) in the dashboard's own
    process when Start is pressed: that must not cost a torch import (seconds, and its memory)."""
    import os

    code = (
        "import sys\n"
        "from kdengine.config import RunConfig\n"
        "from kdengine.preflight import check_run_inputs\n"
        "check_run_inputs(RunConfig.from_mapping(dict(teacher='demo://teacher', "
        "student='demo://student', data='demo://python-stdlib')))\n"
        "assert 'torch' not in sys.modules, 'the preflight imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "KDENGINE_TEACHER_COMPILE": "layers"})


def test_import_boundaries_hold_in_a_fresh_interpreter() -> None:
    code = (
        "import sys\n"
        "import kdengine.config, kdengine.events, kdengine.verdict\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "import kdtui, kdtui.cli, kdtui.watch\n"
        "assert 'torch' not in sys.modules, 'kdtui pulled torch'\n"
        "import kdengine, kdengine.run, kdengine.trainer, kdengine.cli, kdengine.demo\n"
        "bad = [m for m in ('textual', 'asyncssh') if m in sys.modules]\n"
        "assert not bad or 'kdtui' in sys.modules, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    engine_only = (
        "import sys\n"
        "import kdengine, kdengine.run, kdengine.trainer, kdengine.cli, kdengine.demo\n"
        "import kdengine.loading\n"
        "bad = [m for m in ('textual', 'asyncssh') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", engine_only], check=True, timeout=120)


# long: the first test handed out, it trains the session's demo teacher (73 s with one thread)
# while the dashboard's demo test, later, finds it cached
@pytest.mark.long
@pytest.mark.timeout(900)  # the demo teacher may be trained here (once a session); see QUIET_S
def test_the_demo_runs_end_to_end_to_a_pass_and_the_student_learns(
        tmp_path, engine_cmd, wait_on_run) -> None:
    """`kdengine train --demo` on a shorter schedule (120 of the preset's 500 steps): the
    preset's whole run, and its student clearly learning (val_ce under 0.6x the untrained
    student's), is CI's front door (.ci/front-door: the README's command to a PASS)."""
    run_dir = tmp_path / "demo"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([*engine_cmd, "train", "--demo", "--run-dir", str(run_dir),
                                 "--steps", "120", "--eval-every", "60"],
                                stdout=stdout, stderr=stderr, text=True)
    try:
        wait_on_run(run_dir, lambda: proc.poll() is not None, "the demo's exit")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, out.read_text()[-3000:] + err.read_text()[-3000:]
    assert (run_dir / "events.jsonl").exists() and (run_dir / "launch.log").exists()
    verdict = subprocess.run([*engine_cmd, "verdict", str(run_dir)], capture_output=True,
                             text=True)
    assert verdict.returncode == 0 and "PASS" in verdict.stdout
    evals = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
             if '"type":"eval"' in line]
    untrained, distilled = evals[0], evals[-1]
    assert [e["step"] for e in evals] == [0, 60, 120]
    # the untrained student is near-uniform over 257 ids (ln 257 = 5.55 nats)
    assert untrained["val_ce"] > 5.0
    assert distilled["val_ce"] < 0.8 * untrained["val_ce"]
    assert Path(run_dir / "final" / "config.json").exists()
