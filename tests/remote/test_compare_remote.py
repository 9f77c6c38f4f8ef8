"""Comparing a remote dispatch with local runs: its events read over the real test sshd (SFTP,
verified host key), in `kdtui compare --plain` and on the compare screen; a host that is down or
whose key is unknown is one line, never a hang or a traceback, and holds up no other run.

The remote runs here are recorded runs (tests/tui/test_compare.py's `write_kd_run`: events as
the engine writes them) in the sshd's work dir, with the dispatch.json a dispatch leaves; the
last test dispatches a real run and compares it from the runs list."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable

from kdtui.app import KDApp
from kdtui.cli import main as kdtui_main
from kdtui.compare import CompareTarget
from kdtui.remote.manifest import manifest_path, write_manifest
from kdtui.screens.compare import CompareScreen
from kdtui.screens.runs import RunsScreen

_spec = importlib.util.spec_from_file_location(
    "kdtui_tests_tui_compare", Path(__file__).resolve().parents[1] / "tui" / "test_compare.py")
_recorded = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_recorded)
write_kd_run = _recorded.write_kd_run  # a recorded run, as the compare tests write them

pytestmark = pytest.mark.ssh


def dispatched(remote_env: dict[str, Path], run_id: str, host: str = "kdtest",
               **run: object) -> Path:
    """A recorded run in the sshd's work dir and the dispatch.json that points at it."""
    run_dir = write_kd_run(remote_env["work"] / "runs" / run_id, **run)
    config = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])["config"]
    return write_manifest(manifest_path(run_id, remote_env["evidence"]), {
        "run_id": run_id, "host": host, "remote_run_dir": str(run_dir), "launched": True,
        "config": config, "dispatched_at": "2026-11-29T12:00:00Z"})


def table_rows(screen: CompareScreen) -> dict[str, dict[str, str]]:
    table = screen.query_one(DataTable)
    head = [str(c.label) for c in table.columns.values()]
    rows = ([str(c) for c in table.get_row_at(i)] for i in range(table.row_count))
    return {r[0].removeprefix("■ "): dict(zip(head, r, strict=True)) for r in rows}


def test_plain_compare_reads_a_remote_dispatch_beside_a_local_run(remote_env, tmp_path,
                                                                    capsys) -> None:
    runs = tmp_path / "runs"
    write_kd_run(runs / "local-t2", ce=(5.3, 1.72), val_loss=(7.0, 1.2))
    dispatched(remote_env, "remote-t4", ce=(5.3, 1.64), val_loss=(7.0, 1.3), temperature=4.0)
    # by run id, and by its dispatch.json
    for ref in ("remote-t4", str(manifest_path("remote-t4", remote_env["evidence"]))):
        assert kdtui_main(["--runs-dir", str(runs), "compare", "local-t2", ref, "--plain"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:3] == ["run", "temperature", "final"]
        assert lines[1].split()[:3] == ["local-t2", "2", "1.7200"]
        assert lines[2].split()[:3] == ["remote-t4@kdtest", "4", "1.6400"]


@pytest.mark.parametrize(("host", "says"), [
    ("kdtest-unknown", "host key"),  # never trusted silently: refused at once
    ("kdtest-changed", "host key"),
    # said at once, as `kdtui cancel` says it (it waited 20 s, retrying, before)
    ("kdtest-down", "cannot reach kdtest-down"),
])
def test_plain_compare_of_a_run_on_a_host_it_cannot_read_is_one_line_and_exit_2(
        remote_env, tmp_path, host, says) -> None:
    runs = tmp_path / "runs"
    write_kd_run(runs / "local", ce=(5.3, 1.72), val_loss=(7.0, 1.2))
    dispatched(remote_env, "far", host=host, ce=(5.3, 1.6), val_loss=(7.0, 1.3))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "kdtui", "--runs-dir", str(runs), "compare",
                          "local", "far", "--plain"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdtui compare: error: far@" + host), lines
    assert says in lines[0] and "Traceback" not in out.stderr
    assert time.monotonic() - start < (15 if host == "kdtest-down" else 90)


def test_a_dispatch_with_no_run_to_read_is_refused_before_anything_opens(remote_env, tmp_path,
                                                                         capsys) -> None:
    runs = tmp_path / "runs"
    write_kd_run(runs / "local", ce=(5.3, 1.72), val_loss=(7.0, 1.2))
    write_manifest(manifest_path("never", remote_env["evidence"]), {
        "run_id": "never", "host": "kdtest", "launched": False, "error": "sync failed"})
    assert kdtui_main(["--runs-dir", str(runs), "compare", "local", "never"]) == 2
    assert capsys.readouterr().err.strip() == (
        "kdtui compare: error: never: this dispatch never started a run (sync failed)")


def test_a_remote_run_whose_directory_is_gone_is_one_line_naming_it(remote_env, tmp_path,
                                                                     capsys) -> None:
    import shutil

    runs = tmp_path / "runs"
    write_kd_run(runs / "local", ce=(5.3, 1.72), val_loss=(7.0, 1.2))
    dispatched(remote_env, "wiped", ce=(5.3, 1.6), val_loss=(7.0, 1.3))
    shutil.rmtree(remote_env["work"] / "runs" / "wiped")
    assert kdtui_main(["--runs-dir", str(runs), "compare", "local", "wiped", "--plain"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kdtui compare: error: wiped@kdtest: no events in {remote_env['work']}/runs/wiped on "
        "kdtest (the run directory is gone?)")


async def test_the_compare_screen_follows_a_remote_run_live_and_a_down_host_holds_up_nothing(
        remote_env, tmp_path, wait_for) -> None:
    runs = tmp_path / "runs"
    local = write_kd_run(runs / "local", ce=(5.3, 1.72), val_loss=(7.0, 1.2))
    live = dispatched(remote_env, "live", ce=(5.3, 1.5), val_loss=(7.0, 1.1), upto=60,
                      finished=False, alpha=0.5)
    down = dispatched(remote_env, "gone", host="kdtest-down", ce=(5.3, 1.6), val_loss=(7, 1.3))
    targets = [CompareTarget.local(local), CompareTarget.dispatched(live),
               CompareTarget.dispatched(down)]
    app = KDApp(runs_dir=runs, command="compare", compare_targets=targets)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen)
                       and {"local", "live@kdtest"} <= {k for k, v in table_rows(
                           app.screen).items() if v["final val CE"] != "–"})
        screen = app.screen
        assert table_rows(screen)["gone@kdtest-down"]["final val CE"] == "–"
        links = screen.query_one("#compare-links")
        await wait_for(pilot, lambda: links.display)
        line = str(links.render())
        assert line.startswith("gone@kdtest-down: link lost "), line
        assert "retry in" in line and "\n" not in line and len(line) < 80
        # the remote run goes on: its next eval, written on the host, reaches the table
        remote_events = remote_env["work"] / "runs" / "live" / "events.jsonl"
        with open(remote_events, "a") as fh:
            fh.write(json.dumps({"v": 1, "seq": 999, "t": time.time(), "type": "eval",
                                 "step": 100, "val_loss": 4.0, "val_ce": 3.4,
                                 "val_kd": 0.3}) + "\n")
        await wait_for(pilot, lambda: table_rows(screen)["live@kdtest"]["final val CE"]
                       == "3.4000")
        await pilot.press("c")  # the screen answers while a host is down
        assert screen.query_one("#compare-chart").border_title == "val KD"
        assert screen.sub_title == "compare 3 runs"


@pytest.mark.timeout(600)
async def test_a_real_remote_run_and_a_local_one_compare_from_the_runs_list(
        remote_env, tiny_run_inputs, tmp_path, monkeypatch, wait_for, engine_in_process) -> None:
    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(tmp_path / "kdtui-config"))
    flags = ["--steps", "8", "--batch-size", "4", "--seq-len", "32", "--eval-every", "4",
             "--eval-batches", "2", "--checkpoint-every", "8", "--temperature", "2.0"]
    models = ["--teacher", tiny_run_inputs["teacher"], "--student", tiny_run_inputs["student"],
              "--data", tiny_run_inputs["data"]]
    # the same run on the host (headless, waits for its verdict) and here, another alpha
    code = await asyncio.to_thread(kdtui_main, ["launch", "--headless", "--host", "kdtest",
                                                "--run-name", "cmp-remote", *models, *flags])
    assert code == 0
    runs = tmp_path / "runs"
    # in this process: a new one added only its torch import
    done = engine_in_process("train", *models, *flags, "--alpha", "1.0", "--run-name",
                             "cmp-local", "--run-dir", str(runs / "cmp-local"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    app = KDApp(runs_dir=runs)
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(RunsScreen())
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and len(app.screen.runs) == 2)
        await pilot.press("space", "space", "c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen)
                       and all(v["final val CE"] != "–" for v in table_rows(app.screen).values()))
        rows = table_rows(app.screen)
        assert set(rows) == {"cmp-remote@kdtest", "cmp-local"}
        assert rows["cmp-remote@kdtest"]["alpha"] == "0.3" and rows["cmp-local"]["alpha"] == "1"
        assert rows["cmp-remote@kdtest"]["verdict"] in ("PASS", "PASS ⚠", "FAIL", "FAIL ⚠")
