"""A box whose python has torch but no pip (a conda env made without it, Debian's python3 with
torch from apt): what `kdtui launch` says, before anything is uploaded or made there."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

from kdtui.cli import main

from .conftest import launch_flags

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(240)]


@pytest.fixture
def python_without_pip(tmp_path: Path) -> Path:
    """A real python with torch and no pip: a venv without pip that sees this python's
    site-packages, all but pip."""
    env = tmp_path / "no pip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    seen = tmp_path / "site-without-pip"
    seen.mkdir()
    for entry in Path(site.getsitepackages()[0]).iterdir():
        if entry.name != "pip" and not entry.name.startswith("pip-"):
            (seen / entry.name).symlink_to(entry)
    (own,) = (env / "lib").glob("python3*/site-packages")
    (own / "seen.pth").write_text(f"{seen}\n")
    return env / "bin" / "python"


def test_a_python_without_pip_is_refused_at_preflight_naming_the_fix(
        remote_env, tmp_path, python_without_pip, tiny_run_inputs, capsys):
    work = tmp_path / "host-work"
    hosts = remote_env["hosts"]
    text = hosts.read_text().replace(f'work_dir = "{remote_env["work"]}"',
                                     f"work_dir = {json.dumps(str(work))}")
    hosts.write_text(text.replace(f'python = "{sys.executable}"',
                                  f"python = {json.dumps(str(python_without_pip))}"))
    code = main(["launch", "--headless", "--host", "kdtest", "--run-name", "nopip-1",
                 *launch_flags(tiny_run_inputs)])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    print(out)
    assert code == 2, out
    assert "[sync]" not in out and "No module named pip" not in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("[preflight] failed")]
    assert f"kdtest: {python_without_pip} has no pip, which kdtui needs there to make the " \
        "run's venv and install kdengine in it: install pip for that python" in line
    assert "ensurepip" in line and f"[hosts.kdtest] of {remote_env['hosts']}" in line
    assert "Traceback" not in out
    assert not (work / ".kdtui" / "wheels").exists() and not (work / "envs").exists()
    manifest = json.loads((remote_env["evidence"] / "nopip-1" / "dispatch.json").read_text())
    assert manifest["launched"] is False and "has no pip" in manifest["error"]
