"""A remote run whose engine venv is gone from its host (the work dir's envs/ cleaned, the box
reinstalled) resumed: the resume said only that the venv's python could not be started. Now
it makes the venv again when it is this build's (the sync stage, as a dispatch does), and
otherwise says the fix in one line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from kdtui.cli import main as kdtui_main

pytestmark = pytest.mark.ssh

FLAGS = ["--steps", "30", "--batch-size", "2", "--seq-len", "16", "--eval-every", "10",
         "--eval-batches", "1", "--log-every", "1", "--checkpoint-every", "10",
         "--warmup-steps", "2", "--device", "cpu", "--dtype", "float32"]


def _stopped_run(remote_env, inputs, name: str) -> tuple[Path, Path]:
    """A run dispatched and watched to its end, then as if its engine had been killed at the
    end (no run_finished): resumable from its last checkpoint. Its dispatch.json and run dir."""
    argv = ["launch", "--headless", "--host", "kdtest", "--run-name", name,
            "--teacher", inputs["teacher"], "--student", inputs["student"],
            "--data", inputs["data"], *FLAGS]
    assert kdtui_main(argv) == 0
    run_dir = remote_env["work"] / "runs" / name
    pid = int((run_dir / "engine.pid").read_text())
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the engine did not exit"
        time.sleep(0.1)
    events = run_dir / "events.jsonl"
    kept = [line for line in events.read_text().splitlines()
            if json.loads(line).get("type") not in ("run_finished", "verdict")]
    events.write_text("\n".join(kept) + "\n")
    manifest = remote_env["evidence"] / name / "dispatch.json"
    data = json.loads(manifest.read_text())
    for key in ("state", "verdict", "run_finished"):
        data.pop(key, None)
    manifest.write_text(json.dumps(data))
    return manifest, run_dir


def _venv_of(manifest: Path) -> Path:
    python = Path(json.loads(manifest.read_text())["engine_command"][0])
    return python.parent.parent


@pytest.mark.timeout(300)
def test_a_resume_whose_venv_is_gone_makes_it_again(remote_env, tiny_run_inputs, capsys):
    manifest, run_dir = _stopped_run(remote_env, tiny_run_inputs, "resume-no-venv")
    venv = _venv_of(manifest)
    moved = venv.with_name(venv.name + ".moved")
    venv.rename(moved)  # the session's other tests keep theirs: it comes back below
    try:
        code = kdtui_main(["resume", "resume-no-venv", "--headless"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "[sync]" in out and (venv / "bin" / "python").exists(), out
    finally:
        if venv.exists():
            shutil.rmtree(moved, ignore_errors=True)
        else:
            moved.rename(venv)


@pytest.mark.timeout(300)
def test_a_resume_whose_venv_of_another_build_is_gone_says_the_fix(remote_env, tiny_run_inputs,
                                                                 capsys):
    manifest, run_dir = _stopped_run(remote_env, tiny_run_inputs, "resume-old-venv")
    data = json.loads(manifest.read_text())
    old = str(_venv_of(manifest))
    gone = old.rsplit("-", 1)[0] + "-000000000000"  # an older build's venv, since removed
    data["engine_command"] = [w.replace(old, gone) for w in data["engine_command"]]
    data["build_id"] = Path(gone).name
    manifest.write_text(json.dumps(data))
    t0 = time.monotonic()
    code = kdtui_main(["resume", "resume-old-venv", "--headless"])
    out = capsys.readouterr().out
    assert code == 2 and time.monotonic() - t0 < 60, out
    error = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert len(error) == 1, out
    assert f"{gone}/bin/python" in error[0] and "Traceback" not in out, error
    assert "kdtui launch" in error[0], error  # the fix, not only the missing path
