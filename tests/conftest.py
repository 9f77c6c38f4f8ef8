"""Shared test setup: every test gets its own runs dir; the demo teacher is trained once per
session into a session cache (never the user's), so tests touch nothing outside tmp."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kdengine-cache")


@pytest.fixture(autouse=True)
def isolated_engine_dirs(tmp_path: Path, session_cache: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDENGINE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("KDENGINE_CACHE", str(session_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


@pytest.fixture
def engine_cmd() -> list[str]:
    """The engine's CLI as a user runs it (the same interpreter as the tests)."""
    return [sys.executable, "-m", "kdengine"]
