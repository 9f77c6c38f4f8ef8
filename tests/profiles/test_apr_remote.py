"""End to end on the real test sshd: the apr profile pulls a git ref, builds apr with cargo,
checks its --help, pulls the models, starts `apr distill` detached and follows its log.

The `apr` is a real binary built on the host from a real git repo; it execs apr_standin.py, which
prints the engine's line formats. Nothing here is mocked below the stand-in's training loop.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import pytest

from kdengine.config import ConfigError, RunConfig
from kdtui.profiles.apr.dispatch import AprLauncher
from kdtui.profiles.apr.headless import launch_apr, watch_apr_manifest
from kdtui.profiles.apr.schema import AprSettings

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(180)]


def run_config(name: str, **values) -> RunConfig:
    base = dict(teacher="hf://org/teacher/model.apr", student="org/student", steps=8,
                batch_size=8, lr=3e-4, temperature=2.0, alpha=0.3, run_name=name)
    base.update(values)
    return RunConfig.from_mapping(base)


def settings(repo: Path) -> AprSettings:
    return AprSettings(repo_url=str(repo), git_ref="v-test", steps_per_epoch=4)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def launch(config: RunConfig, host: str, repo: Path, evidence: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = await launch_apr(config, host, settings(repo), out=out, evidence_dir=evidence,
                            alive_every=1.0)
    return code, out.getvalue()


async def test_normal_run_builds_apr_launches_it_and_passes_on_training_batch_losses(
        apr_host, apr_repo, apr_work, tmp_path):
    host = apr_host("normal")
    name = unique("apr-ok")
    code, text = await launch(run_config(name), host, apr_repo, tmp_path)
    assert code == 0, text
    # every stage ran, in order, and said what it did
    for stage in ("preflight", "sync", "version", "check", "models", "launch", "manifest"):
        assert f"[{stage}] done" in text, (stage, text)
    assert "apr 0.31.2 (kdtui test stand-in)" in text
    assert "cargo build --release" in text and "--features cuda,training" in text
    # what reaches apr and what does not, shown before the launch
    assert "applied  steps=8 -> --epochs 2" in text
    assert "NOT applied  batch_size=8" in text and "NOT applied  lr=0.0003" in text
    # the run's own lines, then the verdict, marked as training-batch losses
    assert "  Step 4/4: loss:" in text and "Epoch 2/2: loss:" in text
    assert "verdict F-DISTILL-SMOKE-001 PASS: training-batch loss 5.2000 ->" in text
    assert "TRAINING-BATCH" in text
    manifest = json.loads((tmp_path / name / "dispatch.json").read_text())
    assert manifest["profile"] == "apr" and manifest["launched"] is True
    assert manifest["not_applied"]["batch_size"] == {
        "value": 8, "reason": manifest["not_applied"]["batch_size"]["reason"],
        "changed_from_default": True}
    assert manifest["applied"]["steps"]["arg"] == "2"
    assert manifest["engine_command"][1:] == [
        "distill", manifest["models"]["teacher"], "--student", manifest["models"]["student"],
        "--epochs", "2", "--temperature", "2.0", "--alpha", "0.3", "--backend", "cuda",
        "--output", f"{apr_work}/runs/{name}/student", "--json"]
    assert manifest["apr_version"] == "apr 0.31.2 (kdtui test stand-in)"
    assert len(manifest["remote_git_commit"]) == 40
    assert manifest["verdict"]["status"] == "pass"
    assert manifest["verdict"]["loss_kind"] == "train_batch"
    assert manifest["verdict"]["initial_val_loss"] is None
    assert manifest["run_finished"]["status"] == "completed"
    assert (apr_work / "runs" / name / "student" / "model.apr").is_file()

    # `kdtui watch` of the finished run, by its manifest: the same verdict again
    out = io.StringIO()
    assert await watch_apr_manifest(tmp_path / name / "dispatch.json", out=out,
                                    alive_every=1.0) == 0
    assert "verdict F-DISTILL-SMOKE-001 PASS" in out.getvalue()


async def test_early_exit_fails_the_launch_with_the_log_tail(apr_host, apr_repo, tmp_path):
    host = apr_host("early-exit")
    name = unique("apr-early")
    code, text = await launch(run_config(name), host, apr_repo, tmp_path)
    assert code == 2, text
    assert "[launch] failed" in text
    assert "apr distill exited within 1s (exit code 1)" in text
    assert "CUDA_ERROR_NO_DEVICE" in text  # the log tail, shown under the stage
    assert "  | [PMAT-701]" in text
    manifest = json.loads((tmp_path / name / "dispatch.json").read_text())
    assert manifest["launched"] is False and "exit code 1" in manifest["error"]
    assert manifest["not_applied"]["batch_size"]["value"] == 8


async def test_panic_mid_run_is_highlighted_and_ends_the_run(apr_host, apr_repo, tmp_path):
    host = apr_host("panic", step_delay=0.6)  # outlives the 1 s alive check, then panics
    name = unique("apr-panic")
    code, text = await launch(run_config(name), host, apr_repo, tmp_path)
    assert code == 2, text
    assert "[launch] done" in text
    assert "  Step 2/4: loss:" in text
    assert ("ERROR [panic] panic in thread 'main': called `Result::unwrap()` on an `Err` value: "
            "CUDA_ERROR_ILLEGAL_ADDRESS at crates/aprender-train/src/cuda_trainer.rs:1290:14"
            in text)
    assert "verdict F-DISTILL-SMOKE-001 INCONCLUSIVE" in text and "apr panicked at step 3" in text
    manifest = json.loads((tmp_path / name / "dispatch.json").read_text())
    assert manifest["run_finished"]["status"] == "failed"
    assert manifest["run_finished"]["exit_code"] == 101


async def test_help_without_a_flag_fails_preflight_naming_it_and_starts_nothing(
        apr_host, apr_repo, apr_work, tmp_path):
    host = apr_host("help-no-epochs")
    name = unique("apr-drift")
    code, text = await launch(run_config(name), host, apr_repo, tmp_path)
    assert code == 2, text
    assert "[check] failed" in text
    assert "apr distill on kdtest lacks --epochs" in text
    assert "[models]" not in text and "[launch]" not in text
    assert not (apr_work / "runs" / name / "launch.log").exists()


async def test_a_hostile_model_path_reaches_the_host_as_one_literal_word(
        apr_host, apr_repo, apr_work, tmp_path):
    host = apr_host("normal")
    name = unique("apr-quote")
    marker = tmp_path / "pwned"
    evil = f"/nonexistent/$(touch {marker}); touch {marker} #.apr"
    code, text = await launch(run_config(name, teacher=evil), host, apr_repo, tmp_path)
    assert code == 2
    assert f"teacher: {evil} is not a file on kdtest" in text
    assert not marker.exists()


def test_bad_input_is_refused_before_any_connection_naming_the_field(apr_host, apr_repo):
    host = apr_host("normal")
    with pytest.raises(ConfigError) as err:
        AprLauncher(run_config("x", student="hf://org/teacher/model.apr"), host,
                    settings(apr_repo))
    assert err.value.field == "student"
    with pytest.raises(ConfigError) as err:
        AprLauncher(run_config("x", device="cpu"), host, settings(apr_repo))
    assert err.value.field == "device"


def test_dry_run_lists_every_remote_command_and_the_not_applied_values(apr_host, apr_repo):
    host = apr_host("normal")
    lines = AprLauncher(run_config("dry"), host, settings(apr_repo)).dry_run()
    text = "\n".join(lines)
    assert "[sync] $ " in text and "gitsync" in text and "cargo build --release" in text
    assert "[check] $ " in text and "distill --help" in text
    assert "[models] $ " in text and "pull hf://org/teacher/model.apr" in text
    assert "[launch] $ " in text and "kdtui-apr-run" in text
    assert "NOT applied  batch_size=8" in text
    assert os.environ["KDTUI_HOSTS_FILE"]


async def test_reconnect_mid_run_resumes_the_log_without_duplicate_steps(
        apr_host, apr_repo, tmp_path, sshd):
    import asyncio

    from kdtui.profiles.apr.watch import follow_apr_to_verdict

    host = apr_host("normal", step_delay=0.4)
    launcher = AprLauncher(run_config(unique("apr-cut")), host, settings(apr_repo),
                           evidence_dir=tmp_path)
    handle = await launcher.start(lambda update: None)
    out = io.StringIO()
    try:
        watch = asyncio.create_task(follow_apr_to_verdict(handle, out=out, alive_every=1.0))
        while "Step 2/4" not in out.getvalue():
            await asyncio.sleep(0.05)
        assert sshd.kill_connections() >= 1  # a network cut, mid-run
        result = await asyncio.wait_for(watch, 60)
    finally:
        await handle.close()
    steps = [e["step"] for e in result.events if e["type"] == "step"]
    assert steps == list(range(1, 9))
    assert result.code == 0 and handle.link.reconnects >= 1


async def test_cancel_stops_apr_and_the_watch_ends_inconclusive(apr_host, apr_repo, tmp_path):
    import asyncio

    from kdtui.profiles.apr.watch import follow_apr_to_verdict

    host = apr_host("normal", step_delay=0.5)
    launcher = AprLauncher(run_config(unique("apr-cancel"), steps=40), host, settings(apr_repo),
                           evidence_dir=tmp_path)
    handle = await launcher.start(lambda update: None)
    out = io.StringIO()
    try:
        watch = asyncio.create_task(follow_apr_to_verdict(handle, out=out, alive_every=1.0))
        while "Step 1/4" not in out.getvalue():
            await asyncio.sleep(0.05)
        await handle.cancel()
        result = await asyncio.wait_for(watch, 60)
        state = await handle.status()
    finally:
        await handle.close()
    assert state["alive"] is False and state["exit_code"] is None  # killed, not exited
    assert result.code == 2 and result.finished["status"] == "cancelled"
    assert "the run was cancelled at step" in out.getvalue()
    assert state["cancelled"] is True  # apr.cancelled: every later watch knows it too


async def test_relaunching_a_running_run_reattaches_instead_of_starting_a_copy(
        apr_host, apr_repo, tmp_path):
    host = apr_host("normal", step_delay=0.5)
    config = run_config(unique("apr-again"), steps=40)
    first = io.StringIO()
    assert await launch_apr(config, host, settings(apr_repo), out=first, detach=True,
                            evidence_dir=tmp_path) == 0
    again = io.StringIO()
    launcher = AprLauncher(config, host, settings(apr_repo), evidence_dir=tmp_path)
    from kdtui.headless import StagePrinter

    handle = await launcher.start(StagePrinter(again))
    try:
        text = again.getvalue()
        assert "[launch] skipped" in text and "reattached, no copy started" in text
        assert "[sync]" in text and "[models] skipped" in text
        manifest = json.loads(handle.manifest.read_text())
        assert manifest["launched"] is True and manifest["reattached_at"]
        assert f"(pid {manifest['pid']})" in first.getvalue()
        await handle.cancel()
    finally:
        await handle.close()


async def test_a_finished_apr_run_reopens_in_the_dashboard_by_its_run_id(
        apr_host, apr_repo, tmp_path, monkeypatch):
    from kdtui.app import KDApp
    from kdtui.screens.run import RunScreen
    from kdtui.widgets.run_panels import VerdictPanel

    name = unique("apr-tui")
    code, text = await launch(run_config(name), apr_host("normal"), apr_repo, tmp_path)
    assert code == 0, text
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path))
    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    app = KDApp(runs_dir=tmp_path / "local-runs", command="watch", watch_ref=name)
    async with app.run_test(size=(150, 44)) as pilot:
        for _ in range(300):
            if isinstance(app.screen, RunScreen) and \
                    app.screen.query_one(VerdictPanel).status != "pending":
                break
            await pilot.pause(0.1)
        panel = app.screen.query_one(VerdictPanel)
        assert (panel.status, panel.verdict.loss_kind) == ("pass", "train_batch")
        assert app.screen.sub_title.startswith(f"{name} on ")


async def test_launch_profile_apr_without_headless_runs_in_the_dashboard(
        apr_host, apr_repo, tmp_path, monkeypatch):
    from kdtui.app import KDApp
    from kdtui.cli import build_parser
    from kdtui.profiles.apr.cli import apr_launcher_from_args
    from kdtui.screens.run import RunScreen
    from kdtui.widgets.run_panels import StageTracker, VerdictPanel

    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path))
    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    name = unique("apr-form")
    args = build_parser().parse_args([
        "launch", "--profile", "apr", "--host", apr_host("normal"), "--apr-repo", str(apr_repo),
        "--apr-ref", "v-test", "--run-name", name, "--teacher", "hf://org/teacher/model.apr",
        "--student", "org/student", "--steps", "8", "--temperature", "2.0"])
    launcher = apr_launcher_from_args(args)
    app = KDApp(runs_dir=tmp_path / "local-runs", command="launch", launcher=launcher)
    async with app.run_test(size=(150, 44)) as pilot:
        for _ in range(1200):
            if isinstance(app.screen, RunScreen) and \
                    app.screen.query_one(VerdictPanel).status != "pending":
                break
            await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        assert screen.query_one(VerdictPanel).status == "pass"
        rows = screen.query_one(StageTracker).rows
        assert all(rows[s].state == "done" for s in ("preflight", "sync", "launch", "manifest"))
    assert (tmp_path / name / "dispatch.json").exists()
