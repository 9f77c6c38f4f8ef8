"""The run screen, driven as a user drives it: real engine runs started from the form, the log
pane's highlights, jumps, filter and follow, the runs list, and quitting with a run going."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import Input, Switch

from kdtui.app import KDApp
from kdtui.runs import list_runs
from kdtui.screens.dialogs import QuitScreen
from kdtui.screens.run import RunScreen
from kdtui.screens.runs import RunsScreen
from kdtui.widgets.log_view import ERROR, ERROR_MORE, LogView
from kdtui.widgets.loss_chart import LossChart
from kdtui.widgets.run_panels import RunProgress, StageTracker, VerdictPanel

SIZE = (160, 48)


def _run_screen_up(app: KDApp) -> bool:
    """The run screen is shown and composed (under load, its panels come a moment after it)."""
    return isinstance(app.screen, RunScreen) and bool(app.screen.query(VerdictPanel))


def _fill(screen, **values: str) -> None:
    for name, value in values.items():
        screen.query_one(f"#field-{name}", Input).value = value


@pytest.mark.timeout(900)  # the demo teacher may be trained here (once a session); see QUIET_S
async def test_demo_preset_run_from_the_form_ends_in_pass(runs_dir, wait_for, wait_for_run):
    """F2, a shorter schedule, ctrl+r: the embedded engine trains the real demo to a PASS."""
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        await pilot.press("f2")
        _fill(app.screen, steps="60", eval_every="30", checkpoint_every="0", run_name="demo1")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: _run_screen_up(app), 120)
        screen = app.screen
        panel = screen.query_one(VerdictPanel)
        await wait_for_run(pilot, runs_dir / "demo1", lambda: panel.status != "pending",
                           "the verdict", 0.5)
        await pilot.pause(0.3)
        assert panel.status == "pass", screen.query_one(LogView).lines[-30:]
        assert panel.verdict.final_val_loss < panel.verdict.initial_val_loss
        tracker = screen.query_one(StageTracker)
        assert {r.name: r.state for r in tracker.rows.values()} == {
            s: "done" for s in ("check", "start", "prepare", "load_teacher", "load_student",
                                "data", "train", "final_eval", "verdict")}
        assert screen.query_one(LossChart).point_count > 10
        # the engine's own verdict event agrees with the one the dashboard computed
        events = [json.loads(x) for x in (runs_dir / "demo1" / "events.jsonl").open()]
        engine = next(e for e in events if e["type"] == "verdict")
        assert engine["status"] == panel.verdict.status
        assert (runs_dir / "demo1" / "engine.pid").exists()


async def test_tiny_run_then_quit_leaves_nothing_to_ask(
        runs_dir, wait_for, wait_for_run, tiny_run_inputs):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        _fill(app.screen, **tiny_run_inputs, steps="30", batch_size="4", seq_len="32",
              lr="0.003", eval_every="10", eval_batches="2", log_every="1",
              checkpoint_every="0", run_name="tiny")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: _run_screen_up(app), 120)
        panel = app.screen.query_one(VerdictPanel)
        await wait_for_run(pilot, runs_dir / "tiny", lambda: panel.status != "pending",
                           "the verdict")
        assert panel.status == "pass"
        # the launch.log holds each line once (the engine saw its stdout already is the log)
        log = (runs_dir / "tiny" / "launch.log").read_text().splitlines()
        assert sum(line.startswith("step 30/30") for line in log) == 1
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert not any(isinstance(s, QuitScreen) for s in app.screen_stack)
    assert app.return_code == 0  # nothing running: quit without asking


async def test_quit_with_a_run_going_asks_and_can_stop_it(
        runs_dir, wait_for, wait_for_run, tiny_run_inputs):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        _fill(app.screen, **tiny_run_inputs, steps="1000000", seq_len="32", batch_size="2",
              eval_every="0", log_every="1", checkpoint_every="0", run_name="long")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: _run_screen_up(app), 120)
        screen = app.screen
        await wait_for_run(pilot, runs_dir / "long", lambda: screen.state.last_step is not None,
                           "a first step")
        handle = screen.handle
        assert handle.is_alive()
        assert os.getpgid(handle.pid) == handle.pid  # its own process group
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), 5)
        await pilot.click("#stop")
        await wait_for_run(pilot, runs_dir / "long", lambda: not handle.is_alive(),
                           "the engine's exit")
    events = [json.loads(x) for x in (runs_dir / "long" / "events.jsonl").open()]
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "cancelled"


async def test_leaving_a_run_going_keeps_it_running_for_reattach(
        runs_dir, wait_for, wait_for_run, tiny_run_inputs):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        _fill(app.screen, **tiny_run_inputs, steps="1000000", seq_len="32", batch_size="2",
              eval_every="0", log_every="1", checkpoint_every="0", run_name="bg")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: _run_screen_up(app), 120)
        screen = app.screen
        await wait_for_run(pilot, runs_dir / "bg", lambda: screen.state.last_step is not None,
                           "a first step")
        handle = screen.handle
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), 5)
        await pilot.click("#leave")
        await pilot.pause()
    try:
        assert handle.is_alive()
        [info] = list_runs(runs_dir)
        assert info.status == "running" and info.pid == handle.pid
        # the train stage has run a while before the new dashboard comes (its clock must say so)
        events = [json.loads(x) for x in (runs_dir / "bg" / "events.jsonl").open()]
        train_t = next(e["t"] for e in events if e["type"] == "stage"
                       and e["stage"] == "train" and e["state"] == "running")
        while time.time() - train_t < 3:
            assert handle.is_alive()
            time.sleep(0.1)
        # a new dashboard reattaches from the runs list and sees new steps arrive
        app = KDApp(runs_dir=runs_dir)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), 5)
            await pilot.press("enter")
            await wait_for(pilot, lambda: _run_screen_up(app), 30)
            screen = app.screen
            await wait_for_run(pilot, runs_dir / "bg",
                               lambda: screen.state.last_step is not None, "a step")
            first = screen.state.last_step["step"]
            await wait_for_run(pilot, runs_dir / "bg",
                               lambda: screen.state.last_step["step"] > first, "a new step")
            assert screen.sub_title == "bg on local · reattached (running)"
            # the running stage's clock continues from the stage's start, not from 0
            train = screen.query_one(StageTracker).rows["train"]
            assert train.state == "running"
            assert time.monotonic() - train.since >= time.time() - train_t - 1.0 >= 2.0
            await pilot.press("x")
            await pilot.pause()
            await pilot.click("#yes")
            await wait_for_run(pilot, runs_dir / "bg",
                               lambda: screen.query_one(VerdictPanel).status != "pending",
                               "the verdict after the stop")
            assert screen.query_one(VerdictPanel).status == "inconclusive"
            # the title says how the run ended, not how it stood when it was opened
            assert screen.sub_title == "bg on local · cancelled"
    finally:
        if handle.is_alive():
            os.killpg(handle.pid, 9)


TRACEBACK = [
    "step 3/10 loss=2.0",
    "Traceback (most recent call last):",
    '  File "kdengine/trainer.py", line 12, in run',
    "    loss.backward()",
    "RuntimeError: boom",
    "step 4/10 loss=1.9",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "step 5/10 loss=NaN",
    "thread 'main' PANICKED at src/lib.rs:1",
    "all good here",
]


async def test_log_highlights_a_planted_traceback_and_jumps_to_each_error(
        runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "planted", steps=20, log_extra=TRACEBACK)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        log = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: log.line_count > 20)
        at = {line: i for i, line in enumerate(log.lines)}
        block = [at[line] for line in TRACEBACK[1:5]]
        assert log.kinds[block[0]] == ERROR  # the whole Traceback block is one error
        assert all(log.kinds[i] == ERROR_MORE for i in block[1:])
        assert log.kinds[at["step 4/10 loss=1.9"]] != ERROR
        assert log.kinds[at["all good here"]] != ERROR
        log.focus()
        await pilot.press("home")
        jumps = []
        for _ in range(4):
            await pilot.press("e")
            jumps.append(log.lines[log.cursor])
        assert jumps == ["Traceback (most recent call last):", TRACEBACK[6], TRACEBACK[7],
                         TRACEBACK[8]]
        # the jumped-to line is on screen
        assert TRACEBACK[8] in log.visible_lines()
        await pilot.press("e")  # wraps around to the first error
        assert log.lines[log.cursor] == TRACEBACK[1]


async def test_filter_keeps_steps_evals_stages_warnings_errors_and_the_verdict(
        runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "filtered", steps=120,
                    log_extra=[*TRACEBACK, "WARNING: the data is smaller than one epoch"])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        log = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: log.line_count > 120)
        log.focus()
        await pilot.press("f")
        await pilot.pause()
        shown = [log.lines[i] for i in log._view]
        assert "all good here" not in shown and "run filtered on cpu (float32)" not in shown
        assert "step 4/10 loss=1.9" in shown and TRACEBACK[8] in shown
        assert "[prepare] done (0.1s)" in shown and "[train] running" in shown
        # every eval, not only step 0's (the seed's grep kept those tagged initial_loss only)
        assert [line.split()[2] for line in shown if line.startswith("eval step")] == \
            ["0", "50", "100", "120"]
        assert "WARNING: the data is smaller than one epoch" in shown
        assert any("verdict F-DISTILL-SMOKE-001 PASS" in line for line in shown)
        assert log.border_title == \
            "log (filtered: steps, evals, stages, errors, warnings, verdict)"
        assert set(log.visible_lines()) <= set(shown)
        await pilot.press("f")
        await pilot.pause()
        assert log.visible_count == log.line_count


@pytest.fixture(scope="module")
def real_failed_run(tmp_path_factory) -> Path:
    """A real engine run whose train stage fails after evals at steps 0, 10, 20 and 30: its
    checkpoint directory's name is taken by a file, so the step-30 checkpoint cannot be saved."""
    import importlib.util

    # tests/conftest.py by path: "conftest" may name tests/tui/conftest.py here
    spec = importlib.util.spec_from_file_location(
        "kd_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    assert spec is not None and spec.loader is not None
    shared = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared)
    write_tiny_inputs, tiny_run_args = shared.write_tiny_inputs, shared.tiny_run_args
    base = tmp_path_factory.mktemp("failed")
    inputs = write_tiny_inputs(base / "inputs")
    run_dir = base / "runs" / "broke"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoints").write_text("not a directory\n")
    done = subprocess.run(
        [sys.executable, "-m", "kdengine", *tiny_run_args(inputs, run_dir, steps=60,
                                                          eval_every=10, checkpoint_every=30)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "KDENGINE_RUNS_DIR": str(base / "runs")})
    assert done.returncode == 1, done.stdout + done.stderr
    return run_dir


async def test_filter_of_a_real_failed_run_keeps_every_eval_and_the_failed_stage(
        real_failed_run, wait_for):
    log_lines = (real_failed_run / "launch.log").read_text().splitlines()
    failed = next(line for line in log_lines if line.startswith("[train] failed"))
    app = KDApp(runs_dir=real_failed_run.parent, command="watch", watch_ref=str(real_failed_run))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        log = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: log.line_count >= len(log_lines))
        log.focus()
        await pilot.press("f")
        await pilot.pause()
        shown = [log.lines[i] for i in log._view]
        evals = [line.split()[2] for line in shown if line.startswith("eval step")]
        assert evals == ["0", "10", "20", "30"]
        assert failed in shown and "[train] running" in shown
        assert any(line.startswith("ERROR: FileExistsError") for line in shown)
        assert not any(line.startswith("run ") and " on cpu" in line for line in shown)


async def test_a_failed_run_has_one_verdict_on_its_screen_and_in_the_runs_list(
        real_failed_run, wait_for):
    """No verdict event (the run failed before its verdict stage): the run screen and the runs
    list both say what kdengine.verdict says of it, INCONCLUSIVE, and the screen says why."""
    from kdengine.verdict import verdict_for_run

    expected = verdict_for_run(str(real_failed_run))
    assert expected.status == "inconclusive"
    events = [json.loads(x) for x in (real_failed_run / "events.jsonl").open()]
    assert not any(e["type"] == "verdict" for e in events)
    app = KDApp(runs_dir=real_failed_run.parent)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), 5)
        runs = app.screen
        [entry] = runs.runs
        assert (entry.status, entry.verdict) == ("failed", "inconclusive")
        table = runs.query_one("#runs-table")
        assert table.get_row_at(0)[2:4] == ["failed", "INCONCLUSIVE"]
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5)
        panel = app.screen.query_one(VerdictPanel)
        await wait_for(pilot, lambda: panel.status != "pending")
        assert panel.status == "inconclusive" and panel.verdict == expected
        assert panel.verdict.reason.startswith("the run failed at step 30: ")
        assert app.screen.sub_title.endswith(" · failed")
    listed = subprocess.run([sys.executable, "-m", "kdtui", "--runs-dir",
                             str(real_failed_run.parent), "runs", "--plain"],
                            capture_output=True, text=True, timeout=60)
    assert listed.stdout.split("\t")[2:5] == ["failed", "30/60", "inconclusive"]


async def test_progress_knows_the_total_steps_before_the_first_event(
        runs_dir, wait_for, write_run):
    """An engine still importing torch has written only its config.json: `step 0 / 500`."""
    run = runs_dir / "starting"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"steps": 500, "run_name": "starting"}))
    (run / "engine.pid").write_text(f"{os.getpid()}\n")
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        progress = app.screen.query_one(RunProgress)
        await wait_for(pilot, lambda: progress.total == 500)
        assert "step 0 / 500" in progress.render().plain


async def test_search_jumps_to_matches_case_insensitively(runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "searched", steps=20, log_extra=TRACEBACK)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        log = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: log.line_count > 20)
        await pilot.press("slash")
        await pilot.press(*"ALL GOOD", "enter")
        await pilot.pause()
        assert log.lines[log.cursor] == "all good here"


async def test_log_stops_following_when_scrolled_up_and_counts_new_lines(
        runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "follow", steps=200, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        log = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: log.line_count > 200)
        assert log.following and log.scroll_offset.y == log.max_scroll_y
        log.scroll_to(y=0, animate=False, immediate=True)
        await pilot.pause()
        assert not log.following
        with open(run / "launch.log", "a") as fh:
            fh.write("".join(f"late line {i}\n" for i in range(7)))
        await wait_for(pilot, lambda: log.new_lines == 7)
        assert log.border_subtitle.startswith("+7 new lines")
        assert log.scroll_offset.y == 0  # the user's place is kept
        await pilot.press("end")
        await pilot.pause()
        assert log.following and log.new_lines == 0 and "late line 6" in log.visible_lines()


async def test_reopen_a_finished_run_from_the_runs_list(runs_dir, wait_for, write_run):
    write_run(runs_dir / "older", steps=100)
    write_run(runs_dir / "finished", steps=200)
    os.utime(runs_dir / "older" / "events.jsonl", (1, 1))
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), 5)
        runs = app.screen
        assert [r.run_id for r in runs.runs][0] == "finished"
        assert runs.runs[0].status == "completed" and runs.runs[0].verdict == "pass"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5)
        screen = app.screen
        panel = screen.query_one(VerdictPanel)
        await wait_for(pilot, lambda: panel.status != "pending")
        assert panel.status == "pass"
        assert panel.verdict.final_step == 200
        assert screen.query_one(LossChart).point_count == 200
        assert screen.query_one(LogView).line_count > 200
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is runs


async def test_screenshot_key_saves_an_svg_into_the_run_dir(runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "shot", steps=20)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="shot")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("f8")
        await pilot.pause()
    svgs = list(Path(run).glob("kdtui-*.svg"))
    assert len(svgs) == 1 and svgs[0].read_text().startswith("<svg")


async def test_dry_run_switch_is_remembered_with_the_values(runs_dir, wait_for, write_run):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("f2")
        app.screen.query_one("#dry_run", Switch).value = True
        await pilot.press("ctrl+r")
        await pilot.pause(0.3)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.screen.query_one("#dry_run", Switch).value is True


async def test_an_engine_that_runs_another_config_than_asked_is_an_error_on_screen(
        runs_dir, wait_for, write_run):
    # the seed's engine silently dropped batch size and LR: the dashboard must say so
    import json

    run = write_run(runs_dir / "drifted", steps=10)
    asked = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**asked, "batch_size": 8, "lr": 1.5e-5}))
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        log = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: any("effective config differs" in x for x in log.lines))
        errors = [x for x in log.lines if "effective config differs" in x]
        assert any("batch_size: asked 8, the engine does not know this field" in x
                   for x in errors)
        assert any("lr: asked 1.5e-05" in x for x in errors)
        assert log.kinds[log.lines.index(errors[0])] == ERROR
