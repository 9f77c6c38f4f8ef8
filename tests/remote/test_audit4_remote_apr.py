"""A new user's day two with the apr profile, on the real test sshd and the real stand-in apr
(a Cargo binary built on the host by the profile's own stages, tests/profiles/conftest.py):
bad settings refused in one line before anything starts, KDTUI_DRY_RUN honoured, a cancelled run
that stays cancelled, a run directory removed under a finished run, a host that is down under an
ended run, `kdtui resume` of an apr run, and a token in the host's env kept out of the process
list for the run's whole life."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
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
evidence = _profiles.evidence

MODELS = ["--teacher", "hf://org/t/model.apr", "--student", "org/s"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


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


# -- day two: cancel, watch, resume -----------------------------------------------------------
def manifest_of(evidence: Path, name: str) -> dict:
    return json.loads((evidence / name / "dispatch.json").read_text())


def finished_run(host: str, repo: Path, name: str, capsys) -> None:
    """A short apr run watched to its PASS, recorded in its manifest."""
    code = main(launch_args(host, repo, name, "--steps", "8"))
    out = capsys.readouterr().out
    assert code == 0 and "verdict F-DISTILL-SMOKE-001 PASS" in out, out


@pytest.mark.ssh
@pytest.mark.timeout(180)
def test_a_cancelled_apr_run_is_cancelled_for_every_later_watch_and_cancel(
        apr_host, apr_repo, evidence, capsys):
    """SIGTERM to the wrapper's group kills it before it writes apr.exit: a later `kdtui watch`
    said 'apr is gone without an exit code (killed, or the host rebooted)', ended it failed and
    wrote that over the manifest's cancelled, so `kdtui runs` listed it failed."""
    host = apr_host("normal", step_delay=0.5)
    name = unique("apr-cancelled")
    assert main(launch_args(host, apr_repo, name, "--steps", "40", "--detach")) == 0
    capsys.readouterr()
    assert main(["cancel", name]) == 0
    assert capsys.readouterr().out.strip() == f"{name} on {host}: cancelled (no exit code)"
    assert main(["watch", name, "--headless"]) == 2
    out = capsys.readouterr().out
    assert "gone without an exit code" not in out and "killed" not in out, out
    assert "the run was cancelled at step" in out.splitlines()[-1], out
    record = manifest_of(evidence, name)
    assert record["state"] == "cancelled" and record["run_finished"]["status"] == "cancelled"
    assert main(["cancel", name]) == 0
    assert "already finished: cancelled" in capsys.readouterr().out


@pytest.mark.ssh
@pytest.mark.timeout(180)
def test_watch_of_an_apr_run_whose_directory_is_gone_says_so_and_keeps_its_record(
        apr_host, apr_repo, apr_work, evidence, capsys):
    """It said 'apr is gone without an exit code ... at step 0' and wrote failed/inconclusive
    over the run's recorded PASS."""
    host = apr_host("normal", step_delay=0.05)
    name = unique("apr-gone-dir")
    finished_run(host, apr_repo, name, capsys)
    before = manifest_of(evidence, name)
    shutil.rmtree(apr_work / "runs" / name)
    t0 = time.monotonic()
    assert main(["watch", name, "--headless"]) == 2
    out = capsys.readouterr().out
    assert time.monotonic() - t0 < 60
    assert f"ERROR: the run directory {apr_work}/runs/{name} does not exist on {host}" in out
    assert "gone without an exit code" not in out and "verdict" not in out, out
    after = manifest_of(evidence, name)
    assert after["verdict"] == before["verdict"] and after["verdict"]["status"] == "pass"
    assert after["state"] == "completed" and after["run_finished"] == before["run_finished"]


@pytest.mark.ssh
@pytest.mark.timeout(180)
def test_watch_of_an_ended_apr_run_whose_host_is_down_shows_its_record_at_once(
        apr_host, apr_repo, evidence, tmp_path, sshd, capsys):
    """docs/remote.md: an ended run whose host cannot be reached is not waited for. An apr run
    retried the link for 10 minutes."""
    host = apr_host("normal", step_delay=0.05)
    name = unique("apr-host-down")
    finished_run(host, apr_repo, name, capsys)
    hosts = tmp_path / "hosts.toml"  # the same host block, under the alias whose port is shut
    hosts.write_text(hosts.read_text() + hosts.read_text().replace("[hosts.kdtest]",
                                                                   "[hosts.kdtest-down]"))
    path = evidence / name / "dispatch.json"
    path.write_text(json.dumps({**manifest_of(evidence, name), "host": "kdtest-down"}))
    t0 = time.monotonic()
    assert main(["watch", name, "--headless"]) == 0
    out = capsys.readouterr().out
    assert time.monotonic() - t0 < 30, out
    assert "kdtest-down cannot be reached" in out and "the run completed at step 4" in out
    assert out.splitlines()[-1].startswith("result: F-DISTILL-SMOKE-001 PASS"), out


@pytest.mark.ssh
@pytest.mark.timeout(180)
def test_an_apr_run_is_listed_by_apr_s_steps_and_its_record_by_its_first_step(
        apr_host, apr_repo, evidence, tmp_path, capsys):
    """--steps 6 with 4 steps an epoch is --epochs 2: apr trains 8 steps, and the runs list said
    '8/6' (the steps asked for); the recorded outcome said '(step 0)' for apr's first loss,
    which a train-batch run has at step 1 (there is no step-0 evaluation)."""
    host = apr_host("normal", step_delay=0.05)
    name = unique("apr-epochs")
    code = main(launch_args(host, apr_repo, name, "--steps", "6", "--apr-settings",
                            str(settings_file(tmp_path, apr_repo))))
    out = capsys.readouterr().out
    assert code == 0 and "applied  steps=6 -> --epochs 2" in out, out
    assert main(["runs", "--plain"]) == 0
    row = next(line.split("\t") for line in capsys.readouterr().out.splitlines()
               if line.startswith(name))
    assert row[3] == "8/8", row
    hosts = tmp_path / "hosts.toml"  # the same host block, under the alias whose port is shut
    hosts.write_text(hosts.read_text() + hosts.read_text().replace("[hosts.kdtest]",
                                                                   "[hosts.kdtest-down]"))
    path = evidence / name / "dispatch.json"
    path.write_text(json.dumps({**manifest_of(evidence, name), "host": "kdtest-down"}))
    assert main(["watch", name, "--headless"]) == 0
    result = capsys.readouterr().out.splitlines()[-1]
    assert result.startswith("result: F-DISTILL-SMOKE-001 PASS: train-batch loss "), result
    assert "(step 1) -> " in result and "(step 8)" in result and "step 0" not in result, result


# -- secrets ----------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.mark.ssh
@pytest.mark.timeout(180)
def test_a_token_in_the_hosts_env_reaches_apr_but_no_process_list_output_or_file(
        apr_host, apr_repo, apr_work, evidence, tmp_path, capsys):
    """The host's env went into the wrapper's argv (`sh -c WRAPPER ... env HF_TOKEN=... apr`):
    any user of a shared GPU box read the token in `ps` for the run's whole life, and every
    headless launch printed it in its `$ ...` lines (CI logs)."""
    host = apr_host("normal", step_delay=0.5)
    secret = "hf_" + uuid.uuid4().hex
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(hosts.read_text().replace("env = { ", f'env = {{ HF_TOKEN = "{secret}", '))
    name = unique("apr-secret")
    assert main(launch_args(host, apr_repo, name, "--steps", "40", "--detach")) == 0
    out = capsys.readouterr().out
    try:
        pid = int((apr_work / "runs" / name / "engine.pid").read_text())
        wrapper = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"kdtui-apr-run" in wrapper and secret.encode() not in wrapper
        deadline = time.monotonic() + 20
        while not (children := _children(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children, "apr never started under its wrapper"
        assert f"HF_TOKEN={secret}".encode() in Path(f"/proc/{children[0]}/environ").read_bytes()
        assert secret not in out and "HF_TOKEN=***" in out, out
        assert main(launch_args(host, apr_repo, name, "--dry-run")) == 0
        dry = capsys.readouterr().out
        assert secret not in dry and "HF_TOKEN=***" in dry
    finally:
        assert main(["cancel", name]) == 0
    for path in evidence.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path


def test_a_token_in_the_hosts_env_is_not_printed_by_a_kdengine_dry_run(remote_env, capsys):
    secret = "hf_" + uuid.uuid4().hex
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace("env = { ", f'env = {{ HF_TOKEN = "{secret}", '))
    assert main(["launch", "--headless", "--host", "kdtest", "--demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert secret not in out and "HF_TOKEN=***" in out, out


@pytest.mark.ssh
@pytest.mark.timeout(180)
def test_resume_of_an_apr_run_says_apr_cannot_resume_in_one_line(
        apr_host, apr_repo, evidence, capsys):
    """It said '.../dispatch.json holds no engine command to resume with' (it holds apr's)."""
    host = apr_host("normal", step_delay=0.5)
    name = unique("apr-resume")
    assert main(launch_args(host, apr_repo, name, "--steps", "40", "--detach")) == 0
    assert main(["cancel", name]) == 0
    capsys.readouterr()
    before = manifest_of(evidence, name)
    assert main(["resume", name, "--headless"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"kdtui resume: error: {name} is an apr distill run"), captured
    assert "kdtui launch --profile apr" in lines[0] and captured.out == ""
    assert manifest_of(evidence, name) == before
