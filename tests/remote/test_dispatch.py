"""Dispatch over real SSH to the test sshd: stages, run, verdict, manifest, fallback, reattach."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from kdengine.config import RunConfig
from kdengine.events import read_events
from kdengine.verdict import verdict_for_run
from kdtui.cli import main as kdtui_main
from kdtui.launch.remote import DispatchError, RemoteLauncher, RemoteRunHandle

pytestmark = pytest.mark.ssh

TINY = dict(steps=20, batch_size=4, seq_len=32, lr=3e-3, eval_every=10, eval_batches=2,
            log_every=1, checkpoint_every=10, temperature=2.0)


def tiny_flags(inputs: dict[str, str], **overrides: object) -> list[str]:
    values = {**TINY, **overrides}
    flags = ["--teacher", inputs["teacher"], "--student", inputs["student"],
             "--data", inputs["data"]]
    for key, value in values.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def tiny_config(inputs: dict[str, str], **overrides: object) -> RunConfig:
    values = {**TINY, **overrides}
    return RunConfig.from_mapping({**values, "teacher": inputs["teacher"],
                                   "student": inputs["student"], "data": inputs["data"]})


def test_full_dispatch_runs_to_verdict_and_writes_manifest(remote_env, tiny_run_inputs, capsys):
    code = kdtui_main(["launch", "--headless", "--host", "kdtest", "--run-name", "full-1",
                       *tiny_flags(tiny_run_inputs)])
    out = capsys.readouterr().out
    for stage in ("preflight", "sync", "check", "models", "launch", "manifest"):
        assert f"[{stage}] " in out, out
    assert "[check] done" in out
    assert "[models] skipped" in out  # local paths: nothing to pull
    run_dir = remote_env["work"] / "runs" / "full-1"
    verdict = verdict_for_run(str(run_dir))
    assert f"result: {verdict.summary()} (exit {verdict.exit_code})" in out
    assert code == verdict.exit_code, out
    # every log line of the run was printed, in order
    log_lines = (run_dir / "launch.log").read_text().splitlines()
    printed = out.splitlines()
    start = printed.index(log_lines[0])
    assert printed[start:start + len(log_lines)] == log_lines

    manifest = json.loads((remote_env["evidence"] / "full-1" / "dispatch.json").read_text())
    assert manifest["run_id"] == "full-1" and manifest["host"] == "kdtest"
    assert manifest["launched"] and isinstance(manifest["pid"], int)
    assert manifest["remote_run_dir"] == str(run_dir)
    assert manifest["user"] == os.environ.get("USER", "root")
    assert manifest["config"]["batch_size"] == 4 and manifest["config"]["lr"] == 3e-3
    assert manifest["dispatched_at"].endswith("Z")
    assert manifest["verdict"]["status"] == verdict.status
    assert [s["stage"] for s in manifest["attempts"][0]["stages"]] == \
        ["preflight", "sync", "check", "models", "launch", "manifest"]
    assert all(isinstance(s["elapsed"], float) for s in manifest["attempts"][0]["stages"])
    # the engine ran from the per-version venv, with exactly the asked config
    started = read_events(run_dir / "events.jsonl")[0]
    assert started["config"] == manifest["config"]
    assert manifest["engine_command"][0].startswith(str(remote_env["work"] / "envs"))


def test_second_dispatch_skips_sync(remote_env, tiny_run_inputs, capsys):
    for name in ("skip-a", "skip-b"):
        code = kdtui_main(["launch", "--headless", "--detach", "--host", "kdtest",
                           "--run-name", name, *tiny_flags(tiny_run_inputs)])
        assert code == 0
    out = capsys.readouterr().out
    assert "[sync] skipped" in out.split("[preflight] running")[-1]


def test_down_primary_falls_back_to_the_fallback_host(remote_env, tiny_run_inputs, capsys):
    code = kdtui_main(["launch", "--headless", "--detach", "--host", "kdtest-down",
                       "--fallback-host", "kdtest", "--run-name", "fb-1",
                       *tiny_flags(tiny_run_inputs)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[preflight] failed" in out and "on kdtest-down" in out
    assert "cannot reach kdtest-down" in out
    assert out.count("trying the fallback host kdtest") == 1  # the note once, not per stage
    manifest = json.loads((remote_env["evidence"] / "fb-1" / "dispatch.json").read_text())
    assert manifest["host"] == "kdtest"
    first, second = manifest["attempts"]
    assert first["host"] == "kdtest-down" and not first["ok"]
    assert first["stages"][0]["state"] == "failed"
    assert second["host"] == "kdtest" and second["ok"]


@pytest.mark.parametrize("alias,word", [("kdtest-unknown", "unknown"),
                                        ("kdtest-changed", "CHANGED")])
def test_untrusted_host_key_is_refused_with_its_fingerprint(remote_env, sshd, tiny_run_inputs,
                                                            capsys, alias, word):
    code = kdtui_main(["launch", "--headless", "--host", alias, "--run-name", "hk-1",
                       *tiny_flags(tiny_run_inputs)])
    out = capsys.readouterr().out
    assert code == 2
    assert f"host key of {alias}" in out and word in out
    fingerprint = sshd.host_key_pub  # the fingerprint shown is the server's real one
    import asyncssh

    expected = asyncssh.import_public_key(fingerprint).get_fingerprint("sha256")
    assert expected in out
    assert ("ssh-keyscan" in out) if word == "unknown" else ("ssh-keygen -R" in out)
    assert not (remote_env["work"] / "runs" / "hk-1").exists()


def test_redispatch_of_a_running_run_reattaches_and_cancel_ends_it(remote_env, tiny_run_inputs):
    config = tiny_config(tiny_run_inputs, steps=100000, eval_every=0, checkpoint_every=0,
                         log_every=50, run_name="long-1")

    async def scenario() -> tuple[int, int, list[str], dict]:
        first = await RemoteLauncher(config, "kdtest").start(lambda u: None)
        updates = []
        second = await RemoteLauncher(config, "kdtest").start(updates.append)
        try:
            assert second.pid == first.pid
            launch = [u for u in updates if u.stage == "launch" and u.state != "running"]
            await first.cancel()
            for _ in range(100):
                state = await first.status()
                if state["finished"]:
                    break
                await asyncio.sleep(0.2)
            return first.pid, second.pid, [u.detail for u in launch], state
        finally:
            await first.close()
            await second.close()

    pid1, pid2, details, state = asyncio.run(scenario())
    assert pid1 == pid2
    assert any("reattached, no copy started" in d for d in details)
    assert state["finished"]["status"] == "cancelled"
    assert _wait_until_no_process_with("long-1"), "the engine outlived its cancellation"


def _processes_with(text: str) -> list[str]:
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() and \
                    Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(pid)
        except (OSError, IndexError):
            continue
    return out


def _wait_until_no_process_with(text: str, timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _processes_with(text):
            return True
        time.sleep(0.1)
    return False


def test_engine_refusal_fails_the_check_stage_never_the_run(remote_env, tiny_run_inputs):
    config = tiny_config({**tiny_run_inputs, "data": "/nonexistent/corpus"}, run_name="bad-1")
    updates = []
    with pytest.raises(DispatchError, match="data"):
        asyncio.run(RemoteLauncher(config, "kdtest").start(updates.append))
    failed = [u for u in updates if u.state == "failed"]
    assert [u.stage for u in failed] == ["check"]
    assert "does not exist" in failed[0].detail
    assert not (remote_env["work"] / "runs" / "bad-1").exists()
    manifest = json.loads((remote_env["evidence"] / "bad-1" / "dispatch.json").read_text())
    assert manifest["launched"] is False and "data" in manifest["error"]


def test_watch_by_run_id_reattaches_from_the_manifest(remote_env, tiny_run_inputs, capsys):
    assert kdtui_main(["launch", "--headless", "--detach", "--host", "kdtest",
                       "--run-name", "later-1", *tiny_flags(tiny_run_inputs)]) == 0
    assert "kdtui watch later-1" in capsys.readouterr().out
    code = kdtui_main(["watch", "later-1", "--headless"])
    out = capsys.readouterr().out
    verdict = verdict_for_run(str(remote_env["work"] / "runs" / "later-1"))
    assert code == verdict.exit_code
    assert f"result: {verdict.summary()} (exit {verdict.exit_code})" in out
    handle = RemoteRunHandle.from_manifest(remote_env["evidence"] / "later-1" / "dispatch.json")
    assert handle.run_dir == str(remote_env["work"] / "runs" / "later-1")


def test_redispatch_of_a_finished_run_is_refused_and_keeps_its_manifest(remote_env,
                                                                       tiny_run_inputs, capsys):
    flags = ["--host", "kdtest", "--run-name", "done-1", *tiny_flags(tiny_run_inputs)]
    first = kdtui_main(["launch", "--headless", *flags])
    manifest_file = remote_env["evidence"] / "done-1" / "dispatch.json"
    before = json.loads(manifest_file.read_text())
    assert kdtui_main(["launch", "--headless", *flags]) == 2
    out = capsys.readouterr().out
    assert "already holds a run (completed)" in out and "kdtui watch done-1" in out
    after = json.loads(manifest_file.read_text())
    assert after["launched"] and after["pid"] == before["pid"]
    assert after["verdict"] == before["verdict"]
    assert first in (0, 1)
    assert len(after["refused_redispatches"]) == 1
