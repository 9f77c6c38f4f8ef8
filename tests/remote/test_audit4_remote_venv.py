"""The engine's venv on the host, broken or gone under a user: a venv marked ready whose kdengine
no longer imports (a package removed, a `pip uninstall` run by hand) is made again by the next
dispatch's sync stage, instead of every `kdtui launch` to that host failing its check with 'No
module named kdengine' and no way out short of finding and deleting the venv by hand."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from kdtui.cli import main

from .conftest import launch_flags

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(240)]


@pytest.fixture
def own_work(remote_env: dict[str, Path], tmp_path: Path) -> Path:
    """This test's own work dir on the host: the session's venv is never broken under others."""
    work = tmp_path / "host-work"
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace(str(remote_env["work"]), str(work)))
    return work


def test_a_venv_whose_kdengine_no_longer_imports_is_made_again_by_the_next_dispatch(
        own_work, tiny_run_inputs, capsys):
    assert main(["launch", "--headless", "--host", "kdtest", "--run-name", "venv-1",
                 *launch_flags(tiny_run_inputs)]) == 0
    capsys.readouterr()
    (env,) = [p for p in (own_work / "envs").iterdir() if p.is_dir()]
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    shutil.rmtree(site / "kdengine")  # the marker stays: the venv still says it is ready
    code = main(["launch", "--headless", "--host", "kdtest", "--run-name", "venv-2",
                 *launch_flags(tiny_run_inputs)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "No module named kdengine" not in out and "[sync] skipped" not in out
    assert f"{env} is marked ready but kdengine does not import from it: making it again" in out
    assert "[sync] done" in out and "[check] done" in out
    assert (site / "kdengine" / "__init__.py").is_file()
