"""`kdtui launch --host H` refuses a bad environment in one line (exit 2) before it connects to
anything: DRY_RUN set to a value that is neither on nor off (read as off, it started a real
dispatch), and an evidence dir that is a file (found only when the manifest was written just
before the engine's start: a traceback after preflight, sync and check had run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kdengine.config import demo_config
from kdtui.cli import main as kdtui_main

# a host whose port nothing listens on (the task's port range): were it dialled, the dispatch
# would fail in preflight with several lines, not one
DOWN_PORT = 2349


@pytest.fixture
def down_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host down\n  HostName 127.0.0.1\n  Port {DOWN_PORT}\n")
    monkeypatch.setenv("KDTUI_SSH_CONFIG", str(ssh_config))
    (tmp_path / "hosts.toml").write_text("")  # the host not in it: defaults
    monkeypatch.setenv("KDTUI_HOSTS_FILE", str(tmp_path / "hosts.toml"))
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path / "evidence"))
    for name in ("DRY_RUN", "KDTUI_DRY_RUN", "KDTUI_HOST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "evidence"


def _launch(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = kdtui_main(["launch", "--headless", "--host", "down", "--demo", "--run-name", "r"])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_dry_run_variable_that_is_neither_on_nor_off_is_refused_not_dispatched(
        down_host: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DRY_RUN", "ture")
    code, out, err = _launch(capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == ["kdtui launch: error: DRY_RUN: is 'ture': set it to 1 (or true, "
                                "yes, on), 0 (or false, no, off), or unset it"]
    assert not down_host.exists()  # no dispatch, so no manifest


def test_an_evidence_dir_that_is_a_file_is_refused_before_connecting(
        down_host: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    down_host.write_text("not a directory\n")
    code, out, err = _launch(capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"kdtui launch: error: KDTUI_EVIDENCE_DIR: {down_host} is a "
                                "file, not a directory; set KDTUI_EVIDENCE_DIR to a directory "
                                "you can write"]

    # the dashboard's dispatch (RemoteLauncher.start) says the same as its one failure line
    from kdtui.launch.remote import DispatchError, RemoteLauncher

    updates: list = []
    launcher = RemoteLauncher(demo_config().with_values(run_name="r"), "down")
    with pytest.raises(DispatchError, match="KDTUI_EVIDENCE_DIR: .* is a file"):
        asyncio.run(launcher.start(updates.append))
    assert updates == []  # no stage ran
