"""The test suite never reads the user's own state (tests/conftest.py): runs, dispatches,
settings, hosts, ssh config and caches all resolve into the test's tmp, whatever the user's
HOME, XDG dirs and KDTUI_*/KDENGINE_* variables say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_place_kdtui_and_the_engine_keep_things_is_in_the_tests_tmp(tmp_path):
    import platformdirs

    from kdengine.config import default_runs_dir
    from kdengine.demo import cache_root
    from kdtui.remote.hosts import hosts_file
    from kdtui.remote.manifest import evidence_dir
    from kdtui.settings import config_dir

    for what, path in {"runs": default_runs_dir(), "evidence": evidence_dir(),
                       "config": config_dir(), "hosts": hosts_file()}.items():
        assert path.is_relative_to(tmp_path), (what, path)
    assert cache_root().is_relative_to(tmp_path.parent.parent)  # the session's cache
    assert os.environ["KDTUI_SSH_CONFIG"] == os.devnull  # never ~/.ssh/config
    # platformdirs' defaults (what a test that unsets a variable falls back to), the hub cache
    home = Path.home()
    for path in (platformdirs.user_config_path("kdtui"), platformdirs.user_data_path("kdtui"),
                 platformdirs.user_cache_path("kdengine")):
        assert not path.is_relative_to(home), path
    from huggingface_hub import constants

    assert not Path(constants.HF_HUB_CACHE).is_relative_to(home), constants.HF_HUB_CACHE


def test_a_users_own_runs_dispatches_and_settings_do_not_reach_the_tests(tmp_path):
    """What the user found: one dispatch dir of theirs, and `kdtui runs --plain` in the tests
    listed it first. Two of those tests, run by a pytest whose environment is a user's."""
    home = tmp_path / "home"
    for evidence in (home / ".local" / "share" / "kdtui" / "evidence", tmp_path / "env-evidence"):
        (evidence / "kd-20991129-223600").mkdir(parents=True)
        (evidence / "kd-20991129-223600" / "dispatch.json").write_text(json.dumps(
            {"run_id": "kd-20991129-223600", "host": "gpu1", "launched": False,
             "dispatched_at": "2099-11-29T22:36:00Z", "config": {"steps": 10}}))
    user_runs = tmp_path / "user-runs" / "users-run"
    user_runs.mkdir(parents=True)
    (user_runs / "events.jsonl").write_text(json.dumps(
        {"v": 1, "seq": 0, "t": 4_000_000_000.0, "type": "run_started", "run_id": "users-run",
         "config": {"steps": 10}}) + "\n")
    config = home / ".config" / "kdtui"
    config.mkdir(parents=True)
    (config / "hosts.toml").write_text("this is not toml [")
    env = {**os.environ, "HOME": str(home), "KDTUI_EVIDENCE_DIR": str(tmp_path / "env-evidence"),
           "KDENGINE_RUNS_DIR": str(tmp_path / "user-runs"), "KDTUI_CONFIG_DIR": str(config),
           "XDG_DATA_HOME": str(home / ".local" / "share")}
    tests = ["tests/tui/test_cli_control.py::"
             "test_runs_plain_lists_newest_first_and_prints_nothing_without_runs",
             "tests/tui/test_launch_command.py::"
             "test_dashboard_with_stdout_not_a_terminal_refuses_and_names_headless"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", "-p",
                           "no:cacheprovider", "--basetemp", str(tmp_path / "inner"), *tests],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
