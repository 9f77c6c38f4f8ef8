"""Comparing runs, the gauge row, the verdict panel's CE warnings and the end-of-run notice, on
recorded runs written here (events as the engine writes them, with fixed times).

Snapshots: pytest tests/tui/test_compare.py --snapshot-update (then look at the pictures).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from kdengine.verdict import CE_UP_WHILE_OBJECTIVE_DOWN, TEACHER_NO_BETTER, distill_report
from kdtui.app import KDApp
from kdtui.compare import CompareTarget, differing, load_summary, plain_table
from kdtui.notify import notification_sequence
from kdtui.palette import binding_commands
from kdtui.screens.compare import CompareScreen, run_color
from kdtui.screens.run import RunScreen
from kdtui.screens.runs import RunsScreen
from kdtui.widgets.gauges import GaugeRow
from kdtui.widgets.run_panels import VerdictPanel

T0 = 1_760_000_000.0
GIB = 1 << 30
BASE = {"teacher": "demo://teacher", "student": "demo://student", "data": "demo://python-stdlib",
        "steps": 200, "alpha": 0.3, "temperature": 2.0, "loss": "forward_kl", "seed": 1}


def write_kd_run(run_dir: Path, *, ce: tuple[float, float], val_loss: tuple[float, float],
                 teacher_ce: float = 1.6, upto: int = 200, finished: bool = True,
                 gpu: bool = False, t0: float = T0, shape: float = 1.0, **config: Any) -> Path:
    """A recorded KD run: val CE and val loss go from their step-0 to their final values
    (so either can go up while the other goes down; CE as (step/steps)**shape), evals every
    50 steps."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {**BASE, **config, "run_name": run_dir.name, "run_dir": str(run_dir)}
    steps = cfg["steps"]
    events: list[dict[str, Any]] = []

    def emit(type_: str, t: float, **payload: Any) -> None:
        events.append({"v": 1, "seq": len(events), "t": round(t0 + t, 3), "type": type_,
                       **payload})

    def at(pair: tuple[float, float], step: int, power: float = 1.0) -> float:
        return pair[0] + (pair[1] - pair[0]) * (step / steps) ** power

    emit("run_started", 0, run_id=run_dir.name, run_dir=str(run_dir), config=cfg,
         device="cuda:0" if gpu else "cpu", dtype="bfloat16" if gpu else "float32")
    for step in range(0, upto + 1):
        if step:
            loss = at(val_loss, step) + 0.1
            gauges = dict(gpu_mem_allocated=int((11.5 + step % 7 * 0.2) * GIB),
                          gpu_mem_reserved=14 * GIB, gpu_mem_peak=int(13.2 * GIB),
                          gpu_mem_total=int(139.8 * GIB), gpu_util=88 + step % 10,
                          gpu_power_w=540.0 + step % 9 * 10, mfu=0.38 + step % 5 * 0.01,
                          host_rss=int(6.3 * GIB)) if gpu else {"host_rss": int(0.4 * GIB)}
            if step % 5 == 0:
                emit("step", step * 0.1, step=step, loss=loss, kd=loss * 0.5,
                     ce=at(ce, step, shape), lr=1e-3, grad_norm=0.5,
                     tokens_per_s=2000.0 + 10 * (step % 3), total_steps=steps, **gauges)
        if step % 50 == 0:
            extra = {"val_teacher_ce": teacher_ce} if step == 0 else {}
            emit("eval", step * 0.1, step=step, val_loss=at(val_loss, step),
                 val_ce=at(ce, step, shape), val_kd=0.4 * (1 - step / steps / 2), **extra)
    if finished and upto == steps:
        end = steps * 0.1 + 1
        status = "pass" if val_loss[1] < val_loss[0] else "fail"
        emit("verdict", end, id="F-DISTILL-SMOKE-001", status=status, reason="recorded",
             initial_val_loss=val_loss[0], final_val_loss=val_loss[1], final_step=steps)
        emit("run_finished", end, status="completed", exit_code=0, steps=steps)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "launch.log").write_text("")
    return run_dir


def three_runs(runs_dir: Path) -> list[Path]:
    return [
        write_kd_run(runs_dir / "fkl-t2", ce=(5.3, 1.72), val_loss=(7.0, 1.2), shape=0.3),
        write_kd_run(runs_dir / "fkl-t4", ce=(5.3, 2.03), val_loss=(7.0, 1.0), temperature=4.0,
                     shape=0.6),
        write_kd_run(runs_dir / "ce-only", ce=(5.3, 1.78), val_loss=(5.3, 1.78), alpha=1.0),
    ]


def local(dirs: list[Path]) -> list[CompareTarget]:
    return [CompareTarget.local(d) for d in dirs]


def table_text(screen: CompareScreen) -> list[list[str]]:
    table = screen.query_one(DataTable)
    head = [str(c.label) for c in table.columns.values()]
    return [head, *([str(c) for c in table.get_row_at(i)] for i in range(table.row_count))]


async def test_compare_of_three_runs_tables_only_the_fields_that_differ(runs_dir):
    dirs = three_runs(runs_dir)
    app = KDApp(runs_dir=runs_dir, command="compare", compare_targets=local(dirs),
                theme="kdtui-dark")
    async with app.run_test(size=(120, 40)) as pilot:
        await _wait(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
        rows = table_text(app.screen)
        assert rows[0][:3] == ["run", "alpha", "temperature"]  # steps, seed, loss: the same
        assert "steps" not in rows[0] and "seed" not in rows[0]
        by_run = {r[0].removeprefix("■ "): dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
        assert by_run["fkl-t2"]["final val CE"] == "1.7200"
        assert by_run["ce-only"]["alpha"] == "1"
        assert by_run["fkl-t4"]["verdict"] == "PASS"
        assert by_run["fkl-t2"]["tok/s"] == "2,010"
        # each run's colour: its place in the selection, the same in the table and the chart
        table = app.screen.query_one(DataTable)
        assert [str(table.get_row_at(i)[0].spans[0].style) for i in range(3)] == \
            [run_color(i) for i in range(3)] == ["color(30)", "color(163)", "color(28)"]
        chart = app.screen.query_one("#compare-chart")
        assert chart.border_title == "val CE"
        await pilot.press("c")  # each run's KD is at its own T: not overlaid, the title says so
        assert chart.border_title == "val KD (temperature differs: KD not comparable)"
        await pilot.press("c", "c", "m", "l")
        assert chart.border_title == "val CE (EMA, log y)"


async def test_compare_updates_in_place_while_a_run_goes(runs_dir):
    dirs = three_runs(runs_dir)[:2]
    live = write_kd_run(runs_dir / "live", ce=(5.3, 1.5), val_loss=(7.0, 1.1), upto=60,
                        finished=False, alpha=0.5)
    app = KDApp(runs_dir=runs_dir, command="compare", compare_targets=local([*dirs, live]))
    async with app.run_test(size=(120, 40)) as pilot:
        await _wait(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
        screen = app.screen
        assert screen.summaries[2].final_ce == pytest.approx(5.3 + (1.5 - 5.3) * 50 / 200)
        # the engine appends its next eval: the table follows without a key pressed
        with open(live / "events.jsonl", "a") as fh:
            fh.write(json.dumps({"v": 1, "seq": 999, "t": T0 + 20, "type": "eval", "step": 100,
                                 "val_loss": 4.0, "val_ce": 3.4, "val_kd": 0.3}) + "\n")
        await _wait(pilot, lambda: any(r[0].endswith("live") and "3.4000" in r
                                       for r in table_text(screen)))


def _broken_hosts_and_a_dispatch(tmp_path: Path, monkeypatch) -> Path:
    """A dispatch on host `gpu` whose hosts file has a key kdtui does not know."""
    from kdtui.remote.manifest import manifest_path, write_manifest

    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[hosts.gpu]\nwork_dir = "kd"\nbogus = 1\n')
    monkeypatch.setenv("KDTUI_HOSTS_FILE", str(hosts))
    monkeypatch.setenv("KDTUI_EVIDENCE_DIR", str(tmp_path / "evidence"))
    remote = write_kd_run(tmp_path / "on-gpu" / "far", ce=(5.3, 1.6), val_loss=(7.0, 1.3),
                          temperature=8.0)
    config = json.loads((remote / "events.jsonl").read_text().splitlines()[0])["config"]
    return write_manifest(manifest_path("far"), {
        "run_id": "far", "host": "gpu", "remote_run_dir": str(remote), "launched": True,
        "config": config})


async def test_a_broken_hosts_file_is_one_line_over_the_table_and_local_runs_still_compare(
        runs_dir, tmp_path, monkeypatch):
    manifest = _broken_hosts_and_a_dispatch(tmp_path, monkeypatch)
    targets = [*local(three_runs(runs_dir)[:2]), CompareTarget.dispatched(manifest)]
    app = KDApp(runs_dir=runs_dir, command="compare", compare_targets=targets)
    async with app.run_test(size=(80, 24)) as pilot:
        await _wait(pilot, lambda: isinstance(app.screen, CompareScreen)
                    and app.screen.query_one("#compare-links").display)
        screen = app.screen
        line = str(screen.query_one("#compare-links").render())
        assert line.startswith(f"far@gpu: {tmp_path / 'hosts.toml'}: [hosts.gpu]: unknown key "
                               "'bogus'"), line
        def rows() -> dict[str, dict[str, str]]:
            head, *body = table_text(screen)
            return {r[0].removeprefix("■ "): dict(zip(head, r, strict=True)) for r in body}

        await _wait(pilot, lambda: rows().get("fkl-t4", {}).get("final val CE") == "2.0300")
        assert rows()["fkl-t2"]["final val CE"] == "1.7200"
        # the dispatch's recorded config fills its row while its events cannot be read
        assert rows()["far@gpu"]["temperature"] == "8"
        assert rows()["far@gpu"]["final val CE"] == "–"


def test_plain_compare_with_a_broken_hosts_file_is_one_line_and_exit_2(runs_dir, tmp_path,
                                                                       monkeypatch, capsys):
    from kdtui.cli import main

    _broken_hosts_and_a_dispatch(tmp_path, monkeypatch)
    three_runs(runs_dir)
    assert main(["--runs-dir", str(runs_dir), "compare", "fkl-t2", "far", "--plain"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"kdtui compare: error: far@gpu: {tmp_path / 'hosts.toml'}: [hosts.gpu]: unknown key "
        "'bogus' (known: " + captured.err.split("(known: ")[1].strip()]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_of_compare(snap_compare, runs_dir, size):
    app = KDApp(runs_dir=runs_dir, command="compare", compare_targets=local(three_runs(runs_dir)),
                theme="kdtui-dark")
    assert snap_compare(app, terminal_size=size, run_before=_loaded)


def test_plain_compare_prints_the_differing_fields_and_final_ce(runs_dir, capsys):
    from kdtui.cli import main

    dirs = three_runs(runs_dir)
    assert main(["--runs-dir", str(runs_dir), "compare", "fkl-t2", "fkl-t4", str(dirs[2]),
                 "--plain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "alpha", "temperature"]
    assert lines[1].split()[:4] == ["fkl-t2", "0.3", "2", "1.7200"]
    assert main(["--runs-dir", str(runs_dir), "compare", "fkl-t2", "--plain"]) == 2
    assert main(["--runs-dir", str(runs_dir), "compare", "fkl-t2", "nope", "--plain"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_plain_compare_of_a_real_cpu_run_and_a_recorded_one(runs_dir, engine_cmd,
                                                            tiny_run_inputs, tiny_args):
    """The engine's own events: the step-0 eval carries the teacher's CE, steps the host gauge,
    and `kdtui compare --plain` prints the fields that differ and the final CE."""
    import subprocess
    import sys

    real = runs_dir / "real"
    subprocess.run([*engine_cmd, *tiny_args(tiny_run_inputs, real, steps=4, eval_every=2,
                                            checkpoint_every=4, warmup_steps=1)],
                   check=True, capture_output=True, env={**__import__("os").environ,
                                                          "OMP_NUM_THREADS": "1"})
    events = [json.loads(line) for line in (real / "events.jsonl").read_text().splitlines()]
    step0 = next(e for e in events if e["type"] == "eval" and e["step"] == 0)
    assert step0["val_teacher_ce"] > 0 and "gpu_mem_allocated" not in step0
    steps = [e for e in events if e["type"] == "step"]
    assert all(e["host_rss"] > 0 and "gpu_util" not in e and "mfu" not in e for e in steps)
    write_kd_run(runs_dir / "recorded", ce=(5.3, 1.72), val_loss=(7.0, 1.2), alpha=1.0)
    out = subprocess.run([sys.executable, "-m", "kdtui", "--runs-dir", str(runs_dir),
                          "compare", "real", "recorded", "--plain"],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    head = out[0].split()
    assert head[0] == "run" and "alpha" in head and "steps" in head and "val" in head
    final = [e for e in events if e["type"] == "eval"][-1]["val_ce"]
    real_row, recorded_row = out[1], out[2]  # the engine names its run (kd-<time>)
    assert f" {final:.4f} " in real_row and recorded_row.startswith("recorded ")
    assert "1.7200" in recorded_row
    # a tiny random teacher is no better than the student: the table says so
    assert "⚠" in real_row and out[-1].endswith(TEACHER_NO_BETTER)


# -- the verdict panel's warnings --------------------------------------------------------------

def test_distill_report_warns_of_a_random_teacher_and_of_ce_up_while_the_objective_fell(
        tmp_path):
    random_teacher = write_kd_run(tmp_path / "random", ce=(5.3, 5.0), val_loss=(7.0, 2.0),
                                  teacher_ce=5.6)
    report = load_summary(random_teacher).report
    assert report.warnings == (TEACHER_NO_BETTER,) and report.gap_closed is None
    ce_up = write_kd_run(tmp_path / "ce-up", ce=(3.0, 3.4), val_loss=(4.0, 1.0))
    report = load_summary(ce_up).report
    assert report.warnings == (CE_UP_WHILE_OBJECTIVE_DOWN,)
    good = load_summary(write_kd_run(tmp_path / "good", ce=(5.3, 2.15), val_loss=(7, 1))).report
    assert good.warnings == () and good.gap_closed == pytest.approx((5.3 - 2.15) / (5.3 - 1.6))
    assert distill_report([]).initial_ce is None


@pytest.mark.parametrize("kind", ["random-teacher", "ce-up"])
async def test_verdict_panel_shows_the_warning_of_a_recorded_run(runs_dir, kind):
    if kind == "random-teacher":
        write_kd_run(runs_dir / kind, ce=(5.3, 5.0), val_loss=(7.0, 2.0), teacher_ce=5.6)
        warning = TEACHER_NO_BETTER
    else:
        write_kd_run(runs_dir / kind, ce=(3.0, 3.4), val_loss=(4.0, 1.0))
        warning = CE_UP_WHILE_OBJECTIVE_DOWN
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=kind)
    async with app.run_test(size=(80, 24)) as pilot:
        await _wait(pilot, lambda: isinstance(app.screen, RunScreen)
                    and app.screen.query_one(VerdictPanel).verdict is not None)
        await pilot.pause(0.2)
        panel = app.screen.query_one(VerdictPanel)
        assert f"⚠ {warning}" in panel._plain
        assert panel.region.bottom <= app.screen.query_one("#run-side").region.bottom


def test_snapshot_of_a_random_teacher_run_at_120x40(snap_compare, runs_dir):
    write_kd_run(runs_dir / "random", ce=(5.3, 5.0), val_loss=(7.0, 2.0), teacher_ce=5.6)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="random", theme="kdtui-dark")
    assert snap_compare(app, terminal_size=(120, 40), run_before=_verdict_in)


# -- gauges ----------------------------------------------------------------------------------

async def test_gauge_row_shows_recorded_gpu_step_events_and_u_hides_it(runs_dir):
    write_kd_run(runs_dir / "gpu", ce=(5.3, 2.0), val_loss=(7.0, 1.0), gpu=True)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="gpu")
    async with app.run_test(size=(120, 40)) as pilot:
        await _wait(pilot, lambda: isinstance(app.screen, RunScreen)
                    and app.screen.query_one(GaugeRow).seen)
        row = app.screen.query_one(GaugeRow)
        await _wait(pilot, lambda: row.latest.get("gpu_util") == 88)  # the last step: 200
        text = row.line().plain
        assert text.startswith("GPU 12.3/140G ") and "peak 13.2G" in text
        assert "util 88%" in text and "power 560W" in text and "MFU 38.0%" in text
        assert "host 6.3G" in text and "▁" in text and "█" in text
        assert row.display
        assert "Gauges" in [c.name for c in binding_commands(app.screen, app)]
        await pilot.press("u")
        assert not row.display


def test_snapshot_of_gpu_gauges_at_80x24(snap_compare, runs_dir):
    write_kd_run(runs_dir / "gpu", ce=(5.3, 2.0), val_loss=(7.0, 1.0), gpu=True)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="gpu", theme="kdtui-dark")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_verdict_in)


# -- the runs list: select, compare, marks; notifications --------------------------------------

async def test_runs_list_selects_with_space_opens_compare_and_marks_unlooked_ends(runs_dir):
    dirs = three_runs(runs_dir)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        app.action_runs()
        await _wait(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.runs)
        screen = app.screen
        palette = [c.name for c in (*binding_commands(screen, app), *app.navigation(screen))]
        assert {"Select", "Compare", "Notifications off"} <= set(palette)
        # the first list counts every run that had already ended as seen
        assert all(app.seen.is_seen(d) for d in dirs)
        write_kd_run(runs_dir / "new", ce=(5.3, 2.0), val_loss=(7.0, 1.0), t0=time.time())
        screen.action_refresh()
        table = screen.query_one(DataTable)
        assert str(table.get_row_at(0)[0]) == "• new"  # newest first, never looked at
        await pilot.press("space", "space")
        cells = [str(table.get_row_at(i)[0]) for i in range(2)]
        assert cells[0] == "✓ • new" and cells[1].startswith("✓ ")
        await pilot.press("c")
        await _wait(pilot, lambda: isinstance(app.screen, CompareScreen))
        assert [t.run_id for t in app.screen.targets] == ["new", cells[1][2:]]
        await pilot.press("escape")
        await _wait(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("up", "up", "enter")  # looking at it clears its mark
        await _wait(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.seen.is_seen(runs_dir / "new")


def test_notification_speaks_the_terminals_language_and_falls_back_to_the_bell():
    body = "kd-1: completed, verdict PASS"
    assert notification_sequence("kdtui", body, {"TERM_PROGRAM": "iTerm.app"}) == \
        f"\x1b]9;kdtui: {body}\a"
    assert notification_sequence("kdtui", body, {"TERM": "foot"}) == \
        f"\x1b]777;notify;kdtui;{body.replace(';', ',')}\a"
    assert notification_sequence("kdtui", body, {"TERM": "xterm-256color"}) == "\a"
    wrapped = notification_sequence("kdtui", "x", {"TERM": "foot", "TMUX": "/tmp/t,1,0"})
    assert wrapped.startswith("\x1bPtmux;\x1b\x1b]777;") and wrapped.endswith("\x1b\\")
    assert "\n" not in notification_sequence("a\nb", "c\x07d", {"TERM_PROGRAM": "WezTerm"})[:-1]


def test_differing_ignores_names_and_paths():
    a = {"run_name": "a", "run_dir": "/x/a", "alpha": 0.3, "steps": 10}
    b = {"run_name": "b", "run_dir": "/x/b", "alpha": 1.0, "steps": 10}
    from kdtui.compare import RunSummary

    assert differing([RunSummary("a", config=a), RunSummary("b", config=b)]) == ["alpha"]
    assert "alpha" in plain_table([RunSummary("a", config=a), RunSummary("b", config=b)])


# -- helpers -------------------------------------------------------------------------------------

async def _wait(pilot, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await pilot.pause(0.05)


async def _loaded(pilot) -> None:
    app = pilot.app
    await _wait(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
    await pilot.pause(0.5)  # the chart's redraw tick


async def _verdict_in(pilot) -> None:
    app = pilot.app
    await _wait(pilot, lambda: isinstance(app.screen, RunScreen)
                and app.screen.query_one(VerdictPanel).verdict is not None)
    await pilot.pause(0.5)
