"""`kdtui cancel` of a run on the test sshd, and of a run whose host is down, as a script runs
it (a real kdtui process); `kdtui runs --plain` then lists the remote run beside a local one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kdengine.events import read_events
from kdtui.cli import main as kdtui_main

pytestmark = pytest.mark.ssh

# the apr profile's fixtures (a real git repo whose cargo-built `apr` execs the stand-in),
# imported as tests/profiles/conftest.py imports this folder's sshd
_spec = importlib.util.spec_from_file_location(
    "kdtui_tests_profiles_conftest", Path(__file__).resolve().parent.parent / "profiles" /
    "conftest.py")
_profiles = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(_profiles, "apr_host"):
    _spec.loader.exec_module(_profiles)
apr_repo, apr_work, apr_host = _profiles.apr_repo, _profiles.apr_work, _profiles.apr_host

LONG = dict(steps=100000, batch_size=4, seq_len=32, lr=3e-3, eval_every=0, eval_batches=2,
            log_every=1, checkpoint_every=0, temperature=2.0)


def long_flags(inputs: dict[str, str], run_name: str) -> list[str]:
    flags = ["--teacher", inputs["teacher"], "--student", inputs["student"],
             "--data", inputs["data"], "--run-name", run_name]
    for key, value in LONG.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def kdtui(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdtui", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_steps(run_dir: Path, timeout: float = 150) -> None:
    """The engine trains (and so has its SIGTERM handler in place). The budget is for an
    engine's start-up on a busy 2-core machine (tests/conftest.py QUIET_S)."""
    deadline = time.monotonic() + timeout
    while not any(e.get("type") == "step" for e in read_events(run_dir / "events.jsonl")):
        assert time.monotonic() < deadline, (run_dir / "launch.log").read_text()
        time.sleep(0.1)


def test_cancel_ends_a_remote_run_as_cancelled_and_runs_plain_lists_it_beside_a_local_one(
        remote_env, tiny_run_inputs, capsys):
    assert kdtui_main(["launch", "--headless", "--detach", "--host", "kdtest",
                       *long_flags(tiny_run_inputs, "cx-remote")]) == 0, capsys.readouterr()
    runs_dir = Path(os.environ["KDENGINE_RUNS_DIR"])
    local = kdtui("--runs-dir", str(runs_dir), "launch", "--headless", "--detach",
                  *long_flags(tiny_run_inputs, "cx-local"))
    assert local.returncode == 0, local.stdout + local.stderr
    remote_dir = remote_env["work"] / "runs" / "cx-remote"
    done = None
    try:
        wait_for_steps(remote_dir)
        done = kdtui("cancel", "cx-remote", "--timeout", "30")
    finally:
        wait_for_steps(runs_dir / "cx-local")
        kdtui("--runs-dir", str(runs_dir), "cancel", "cx-local", "--timeout", "30")
        if done is None or done.returncode != 0:  # never leave an engine behind a failed test
            kdtui("cancel", "cx-remote", "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["cx-remote on kdtest: cancelled (exit code 143)"]
    finished = read_events(remote_dir / "events.jsonl")[-1]
    assert (finished["type"], finished["status"]) == ("run_finished", "cancelled")
    manifest = json.loads((remote_env["evidence"] / "cx-remote" / "dispatch.json").read_text())
    assert manifest["run_finished"]["status"] == "cancelled"

    listed = kdtui("--runs-dir", str(runs_dir), "runs", "--plain")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    assert rows["cx-remote"][1:3] == ["kdtest", "cancelled"]
    assert rows["cx-local"][1:3] == ["local", "cancelled"]
    assert all(len(row) == 6 for row in rows.values())


def test_cancel_of_a_run_whose_host_is_down_names_the_host_and_exits_1(remote_env,
                                                                       tiny_run_inputs):
    # a real dispatch's evidence, pointed at a host nothing answers on: the engine never needs
    # to start, so the dispatch stops after writing it (a check that fails would write none)
    assert kdtui_main(["launch", "--headless", "--detach", "--host", "kdtest-down",
                       *long_flags(tiny_run_inputs, "cx-gone")]) == 2
    manifest = remote_env["evidence"] / "cx-gone" / "dispatch.json"
    data = json.loads(manifest.read_text())
    assert data["launched"] is False
    # as the evidence of a run launched there before the host went down
    manifest.write_text(json.dumps({**data, "launched": True, "pid": 4242, "error": None}))
    started = time.monotonic()
    done = kdtui("cancel", "cx-gone", "--timeout", "30")
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one line, never a traceback
    assert lines[0].startswith("kdtui cancel: error: cannot cancel cx-gone on kdtest-down: ")
    assert "cannot reach kdtest-down" in lines[0] and "not cancelled" in lines[0]
    assert took < 15, took  # a refused connection is reported at once, not retried for minutes


def test_cancel_stops_an_apr_run_and_records_it_cancelled(apr_host, apr_repo, tmp_path,
                                                          monkeypatch):
    import asyncio

    from kdengine.config import RunConfig
    from kdtui.profiles.apr.dispatch import AprLauncher
    from kdtui.profiles.apr.schema import AprSettings

    evidence = tmp_path / "apr-evidence"
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(evidence))
    name = f"apr-cx-{uuid.uuid4().hex[:8]}"
    config = RunConfig.from_mapping(dict(
        teacher="hf://org/teacher/model.apr", student="org/student", steps=400, batch_size=8,
        lr=3e-4, temperature=2.0, alpha=0.3, run_name=name))
    settings = AprSettings(repo_url=str(apr_repo), git_ref="v-test", steps_per_epoch=4)

    async def dispatch() -> str:
        handle = await AprLauncher(config, apr_host("normal", step_delay=0.5), settings,
                                   evidence_dir=evidence).start(lambda update: None)
        await handle.close()
        return handle.run_dir

    log = Path(asyncio.run(dispatch())) / "launch.log"
    deadline = time.monotonic() + 150  # a start-up on a busy 2-core machine (QUIET_S)
    while "Step 1/" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    done = kdtui("cancel", name, "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    # SIGTERM takes apr's wrapper down with it, so no exit code is left behind
    assert done.stdout.splitlines() == [f"{name} on kdtest: cancelled (no exit code)"]
    manifest = json.loads((evidence / name / "dispatch.json").read_text())
    assert manifest["run_finished"]["status"] == "cancelled"
    again = kdtui("cancel", name, "--timeout", "5")
    assert (again.returncode, again.stdout.strip()) == (
        0, f"{name} on kdtest: already finished: cancelled (no exit code): nothing to cancel")
