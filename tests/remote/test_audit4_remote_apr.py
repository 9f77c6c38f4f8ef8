"""A new user's day two with the apr profile, on the real test sshd and the real stand-in apr
(a Cargo binary built on the host by the profile's own stages, tests/profiles/conftest.py):
bad settings refused in one line before anything starts, KDTUI_DRY_RUN honoured, a cancelled run
that stays cancelled, a run directory removed under a finished run, a host that is down under an
ended run, `kdtui resume` of an apr run, and a token in the host's env kept out of the process
list for the run's whole life."""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path

import pytest

from kdtui.cli import main

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("kdtui_tests_profiles_conftest",
                                               HERE.parent / "profiles" / "conftest.py")
_profiles = sys.modules.get(_spec.name) or importlib.util.module_from_spec(_spec)
if _spec.name not in sys.modules:
    sys.modules[_spec.name] = _profiles
    _spec.loader.exec_module(_profiles)
# the apr fixtures (not `sshd`: this directory's conftest gives the session's one server)
apr_repo, apr_work, apr_host = _profiles.apr_repo, _profiles.apr_work, _profiles.apr_host

MODELS = ["--teacher", "hf://org/t/model.apr", "--student", "org/s"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "evidence"
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(path))
    monkeypatch.delenv("DRY_RUN", raising=False)
    monkeypatch.delenv("KDTUI_DRY_RUN", raising=False)
    return path


def launch_args(host: str, repo: Path, name: str, *extra: str) -> list[str]:
    return ["launch", "--headless", "--profile", "apr", "--host", host, *MODELS,
            "--apr-repo", str(repo), "--apr-ref", "v-test", "--run-name", name, *extra]


def settings_file(tmp_path: Path, repo: Path, **extra: object) -> Path:
    path = tmp_path / "apr.toml"
    lines = [f'repo_url = "{repo}"', 'git_ref = "v-test"', "steps_per_epoch = 4"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- bad input: one line naming the field and the fix, nothing started -------------------------
@pytest.mark.parametrize(("flags", "expected"), [
    (["--apr-settings", "/nonexistent/apr.toml"],
     "kdtui launch: error: --apr-settings: cannot read /nonexistent/apr.toml"),
    (["--apr-ref", ""], "kdtui launch: error: git_ref: must be a name"),
    (["--apr-repo", ""], "kdtui launch: error: repo_url: must be a git URL or path"),
    (["--apr-repo=--upload-pack=touch /tmp/x"],
     "kdtui launch: error: repo_url: must be a git URL or path that does not start with '-'"),
    (["--apr-ref", "main x"], "kdtui launch: error: git_ref: must be a branch, tag or commit"),
    (["--apr-ref", "main\nx"], "kdtui launch: error: git_ref: must be a branch, tag or commit"),
])
def test_a_bad_apr_setting_is_one_line_naming_it_and_nothing_starts(
        flags, expected, apr_host, evidence, capsys):
    host = apr_host("normal")
    code = main(["launch", "--headless", "--profile", "apr", "--host", host, *MODELS, *flags])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), captured.err
    assert "Traceback" not in captured.err + captured.out and captured.out == ""
    assert not evidence.exists()  # not even a failed dispatch's manifest: nothing was tried


def test_kdtui_dry_run_makes_an_apr_launch_a_dry_run(apr_host, apr_repo, apr_work, evidence,
                                                     monkeypatch, capsys):
    """docs/remote.md: DRY_RUN=1 or KDTUI_DRY_RUN=1. The apr profile read only DRY_RUN, so
    KDTUI_DRY_RUN=1 connected, built apr and started a real run."""
    host = apr_host("normal")
    monkeypatch.setenv("KDTUI_DRY_RUN", "1")
    name = unique("apr-dry")
    code = main(launch_args(host, apr_repo, name))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("DRY RUN: nothing is connected to"), out
    assert "[preflight] done" not in out
    assert not evidence.exists() and not (apr_work / "runs" / name).exists()
