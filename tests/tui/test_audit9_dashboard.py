"""Audit 9 of the dashboard, driven as a user drives it: the Quit dialog's words and what its
Stop leaves in the runs list, a watched run's title at its end, the launch form's refusal at
80x24, the cache dialog's Tab, and the ETA beside the tokens/s."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from textual import events
from textual.app import App
from textual.widgets import DataTable, Input, Select, Static

from kdtui.app import KDApp
from kdtui.launch.local import LocalRunHandle
from kdtui.runs import list_runs
from kdtui.screens.cache_teacher import CacheTeacherDialog
from kdtui.screens.dialogs import QuitScreen
from kdtui.screens.run import RunScreen
from kdtui.screens.runs import RunsScreen
from kdtui.widgets.run_panels import RunProgress


async def _until(pilot, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await pilot.pause(0.05)


async def test_quit_dialog_says_stop_in_plain_sentences() -> None:
    """It read 'Stop it: SIGTERM: a kdengine run ends ...': two colons, a signal's name for a
    sentence. 'Stop it:' is now followed by what happens, in sentences."""
    app = App()
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(QuitScreen(["kd-1"]))
        await pilot.pause(0.1)
        body = str(app.screen.query_one(".dialog-body", Static).render())
        stop = body[body.index("Stop it:") + len("Stop it:"):]
        assert ":" not in stop, body
        assert "checkpoint" in stop and "kdtui resume" in stop and "cancelled" in stop


# an engine's stand-in in its own session: a running run that, on SIGTERM, records itself
# cancelled, as kdengine does (no torch: the test stays fast)
STAND_IN = """
import json, signal, sys, time
def stop(*_):
    with open(sys.argv[1], "a") as fh:
        fh.write(json.dumps({"v": 1, "seq": 10**6, "t": time.time(), "type": "run_finished",
                             "status": "cancelled", "exit_code": 0, "steps": 5}) + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


async def test_a_run_stopped_from_the_quit_dialog_is_not_marked_new_in_the_runs_list(
        runs_dir, write_run):
    """Stopped with the Quit dialog's 'Stop it', the run came back in the next dashboard's runs
    list marked '•' (ended and not looked at), though the user ended it themselves."""
    old = write_run(runs_dir / "old")
    app = KDApp(runs_dir=runs_dir)
    app.seen.mark(old)  # a user who has used the runs list before: seen.json is there
    run = write_run(runs_dir / "going", steps=200, upto=5, finished=False)
    engine = subprocess.Popen([sys.executable, "-c", STAND_IN, str(run / "events.jsonl")],
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert engine.stdout is not None and engine.stdout.readline() == b"ready\n"
        (run / "engine.pid").write_text(f"{engine.pid}\n")
        app.owned_runs.append(LocalRunHandle(run_id="going", run_dir=str(run), process=engine))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+q")
            await _until(pilot, lambda: isinstance(app.screen, QuitScreen))
            await pilot.click("#stop")
            await pilot.pause()
        assert engine.wait(timeout=20) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
    assert [i.status for i in list_runs(runs_dir) if i.run_dir.name == "going"] == ["cancelled"]
    again = KDApp(runs_dir=runs_dir)
    async with again.run_test(size=(120, 40)) as pilot:
        again.action_runs()
        await _until(pilot, lambda: isinstance(again.screen, RunsScreen) and again.screen.runs)
        table = again.screen.query_one(DataTable)
        names = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert "going" in names and "old" in names, names


async def test_a_run_watched_to_its_end_says_how_it_ended_in_its_title(
        runs_dir, write_run, end_run):
    """`kdtui watch RUN` of a run going: at its end the title stayed 'going on local', while
    the same run opened after it ended read 'going on local · completed'."""
    run = write_run(runs_dir / "going", steps=200, upto=200, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.running)
        screen = app.screen
        assert "completed" not in screen.sub_title
        end_run(run, "completed", None)
        await _until(pilot, lambda: screen.state.finished is not None)
        await pilot.pause(0.2)
        [info] = list_runs(runs_dir)
        assert screen.sub_title.endswith(f" · {info.status}") and info.status == "completed", \
            screen.sub_title


async def test_cache_dialog_keys_typed_right_after_tab_go_to_the_next_field() -> None:
    """`16<Tab>` then a key typed at once (or on a machine busy with a run): the Tab moved the
    focus only after the following key had gone into K ('16j' refused). The focus now moves
    first, as on the launch form."""
    app = App()
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(CacheTeacherDialog("Score the data"))
        await _until(pilot, lambda: isinstance(app.screen, CacheTeacherDialog))
        await pilot.pause()
        top_k = app.screen.query_one("#cache-top-k", Input)
        targets = app.screen.query_one("#cache-targets", Select)
        assert app.focused is top_k
        top_k.select_all()
        for key, char in (("1", "1"), ("6", "6"), ("tab", None), ("j", "j")):
            app.post_message(events.Key(key, char))
        await pilot.pause()
        await pilot.pause()
        assert top_k.value == "16"
        assert app.focused is targets
        app.post_message(events.Key("shift+tab", None))
        app.post_message(events.Key("2", "2"))
        await pilot.pause()
        await pilot.pause()
        assert app.focused is top_k and top_k.value.endswith("2") and "j" not in top_k.value


def _step(t: float, step: int, tokens_per_s: float) -> dict:
    return {"type": "step", "t": t, "step": step, "tokens_per_s": tokens_per_s,
            "total_steps": 1000, "loss": 1.0}


def test_eta_follows_the_step_rate_the_tokens_per_s_shows() -> None:
    """Under CPU contention the step's tokens/s fell to a quarter while the ETA still counted
    the earlier pace (the last 50 events' rate): they disagreed four times over. The ETA now
    comes from the recent step rate, and an eval's pause does not swing it."""
    progress = RunProgress()
    tokens = 1024  # a step's tokens: 8 steps/s is 8192 tokens/s
    t, step = 1000.0, 0
    for _ in range(60):  # a quiet machine: 8 steps/s
        step += 1
        t += 1 / 8
        progress.add_step(_step(t, step, 8 * tokens))
    for _ in range(12):  # a run beside it: 2 steps/s
        step += 1
        t += 1 / 2
        progress.add_step(_step(t, step, 2 * tokens))
    progress.refresh_view()
    by_tokens = (1000 - step) / (progress.tokens_per_s / tokens)
    assert progress.eta is not None and abs(progress.eta - by_tokens) / by_tokens < 0.05, \
        (progress.eta, by_tokens)
    t += 30.0  # an eval between two steps
    step += 1
    progress.add_step(_step(t, step, 2 * tokens))
    progress.refresh_view()
    by_tokens = (1000 - step) / 2
    assert abs(progress.eta - by_tokens) / by_tokens < 0.05, (progress.eta, by_tokens)


def test_eta_from_the_first_two_step_events() -> None:
    progress = RunProgress()
    for step in (1, 2, 3):
        progress.add_step(_step(1000.0 + step / 4, step, 4096.0))
    progress.refresh_view()
    assert progress.eta is not None and abs(progress.eta - (1000 - 3) / 4) < 1e-6


def _covered(app, widget) -> list[str]:
    """What of `widget`'s rows on screen a toast covers, or the form's frame cuts off."""
    from textual.widgets._toast import Toast

    region = widget.region
    form = app.screen.query_one("#form").region
    bad = [] if form.contains_region(region) and region.height else [f"cut off: {region}"]
    bad += [f"under a toast at {t.region}" for t in app.screen.query(Toast)
            if t.region.overlaps(region)]
    return bad


async def _refused(app, pilot, size, field: str, value: str) -> list[str]:
    form = app.screen
    form.query_one(f"#field-{field}", Input).focus()  # as a user types over a field
    await pilot.pause()
    await pilot.press("ctrl+a", *value, "ctrl+r")
    await _until(pilot, lambda: form.query(".field-row.-invalid"))
    await pilot.pause(0.3)
    row = form.query_one(f"#row-{field}")
    return _covered(app, row.query_one(".field-error", Static))


async def test_invalid_run_toast_leaves_the_field_error_readable(runs_dir):
    """Start with a field refused: the 'Invalid run' toast sat over the field's inline error at
    80x24 (batch_size, seed: which field and why could not be read), over the demo preset's own
    toast and earlier refusals' stacked on it. The error row now shows clear of any toast,
    at 80x24 and 120x40."""
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:  # the toasts drawn
        await _until(pilot, lambda: app.screen.form_ready)
        problems = {}
        for size, field in (((80, 24), "batch_size"), ((80, 24), "seed"),
                            ((120, 40), "batch_size")):
            await pilot.resize_terminal(*size)
            await pilot.press("f2")  # its toast stays a while: the refusal's comes over it
            await pilot.pause()
            problems[size, field] = await _refused(app, pilot, size, field, "x")
        assert not any(problems.values()), problems
