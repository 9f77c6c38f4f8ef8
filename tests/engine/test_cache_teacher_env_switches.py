"""`kdengine cache-teacher` refuses a malformed engine switch (KDENGINE_COMPILE and the others
`kdengine train` checks, kdengine.preflight.check_engine_environment) as train does: one line,
exit 2, before its output directory exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["--teacher", "demo://teacher", "--data", "demo://python-stdlib"]


def test_cache_teacher_refuses_a_malformed_switch_in_one_line_before_writing(
        tmp_path: Path, one_line_refusal) -> None:
    out = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-m", "kdengine", "cache-teacher", *ARGS, "--out",
                           str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KDENGINE_COMPILE": "off",
                               "KDENGINE_CACHE": str(tmp_path / "kc")})
    one_line_refusal(done, "cache-teacher", "KDENGINE_COMPILE: is 'off': set it to 0 (")
    assert not out.exists() and not (tmp_path / "kc").exists()


@pytest.mark.parametrize("name, value", [
    ("KDENGINE_SYNC_CHECKPOINTS", "true"), ("KDENGINE_KD_KERNEL", "no"),
    ("KDENGINE_TEACHER_COMPILE", "fast"), ("KDENGINE_STUDENT_COMPILE", "fast"),
    ("KDENGINE_STUDENT_PLACEMENT", "spread")])
def test_cache_teacher_checks_every_switch_train_checks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    from kdengine.config import ConfigError
    from kdengine.teacher.command import plan

    monkeypatch.setenv("KDENGINE_CACHE", str(tmp_path / "kc"))
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        plan([*ARGS, "--out", str(tmp_path / "cache")])
    assert refused.value.field == name and f"is {value!r}" in refused.value.message
    assert not (tmp_path / "cache").exists()
