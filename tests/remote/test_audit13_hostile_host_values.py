"""docs/remote.md's Quoting and Security, for the values of the hosts file itself: a work_dir and
an `env` value holding spaces, quotes, `$(...)` and a newline reach the box as those literal
strings, and a token in `env` reaches the engine's environment but no process list, terminal
line, manifest or file of the run (the apr profile's own test covers its wrapper)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from kdtui.cli import main as kdtui_main

from .conftest import launch_flags

pytestmark = pytest.mark.ssh


@pytest.mark.timeout(240)
def test_hostile_work_dir_and_env_values_arrive_literally_and_the_token_is_never_shown(
        remote_env, sshd, tiny_run_inputs, tmp_path, capsys):
    marker = tmp_path / "pwned"
    secret = "hf_" + uuid.uuid4().hex
    evil = f"a b'c\"d $(touch {marker}) `touch {marker}`\nsecond line; touch {marker}"
    work = tmp_path / f"w d'q\"$(touch {marker.name})"
    hosts = remote_env["hosts"]
    hosts.write_text(
        "[hosts.kdtest]\n"
        f"work_dir = {json.dumps(str(work))}\n"
        f"python = {json.dumps(sys.executable)}\n"
        f"ssh_config = [{json.dumps(str(sshd.ssh_config))}]\n"
        "alive_check_s = 0.5\n"
        'env_setup = ["export OMP_NUM_THREADS=1"]\n'
        f"env = {{ HF_HUB_OFFLINE = \"1\", HF_HOME = {json.dumps(str(remote_env['hf_home']))}, "
        f"KDENGINE_CACHE = {json.dumps(os.environ['KDENGINE_CACHE'])}, "
        f"HF_TOKEN = {json.dumps(secret)}, KDTUI_EVIL = {json.dumps(evil)} }}\n")
    name = "hostile-1"
    code = kdtui_main(["launch", "--headless", "--detach", "--host", "kdtest", "--run-name",
                       name, *launch_flags(tiny_run_inputs, 400, 0)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    run_dir = work / "runs" / name
    try:
        pid = int((run_dir / "engine.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        deadline = time.monotonic() + 30
        while b"kdengine" not in cmdline and time.monotonic() < deadline:  # env execs it
            time.sleep(0.05)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"KDTUI_EVIL={evil}".encode() in environ
        assert f"HF_TOKEN={secret}".encode() in environ
        assert b"kdengine" in cmdline and secret.encode() not in cmdline
    finally:  # ended at once: the cancel is not what this is about
        if (run_dir / "engine.pid").is_file():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int((run_dir / "engine.pid").read_text()), signal.SIGKILL)
    said = out.out + out.err
    assert secret not in said and "HF_TOKEN=***" in said
    assert not marker.exists() and not (tmp_path / marker.name).exists()
    for root in (remote_env["evidence"], work):
        for path in root.rglob("*"):
            if path.is_file() and "envs" not in path.relative_to(root).parts:
                assert secret.encode() not in path.read_bytes(), path
