"""KDTUI_HOSTS_FILE set to a file that does not exist is a mistake said in one line naming the
variable and the fix (exit 2 from the CLI, an error notice in the form), not the default host
settings taken silently (a typo in the path ran on the box with the wrong python and work dir).
No hosts file at the default place stays fine: every host gets the defaults."""

from __future__ import annotations

import pytest

from kdtui.app import KDApp
from kdtui.cli import main as kdtui_main
from kdtui.remote.hosts import HostsFileError, get_host


def test_a_hosts_file_variable_naming_a_missing_file_is_refused_in_one_line(
        tmp_path, monkeypatch, capsys):
    missing = tmp_path / "hostz.toml"
    monkeypatch.setenv("KDTUI_HOSTS_FILE", str(missing))
    with pytest.raises(HostsFileError) as refused:
        get_host("gpu-box")
    said = str(refused.value)
    assert "KDTUI_HOSTS_FILE" in said and str(missing) in said and "\n" not in said
    assert "unset KDTUI_HOSTS_FILE" in said and "create it" in said

    code = kdtui_main(["launch", "--headless", "--host", "gpu-box", "--demo", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "KDTUI_HOSTS_FILE" in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out


def test_no_hosts_file_at_the_default_place_means_the_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KDTUI_HOSTS_FILE", raising=False)
    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "empty-config"))
    assert get_host("gpu-box").work_dir == "kdtui"
    assert kdtui_main(["launch", "--headless", "--host", "gpu-box", "--demo", "--dry-run"]) == 0


async def test_the_form_says_the_hosts_file_variable_names_a_missing_file(
        runs_dir, tmp_path, monkeypatch, wait_for):
    monkeypatch.setenv("KDTUI_HOSTS_FILE", str(tmp_path / "hostz.toml"))
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        notes = [n for n in app._notifications if n.title == "hosts file"]
        assert len(notes) == 1 and "KDTUI_HOSTS_FILE" in str(notes[0].message)
        assert notes[0].severity == "error"
        assert "gpu-box" in app.screen.hosts  # ssh config's hosts are still offered
