"""`kdtui launch --profile apr` and `kdtui watch` of an apr run, through kdtui's own CLI."""

from __future__ import annotations

import json
import uuid

import pytest

from kdtui.cli import main


def test_dry_run_prints_the_plan_and_needs_no_data(apr_host, apr_repo, capsys):
    host = apr_host("normal")
    code = main(["launch", "--headless", "--profile", "apr", "--host", host,
                 "--teacher", "/m/t.apr", "--student", "/m/s.apr", "--batch-size", "16",
                 "--dry-run", "--apr-repo", str(apr_repo), "--apr-ref", "v-test"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "DRY RUN" in out and "--ref v-test" in out
    assert "NOT applied  batch_size=16" in out and "you set this" in out


def test_apr_needs_an_ssh_host_and_says_so(capsys, monkeypatch):
    monkeypatch.delenv("KDTUI_HOST", raising=False)
    code = main(["launch", "--profile", "apr", "--teacher", "/m/t.apr", "--student", "/m/s.apr"])
    assert code == 2
    assert "host: the apr profile runs apr distill on an SSH host" in capsys.readouterr().err


def test_a_bad_value_names_its_flag(capsys):
    code = main(["launch", "--profile", "apr", "--host", "x", "--teacher", "/m/t.apr",
                 "--student", "/m/t.apr"])
    assert code == 2
    assert "--student: is the same model as the teacher" in capsys.readouterr().err


@pytest.mark.ssh
@pytest.mark.timeout(180)
def test_cli_launch_then_watch_by_run_id(apr_host, apr_repo, tmp_path, monkeypatch, capsys):
    host = apr_host("normal", step_delay=0.1)
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path / "evidence"))
    settings = tmp_path / "apr.toml"
    settings.write_text(f'repo_url = "{apr_repo}"\ngit_ref = "v-test"\nsteps_per_epoch = 4\n')
    name = f"apr-cli-{uuid.uuid4().hex[:8]}"
    code = main(["launch", "--headless", "--profile", "apr", "--host", host, "--teacher",
                 "hf://org/t/model.apr", "--student", "org/s", "--steps", "8", "--run-name",
                 name, "--apr-settings", str(settings)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict F-DISTILL-SMOKE-001 PASS: training-batch loss" in out
    manifest = json.loads((tmp_path / "evidence" / name / "dispatch.json").read_text())
    assert manifest["apr_settings"]["git_ref"] == "v-test"
    assert main(["watch", name, "--headless"]) == 0
    assert "verdict F-DISTILL-SMOKE-001 PASS" in capsys.readouterr().out
