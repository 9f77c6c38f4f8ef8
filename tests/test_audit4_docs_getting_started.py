"""docs/getting-started.md's promises a user relies on, through the real commands: `kdtui launch
--headless` reads every run field from KDTUI_<FIELD>, below flags and above --config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
