"""Whole runs watched as a user watches them (audit 12): what the screens say on an on-policy
run's samples and held-out scores, on recorded events (tests/tui/fixtures/on-policy) with the
fields a real tiny run wrote."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.cells import cell_len

from kdtui.app import KDApp
from kdtui.headless import follow_to_verdict
from kdtui.screens.run import RunScreen
from kdtui.watch import LocalRunSource
from kdtui.widgets.loss_chart import LossChart
from kdtui.widgets.run_panels import VerdictPanel
from kdtui.widgets.samples import SamplesView

from .conftest import verdict_shown

# what an untrained tiny student wrote in a real on-policy run (byte tokenizer): ESC, SUB, FS
BABBLE = "\x1a\x1a\ufffd \ufffd\x1b[2J\x1b\ufffdr\r\ufffdM\x1c\x08\x7fe2_\ufffd"


def _add_babble(run_dir: Path) -> None:
    events = run_dir / "events.jsonl"
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    babble = {"v": 1, "t": 1760000061.0, "type": "sample", "step": 120,
              "split": "train", "index": 9, "source": "student", "prompt": "q\x1b]0;title\x07?",
              "completion": BABBLE, "tokens": 16, "finished": False, "teacher_logp": -5.85}
    rows.insert(len(rows) - 3, babble)  # before the verdict; seq without a gap
    events.write_text("".join(json.dumps({**row, "seq": i}) + "\n" for i, row in enumerate(rows)))


def _controls(text: str) -> set[str]:
    return {c for c in text if (ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) < 0xA0}


async def test_audit12_a_completion_of_control_bytes_keeps_the_samples_pane_in_its_border(
        on_policy_run, wait_for):
    _add_babble(on_policy_run)
    app = KDApp(runs_dir=on_policy_run.parent, command="watch", watch_ref="on-policy")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: verdict_shown(app) and bool(app.screen.query(SamplesView)))
        pane = app.screen.query_one(SamplesView)
        await wait_for(pilot, lambda: any(s.index == 9 for s in pane.shown))
        await pilot.pause(0.1)
        width = pane.scrollable_content_region.width
        texts = [strip.text for strip in pane._rows]
        babble_rows = [t for t in texts if "␛" in t]
        assert babble_rows, texts[:8]  # ESC shown as its picture, not sent to the terminal
        # no control byte reaches the terminal: each row is exactly the pane's width in cells
        assert not set().union(*map(_controls, texts))
        assert all(cell_len(t) == width for t in texts)


async def test_audit12_headless_watch_prints_a_completion_s_control_bytes_as_pictures(
        on_policy_run):
    _add_babble(on_policy_run)
    out = io.StringIO()

    async def alive() -> bool:
        return False

    await follow_to_verdict(LocalRunSource(on_policy_run), out=out, is_alive=alive,
                            interval=0.01)
    line = next(x for x in out.getvalue().splitlines() if "train #9" in x)
    assert not _controls(line), repr(line)  # an ESC [2J would have cleared the user's screen
    assert "␛[2J" in line and "…q␛]0;title␇?" in line


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_audit12_an_on_policy_run_s_chart_draws_the_val_gen_kl_its_verdict_judges(
        on_policy_run, wait_for, size):
    evals = [json.loads(line) for line in (on_policy_run / "events.jsonl").open()]
    evals = [e for e in evals if e["type"] == "eval"]
    app = KDApp(runs_dir=on_policy_run.parent, command="watch", watch_ref="on-policy")
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: verdict_shown(app))
        await pilot.pause(0.4)  # a chart redraw
        chart = app.screen.query_one(LossChart)
        # each evaluation's val_gen_kl, as events.jsonl has it (the verdict's step 0 and final)
        assert chart.gen_kl.count == len(evals)
        assert chart.gen_kl.points() == ([e["step"] for e in evals],
                                         [e["val_gen_kl"] for e in evals])
        verdict = app.screen.query_one(VerdictPanel).render().plain
        assert "val gen KL" in verdict
        # named in the legend as the verdict panel names it, whole at 80 columns too
        assert ("▲ val gen KL" if size[0] >= 120 else "▲gen KL") in chart.legend
        room = chart.region.width - 6  # the corners and "─ " either side of the legend
        assert cell_len(chart.legend) <= room, (chart.legend, room)


async def test_audit12_t_on_a_cache_job_fills_the_form_with_the_cache_s_data_and_starts_from_it(
        runs_dir, tmp_path, tiny_run_inputs, engine_in_process, wait_for):
    """A user's last run was on-policy on other data; they cache a teacher (kdtui launch
    --cache-teacher, or a job opened from the runs list) and press t: the form opened with the
    last run's teacher, data, seq_len, reverse_kl and lmbda 1, each of which the run from the
    cache refuses, one Start at a time."""
    from kdtui.screens.launch import LaunchScreen
    from kdtui.settings import config_dir

    last_run = {"teacher": "/elsewhere/chat-teacher", "data": "/elsewhere/msgs.jsonl",
                "seq_len": "128", "loss": "reverse_kl", "lmbda": "1", "max_new_tokens": "24",
                "student": tiny_run_inputs["student"], "device": "cpu"}
    config_dir().mkdir(parents=True, exist_ok=True)
    (config_dir() / "settings.json").write_text(json.dumps(
        {"last_host": "local", "last_values": {"local": last_run}}))
    job = runs_dir / "cache-job"
    done = engine_in_process(
        "cache-teacher", "--teacher", tiny_run_inputs["teacher"], "--data",
        tiny_run_inputs["data"], "--seq-len", "32", "--device", "cpu", "--dtype", "float32",
        "--top-k", "4", "--cache-targets", "topk", "--out", str(job))
    assert done.returncode == 0, done.stderr
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="cache-job")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.check_action("train_from_cache", ()) is True)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.form_ready)
        form = app.screen
        await pilot.pause(0.1)

        def shown(name: str) -> object:
            return form.query_one(f"#field-{name}").value

        assert shown("teacher_cache") == str(job)
        assert (shown("data"), shown("seq_len")) == (tiny_run_inputs["data"], "32")
        assert shown("teacher") == ""  # the cache stands for it
        assert (shown("loss"), float(shown("lmbda"))) == ("forward_kl", 0.0)
        assert shown("student") == tiny_run_inputs["student"]  # the user's, kept
        config = form.collect_config()
        assert config is not None and config.teacher_cache == str(job)

        # Start trains from it with no teacher given: the form's quick check of the models
        # took the empty teacher for the folder '.' ('teacher:  has no config.json')
        for name, value in (("steps", "2"), ("eval_every", "2"), ("run_name", "from-cache")):
            form.query_one(f"#field-{name}").value = value
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 60)
        await wait_for(pilot, lambda: app.screen.state.finished is not None, 60)
        assert app.screen.state.finished["status"] == "completed"
        started = app.screen.state.run_started
        assert started["config"]["teacher_cache"] == str(job) and not started["config"]["teacher"]


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_audit12_the_compare_chart_s_step_axis_reads_whole_steps(
        runs_dir, write_run, wait_for, size):
    """Two 30-step runs compared: the axis read `0.0 7.5 15.0 22.5 30.0`, steps that do not
    exist, where the run screen's chart of either reads whole steps."""
    from kdtui.compare import CompareTarget
    from kdtui.screens.compare import CompareScreen

    dirs = [write_run(runs_dir / name, steps=30) for name in ("a-30", "b-30")]
    for run in dirs:  # val CE and KD at the final eval too, as the engine writes them
        events = [json.loads(line) for line in (run / "events.jsonl").open()]
        for event in events:
            if event["type"] == "eval":
                event.update(val_ce=event["val_loss"] + 0.5, val_kd=0.4 - event["step"] / 100)
        (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    app = KDApp(runs_dir=runs_dir, command="compare",
                compare_targets=[CompareTarget.local(d) for d in dirs])
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
        chart = app.screen.query_one("#compare-chart")
        for _metric in range(3):  # val CE, val KD, train loss
            await pilot.pause(0.4)
            rows = chart.render().plain.splitlines()
            bottom = next(i for i, row in enumerate(rows) if "└" in row)
            labels = rows[bottom + 1].split()
            assert len(labels) >= 2 and all(label.isdigit() for label in labels), labels
            assert int(labels[0]) <= 5 and labels[-1] == "30"  # train loss starts at step 1
            await pilot.press("c")


def test_audit12_the_runs_list_says_a_cache_s_size_as_the_run_screen_does():
    """A run from a 1.09 MB cache: the runs list said '(cached K=8 topk, 0.00109 GB)' beside it
    while its own screen's chart title said '1.09 MB'."""
    from kdtui.runs import cached_teacher_label
    from kdtui.widgets.cache_job import cached_teacher_badge, cached_teacher_line

    started = {"type": "run_started", "teacher_cache": {
        "dir": "/runs/cache1", "k": 8, "targets": "topk", "bytes": 1_086_920,
        "bytes_per_token": 36.25, "teacher": "/models/teacher"}}
    assert cached_teacher_label(started) == "cached K=8 topk, 1.09 MB"
    assert cached_teacher_badge(started) == "teacher cached · K=8 topk · 1.09 MB"
    assert ", 1.09 MB (36 B/token)" in cached_teacher_line(started)
    big = {"teacher_cache": {**started["teacher_cache"], "bytes": 1.2e9}}
    assert cached_teacher_label(big) == "cached K=8 topk, 1.2 GB"


async def test_audit12_both_warnings_of_a_finished_on_policy_run_show_at_80x24(
        on_policy_run, wait_for):
    """A real tiny on-policy run (random teacher): PASS, a two-line reason and two warnings.
    At 80x24 the side column scrolled, its scrollbar wrapped each warning onto two rows, and
    'teacher's CE ≥ student's at step 0' was below the fold."""
    events = [json.loads(line) for line in (on_policy_run / "events.jsonl").open()]
    evals = [e for e in events if e["type"] == "eval"]
    evals[0]["val_teacher_ce"] = 9.0  # a teacher worse than the student at step 0
    evals[-1]["val_ce"] = evals[0]["val_ce"] + 0.1  # val CE up while val loss went down
    for event in events:  # a CPU run's gauge: the host's memory, one row under the chart
        if event["type"] == "step":
            event["host_rss"] = 3e8
    (on_policy_run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    app = KDApp(runs_dir=on_policy_run.parent, command="watch", watch_ref="on-policy")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: verdict_shown(app))
        await pilot.pause(0.3)
        panel = app.screen.query_one(VerdictPanel)
        side = app.screen.query_one("#run-side")
        rows = panel.render().plain.splitlines()
        assert "⚠ val CE up while val loss went down" in rows
        assert "⚠ teacher's CE ≥ student's at step 0" in rows
        assert side.max_scroll_y == 0  # nothing below the fold
        assert panel.region.bottom <= side.region.bottom
        assert rows[0] == "PASS" and any("val gen KL" in row for row in rows)


def test_audit12_theme_and_runs_dir_are_taken_after_the_command_too(runs_dir, tmp_path, capsys,
                                                                    write_run):
    """`kdtui watch RUN --theme kdtui-light` was 'unknown argument --theme', and `kdtui watch
    --help` never named it: the two options were taken only before the command."""
    from kdtui.cli import main

    elsewhere = tmp_path / "elsewhere"
    write_run(elsewhere / "there", steps=5)
    code = main(["watch", "nope", "--theme", "kdtui-light", "--runs-dir", str(elsewhere)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("kdtui watch: error: no run 'nope'") and str(elsewhere) in err[0]
    assert main(["runs", "--plain", "--runs-dir", str(elsewhere)]) == 0
    assert capsys.readouterr().out.startswith("there\tlocal\tcompleted")
    # before the command, as before; one after it wins
    assert main(["--runs-dir", str(runs_dir), "runs", "--plain", "--runs-dir",
                 str(elsewhere)]) == 0
    assert capsys.readouterr().out.startswith("there\t")


async def test_audit12_r_on_a_run_the_runs_list_cannot_resume_says_why(runs_dir, write_run,
                                                                      wait_for):
    """R on a completed run, or a failed one with no checkpoint (a NaN at step 0), did nothing
    at all: no notice, no change, as if the key were broken."""
    from kdtui.screens.runs import RunsScreen

    write_run(runs_dir / "done", steps=20)
    failed = write_run(runs_dir / "nan-at-0", steps=20, upto=0, finished=False)
    with (failed / "events.jsonl").open("a") as events:
        events.write(json.dumps({"v": 1, "seq": 99, "t": 1760000100.0, "type": "run_finished",
                                 "status": "failed", "exit_code": 1}) + "\n")
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        app.action_runs()
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and len(app.screen.runs) == 2)
        screen = app.screen
        said = []
        for row in range(2):
            screen.query_one("DataTable").move_cursor(row=row)
            await pilot.pause()
            run = screen.runs[row]
            assert not screen.check_action("resume", ())  # off the footer, as before
            await pilot.press("R")
            await pilot.pause()
            note = [n for n in app._notifications if n.title == "Nothing to resume"]
            assert len(note) == row + 1, (run.run_id, [n.message for n in app._notifications])
            said.append(str(note[-1].message))
        assert sorted(said) == sorted([
            "done is completed: only a stopped, failed or cancelled run resumes",
            "nan-at-0 has no complete checkpoint to continue from (set --checkpoint-every and "
            "start it again)"])
        assert isinstance(app.screen, RunsScreen)  # nothing started


async def test_audit12_r_and_t_on_a_run_screen_they_do_not_apply_to_say_so(
        runs_dir, write_run, wait_for):
    """On a completed run's screen R (resume) and t (train from cache) did nothing: their
    notices were written, but check_action kept the actions from ever running."""
    write_run(runs_dir / "done", steps=20)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="done")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: verdict_shown(app))
        screen = app.screen
        assert not screen.check_action("resume", ())
        assert not screen.check_action("train_from_cache", ())
        await pilot.press("R", "t")
        await pilot.pause()
        said = [str(n.message) for n in app._notifications]
        assert "Resume applies to a stopped, failed or cancelled run with a checkpoint" in said
        assert "Train from cache applies to a complete teacher-cache job" in said
        assert app.screen is screen


def _write_cache_job(job: Path) -> None:
    """A finished teacher-cache job's events as `kdengine cache-teacher` writes them (no
    verdict event: its end is judged from run_finished, kdengine.verdict)."""
    job.mkdir(parents=True)
    rows = [{"type": "run_started", "run_id": job.name, "job": "cache-teacher",
             "config": {"teacher": "/models/t", "data": "/data", "seq_len": 32},
             "cache": {"k": 8, "targets": "topk", "dtype": "float16"}},
            {"type": "step", "step": 500, "ce": 5.6, "tokens_per_s": 9e4, "total_steps": 937},
            {"type": "step", "step": 937, "ce": 5.58, "tokens_per_s": 9e4, "total_steps": 937},
            {"type": "run_finished", "status": "completed", "exit_code": 0}]
    (job / "events.jsonl").write_text("".join(
        json.dumps({"v": 1, "seq": i, "t": 1760000000.0 + i, **row}) + "\n"
        for i, row in enumerate(rows)))


async def test_audit12_a_cache_job_s_progress_counts_rows_not_steps(runs_dir, wait_for):
    """A teacher-cache job's panel is titled 'progress (rows scored)' but said 'step 937 / 937'
    of a job that takes no step: a word meaning two things on one screen."""
    from kdtui.widgets.run_panels import RunProgress

    _write_cache_job(runs_dir / "cache-job")
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="cache-job")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.state.finished is not None)
        await pilot.pause(0.1)
        progress = app.screen.query_one(RunProgress)
        text = progress.render().plain
        assert "rows 937 / 937" in text and "step" not in text, text
        assert str(progress.border_title) == "progress (rows scored)"


async def test_audit12_the_runs_list_says_a_cache_job_is_complete_not_pass(runs_dir, write_run,
                                                                          wait_for):
    """A finished teacher-cache job read 'PASS' in the runs list's verdict column, beside runs
    whose PASS is the smoke verdict of a distillation; its own screen says COMPLETE."""
    from kdtui.screens.runs import RunsScreen

    _write_cache_job(runs_dir / "cache-job")
    write_run(runs_dir / "a-run", steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 30)) as pilot:
        app.action_runs()
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and len(app.screen.runs) == 2)
        await pilot.pause()
        table = app.screen.query_one("DataTable")
        verdicts = {str(table.get_row_at(i)[0]).split()[0].strip("✓• "):
                    str(table.get_row_at(i)[3]) for i in range(table.row_count)}
        assert verdicts == {"cache-job": "COMPLETE", "a-run": "PASS"}, verdicts
