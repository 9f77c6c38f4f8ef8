"""The engine's on/off environment variables (docs/models.md) take 0 or 1: any other value is
refused before a run directory exists, as the other KDENGINE_ variables are, instead of
silently meaning one of the two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("name, value", [("KDENGINE_SYNC_CHECKPOINTS", "true"),
                                         ("KDENGINE_COMPILE", "off"),
                                         ("KDENGINE_KD_KERNEL", "no")])
def test_an_on_off_variable_that_is_not_0_or_1_is_refused_naming_it(
        tmp_path: Path, one_line_refusal, name: str, value: str) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kdengine", "train", "--demo", "--run-dir",
                           str(run_dir)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, name: value})
    line = one_line_refusal(done, "train", f"{name}: is {value!r}: set it to 0 (")
    assert ") or 1 (" in line and line.endswith("or unset it")
    assert not run_dir.exists()


def test_0_1_and_empty_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdengine.preflight import SWITCHES, check_switches

    for value in ("0", "1", ""):
        for name in SWITCHES:
            monkeypatch.setenv(name, value)
        check_switches()
