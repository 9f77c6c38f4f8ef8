"""Audit 13, docs/apr-profile.md's quoting promise for every apr field: each value reaches the
host as one literal word. Before, a teacher or student starting with '-' reached the host as
`apr pull -x` / `apr distill -x ...` (read as one of apr's options), a run dir starting with '-'
as `--run-dir -x` (the agent's option), an apr_bin or cargo_features starting with '-' as an
option of sh/env/cargo, and a newline in repo_url, cargo_package or apr_bin split the host
probe's answer and the shown commands: each is refused now, one line naming the field and the
fix, exit 2, nothing started. Spaces, quotes, `$(...)`, backticks (and, in paths, a newline) are
fine: a real run on the real test sshd with an apr installed under such a path, such model paths
and such a run directory completes, with every value arriving literally and nothing executed."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from kdtui.cli import main

from .conftest import STANDIN

MODELS = ["--teacher", "/m/t.apr", "--student", "/m/s.apr"]


@pytest.mark.parametrize(("flags", "settings", "said"), [
    (["--teacher=-x", "--student", "/m/s.apr"], {},
     "--teacher: must not start with '-': apr would read it as one of its options; give a path "
     "on the host (./-x) or a ref `apr pull` takes (got '-x')"),
    (["--teacher", "/m/t.apr", "--student=--json"], {},
     "--student: must not start with '-': apr would read it as one of its options"),
    ([*MODELS, "--run-dir=-r"], {},
     "--run-dir: must not start with '-': apr would read it as one of its options; give ./-r "
     "or an absolute path (got '-r')"),
    (MODELS, {"apr_bin": "-i"},
     "apr_bin: must be a path or command name that does not start with '-' (got '-i')"),
    (MODELS, {"cargo_features": "--frozen"},
     "cargo_features: must be feature names separated by commas, not starting with '-'"),
    (MODELS, {"apr_bin": "/opt/apr\ntool.git=/usr/bin/git"},
     "apr_bin: must not hold control characters such as a newline"),
    (MODELS, {"repo_url": "https://example.com/a.git\nx"},
     "repo_url: must not hold control characters such as a newline"),
    (MODELS, {"cargo_package": "apr-cli\nx"},
     "cargo_package: must not hold control characters such as a newline"),
])
def test_an_apr_value_that_would_be_read_as_an_option_is_refused_naming_it(
        flags, settings, said, apr_host, evidence, tmp_path, capsys) -> None:
    host = apr_host("normal")
    extra = []
    if settings:
        path = tmp_path / "apr.json"  # the JSON form of --apr-settings
        path.write_text(json.dumps(settings))
        extra = ["--apr-settings", str(path)]
    code = main(["launch", "--headless", "--profile", "apr", "--host", host, *flags, *extra])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kdtui launch: error: {said}"), captured.err
    assert captured.out == "" and "Traceback" not in captured.err
    assert not evidence.exists()  # nothing tried, not even a failed dispatch's record


@pytest.mark.ssh
@pytest.mark.timeout(120)
def test_hostile_apr_paths_reach_the_host_as_literal_words_and_the_run_completes(
        apr_host, evidence, tmp_path, capsys) -> None:
    # short and absolute: the directory below holds it three times, and tmp_path under xdist
    # (popen-gwN/<test name>) made that name longer than a file name may be
    marker = Path(tempfile.mkdtemp(prefix="kd-")) / "pwned"
    evil = f"a b'c\"d $(touch {marker}) `touch {marker}`; touch {marker}"
    host = apr_host("normal", step_delay=0.05, alive_check_s=0.3)
    home = tmp_path / f"host {evil}".replace("/", "_")
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True)
    apr = bin_dir / "apr"  # apr as installed (build = false) under a hostile directory
    apr.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    apr.chmod(0o755)
    models = home / "models\nline two"  # a newline in a path is a path
    models.mkdir()
    teacher, student = models / "t $(x).apr", models / "s `x`.apr"
    teacher.write_bytes(b"APR2" + bytes(60))
    student.write_bytes(b"APR2" + bytes(60))
    run_dir = home / "run\nd"
    settings = tmp_path / "apr.toml"
    settings.write_text(f"build = false\napr_bin = {json.dumps(str(apr))}\n"
                        "steps_per_epoch = 4\n")
    code = main(["launch", "--headless", "--profile", "apr", "--host", host,
                 "--teacher", str(teacher), "--student", str(student), "--steps", "4",
                 "--run-dir", str(run_dir), "--run-name", "apr-quoted",
                 "--apr-settings", str(settings)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict F-DISTILL-SMOKE-001 PASS" in out, out
    assert not marker.exists()
    manifest = json.loads((evidence / "apr-quoted" / "dispatch.json").read_text())
    assert manifest["engine_command"] == [
        str(apr), "distill", str(teacher), "--student", str(student), "--epochs", "1",
        "--temperature", "4.0", "--alpha", manifest["engine_command"][10], "--backend", "cuda",
        "--output", f"{run_dir}/student", "--json"]
    assert (run_dir / "student" / "model.apr").is_file()  # apr wrote where it was told
    assert (run_dir / "apr.exit").read_text().strip() == "0"
