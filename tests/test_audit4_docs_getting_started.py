"""docs/getting-started.md's and the README's promises a user relies on, through the real
commands: `kdtui launch --headless` reads every run field from KDTUI_<FIELD>, below flags and
above --config; it and `kdengine verdict` exit 0 pass, 1 fail, 2 inconclusive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "getting-started.md"


def _effective(out: str) -> dict[str, str]:
    """The dry run's 'effective config:' lines, field -> value as printed."""
    lines = out.split("effective config:\n", 1)[1].splitlines()
    return {k.strip(): v.split("  (default)")[0].strip()
            for k, v in (line.split("=", 1) for line in lines if "=" in line)}


def test_headless_launch_takes_kdtui_field_variables_below_flags_and_above_the_config(
        tmp_path) -> None:
    assert "below flags and above `--config`" in " ".join(GUIDE.read_text().split())
    (tmp_path / "run.toml").write_text('teacher = "demo://teacher"\nstudent = "demo://student"\n'
                                       'data = "demo://python-stdlib"\nsteps = 200\n'
                                       'lr = 3e-4\nalpha = 0.3\nrun_name = "mine"\n')
    env = {**os.environ, "KDTUI_STEPS": "70", "KDTUI_LR": "0.01", "KDTUI_SEQ_LEN": "64"}
    done = subprocess.run([sys.executable, "-m", "kdtui", "launch", "--headless", "--dry-run",
                           "--config", "run.toml", "--lr", "0.02"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = _effective(done.stdout)
    assert got["steps"] == "70"  # the variable over the file
    assert got["seq_len"] == "64"  # the variable over the default
    assert got["lr"] == "0.02"  # the flag over the variable
    assert got["alpha"] == "0.3" and got["run_name"] == "'mine'"  # the file's own
    assert not (tmp_path / "runs").exists()  # a dry run touches nothing


def _nan_student(student: str) -> str:
    """The student with one NaN weight: its step-0 eval is NaN, so the run cannot say."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = Path(student).with_name("student-nan")
    shutil.copytree(student, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(n for n in weights if n.endswith("mlp.down_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"))
    return str(broken)


@pytest.mark.parametrize(("lr", "broken", "status", "code"), [
    ("3e-3", False, "PASS", 0), ("1e-12", False, "FAIL", 1), ("3e-3", True, "INCONCLUSIVE", 2),
], ids=["pass", "fail", "inconclusive"])
def test_headless_launch_and_verdict_exit_by_the_verdict(tiny_run_inputs, tmp_path, lr, broken,
                                                         status, code) -> None:
    # README's Use: `kdtui launch --headless ...` exits 0 pass, 1 fail, 2 error/inconclusive;
    # `kdengine verdict RUN_DIR` exits 0 pass, 1 fail, 2 inconclusive
    student = _nan_student(tiny_run_inputs["student"]) if broken else tiny_run_inputs["student"]
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "kdtui", "launch", "--headless", "--teacher",
         tiny_run_inputs["teacher"], "--student", student, "--data", tiny_run_inputs["data"],
         "--run-dir", str(run_dir), "--steps", "4", "--batch-size", "4", "--seq-len", "32",
         "--eval-every", "2", "--eval-batches", "2", "--warmup-steps", "0", "--lr", lr,
         "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-2000:]
    result = done.stdout.strip().splitlines()[-1]
    assert result.startswith(f"result: F-DISTILL-SMOKE-001 {status}"), result
    assert result.endswith(f"(exit {code})"), result
    verdict = subprocess.run([sys.executable, "-m", "kdengine", "verdict", str(run_dir)],
                             capture_output=True, text=True, timeout=120)
    assert verdict.returncode == code, verdict.stderr
    assert verdict.stdout.startswith(f"F-DISTILL-SMOKE-001 {status}")
