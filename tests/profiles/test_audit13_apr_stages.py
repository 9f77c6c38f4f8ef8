"""Audit 13, docs/apr-profile.md's stage table, on the real test sshd with an apr installed on
the host (`build = false`: no git, no cargo): each stage fails the way the table says, in one
line naming what and where, before apr distill starts (a tool missing from PATH, an apr whose
`--version` fails, an `apr pull` that prints no `Path:`, a run directory that already holds a
run, and the fix names --run-dir when the user gave it: it said 'pick another --run-name',
which does not move a --run-dir), the models stage warns about a checkpoint that is not `.apr`,
and `json_summary = false` runs apr without `--json`, its `✓ Distillation complete` line
deciding the verdict."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdtui.cli import main

from .conftest import STANDIN

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(120)]


def installed_apr(where: Path, before: str = "") -> Path:
    """An `apr` on the host that runs the stand-in, after the shell lines `before`."""
    where.mkdir(parents=True, exist_ok=True)
    apr = where / "apr"
    apr.write_text(f"#!/bin/sh\n{before}\nexec {sys.executable} {STANDIN} \"$@\"\n")
    apr.chmod(0o755)
    return apr


def models(where: Path, suffix: str = ".apr") -> list[str]:
    where.mkdir(parents=True, exist_ok=True)
    for name in ("t", "s"):
        (where / f"{name}{suffix}").write_bytes(b"APR2" + bytes(60))
    return ["--teacher", str(where / f"t{suffix}"), "--student", str(where / f"s{suffix}")]


def launch(host: str, tmp_path: Path, name: str, settings: dict, *flags: str) -> tuple[int, str]:
    path = tmp_path / "apr.json"
    path.write_text(json.dumps({"build": False, "steps_per_epoch": 4, **settings}))
    code = main(["launch", "--headless", "--profile", "apr", "--host", host, "--steps", "4",
                 "--run-name", name, "--apr-settings", str(path), *flags])
    return code


def test_an_apr_missing_from_path_fails_preflight_naming_it(apr_host, evidence, tmp_path,
                                                             capsys) -> None:
    host = apr_host("normal")
    code = launch(host, tmp_path, "apr-no-bin", {"apr_bin": "apr-not-installed-here"},
                  *models(tmp_path / "m"))
    out = capsys.readouterr().out
    assert code == 2, out
    assert "[preflight] failed" in out
    assert ("kdtest lacks apr-not-installed-here on PATH: install it, or add its directory to "
            "PATH in the host's env_setup") in out
    assert "[sync]" not in out.split("[preflight] failed")[1].split("\n", 1)[0]
    assert json.loads((evidence / "apr-no-bin" / "dispatch.json").read_text())["launched"] is False


def test_an_apr_whose_version_fails_stops_at_the_version_stage(apr_host, evidence, tmp_path,
                                                               capsys) -> None:
    host = apr_host("normal")
    apr = installed_apr(tmp_path / "bin", 'echo "error: libcuda.so.1: cannot open" >&2; exit 127')
    code = launch(host, tmp_path, "apr-broken", {"apr_bin": str(apr)}, *models(tmp_path / "m"))
    out = capsys.readouterr().out
    assert code == 2, out
    assert (f"`{apr} --version` failed on kdtest (exit 127): error: libcuda.so.1: cannot open"
            in out), out
    assert "[check]" not in out and "[launch]" not in out


def test_an_apr_pull_without_a_path_line_fails_the_models_stage(apr_host, evidence, tmp_path,
                                                                 capsys) -> None:
    host = apr_host("normal")
    apr = installed_apr(tmp_path / "bin", 'if [ "$1" = pull ]; then echo "Model: $2"; exit 0; fi')
    code = launch(host, tmp_path, "apr-nopath", {"apr_bin": str(apr)},
                  "--teacher", "hf://org/t/model.apr", "--student", "org/s")
    out = capsys.readouterr().out
    assert code == 2, out
    assert ("teacher: `apr pull hf://org/t/model.apr` printed no 'Path:' line, so the checkpoint "
            "is unknown; give the teacher as a path on the host instead") in out, out
    assert "[launch]" not in out


def test_a_run_dir_that_holds_a_run_fails_preflight_and_a_non_apr_model_is_warned(
        apr_host, evidence, tmp_path, capsys) -> None:
    host = apr_host("normal", step_delay=0.05, alive_check_s=0.3)
    apr = installed_apr(tmp_path / "bin")
    flags = [*models(tmp_path / "m", ".safetensors"), "--run-dir", str(tmp_path / "run")]
    code = launch(host, tmp_path, "apr-plain", {"apr_bin": str(apr), "json_summary": False},
                  *flags)
    out = capsys.readouterr().out
    assert code == 0, out
    assert (f"warning: teacher {tmp_path / 'm' / 't.safetensors'} is not an .apr file; apr "
            "distill --backend cuda reads .apr checkpoints") in out
    # json_summary = false: no --json, and the '✓ Distillation complete' line gives the verdict
    manifest = json.loads((evidence / "apr-plain" / "dispatch.json").read_text())
    assert "--json" not in manifest["engine_command"]
    assert "verdict F-DISTILL-SMOKE-001 PASS: training-batch loss 5.2000" in out
    # the same run directory again: it holds a run, nothing is started over it
    log = (tmp_path / "run" / "launch.log").read_bytes()
    code = launch(host, tmp_path, "apr-again", {"apr_bin": str(apr)}, *flags)
    out = capsys.readouterr().out
    assert code == 2, out
    assert (f"{tmp_path / 'run'} on kdtest already holds a run (its launch.log is not empty): "
            "pick another --run-dir") in out  # another --run-name would not change it
    assert (tmp_path / "run" / "launch.log").read_bytes() == log
