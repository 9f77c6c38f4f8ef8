"""The run screen reads cleanly and offers only keys that do something.

- its panels set every part off with a visible separator (a screenshot's text read
  `step 200 / 200ETA 0s`, `GPU 12.3/140Gpeak` and `· prepare0/7 done`), at 80x24 and 120x40;
- `x Stop run` is in the footer while a run is going only (not once it has ended, nor after a
  launch that failed);
- the loss chart's legend labels are in the text's colour, readable in every theme (they were
  in the muted border colour: faint in the high-contrast theme).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.color import Color
from textual.widget import Widget
from textual.widgets import Footer

from kdtui.app import KDApp
from kdtui.launch.base import StageUpdate
from kdtui.screens.run import RunScreen
from kdtui.widgets.gauges import GaugeRow
from kdtui.widgets.loss_chart import LossChart
from kdtui.widgets.run_panels import RunProgress, StageTracker

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from contrast import contrast  # noqa: E402

SIZES = [(80, 24), (120, 40)]
GIB = 1 << 30
GAUGES = dict(gpu_mem_allocated=int(12.3 * GIB), gpu_mem_peak=int(13.2 * GIB),
              gpu_mem_total=int(139.8 * GIB), gpu_util=88, gpu_power_w=560.0, mfu=0.38,
              host_rss=int(6.3 * GIB))
# words run together: a unit or number straight into a word ("140Gpeak", "200ETA",
# "prepare0/7 done")
GLUED = re.compile(r"\d[GM]?[a-zA-Z]{2,}|[a-z]\d+/\d+ done")


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _write_events(run: Path, events: list[dict]) -> None:
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _with_gauges(run: Path) -> Path:
    _write_events(run, [{**e, **GAUGES} if e["type"] == "step" else e for e in _events(run)])
    return run


def _rows(widget: Widget) -> list[str]:
    """The widget's rows as the screen shows them (borders included)."""
    screen = [("".join(seg.text for seg in strip))
              for strip in widget.screen._compositor.render_strips()]
    r = widget.region
    return [row[r.x:r.right] for row in screen[r.y:r.bottom]]


async def _open(app: KDApp, pilot, wait_for, step: int) -> RunScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                   and app.screen.query_one(RunProgress).step >= step)
    await pilot.pause(0.4)
    return app.screen


def _footer_keys(app: KDApp) -> set[str]:
    return {b.binding.action for b in app.screen.active_bindings.values() if b.binding.show}


def _footer_text(screen: RunScreen) -> str:
    return "\n".join(_rows(screen.query_one(Footer)))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_progress_gauges_and_stages_set_their_parts_off(runs_dir, wait_for, write_run,
                                                             size):
    run = _with_gauges(write_run(runs_dir / "done", steps=200))
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=size) as pilot:
        screen = await _open(app, pilot, wait_for, 200)
        progress = "\n".join(_rows(screen.query_one(RunProgress)))
        gauges = "\n".join(_rows(screen.query_one(GaugeRow)))
        stages = "\n".join(_rows(screen.query_one(StageTracker)))
        if size == (80, 24):  # compact: step and ETA on one line
            assert "step 200 / 200 · ETA 0s" in progress, progress
        else:
            assert "step 200 / 200" in progress and "ETA 0s" in progress, progress
        assert re.search(r"GPU 12\.3/140G( [▁-█]+)? · peak 13\.2G · util 88%", gauges), gauges
        for text in (progress, gauges, stages):
            assert not GLUED.search(text), text


async def test_the_compact_stage_line_sets_the_count_off(runs_dir, wait_for, write_run):
    """A run with no stage event yet (at 80x24 the tracker is one line): `· prepare · 0/7
    done`, and a running stage: `▶ train <clock> · 4/7 done`."""
    run = write_run(runs_dir / "early", steps=200)
    _write_events(run, [e for e in _events(run) if e["type"] != "stage"])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(app, pilot, wait_for, 200)
        line = _rows(screen.query_one(StageTracker))[1]
        assert "· prepare · 0/7 done" in line, line
    run = write_run(runs_dir / "going", steps=200, upto=120, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(app, pilot, wait_for, 120)
        line = _rows(screen.query_one(StageTracker))[1]
        assert re.search(r"▶ train \S+ · 4/7 done", line), line


def test_a_narrow_gauge_row_drops_parts_rather_than_gluing_them():
    row = GaugeRow()
    row.latest = dict(GAUGES)
    full = row.line(with_sparklines=False).plain
    assert full == "GPU 12.3/140G · peak 13.2G · util 88% · power 560W · MFU 38.0% · host 6.3G"
    assert row.line(with_sparklines=False, most=2).plain == "GPU 12.3/140G · peak 13.2G"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_stop_run_is_offered_while_the_run_goes_only(runs_dir, wait_for, write_run, size):
    """A running run has `x Stop run` in its footer; when it finishes (on this screen) the key
    goes; a finished run opened has none."""
    whole = _events(write_run(runs_dir / "whole", steps=200))
    run = write_run(runs_dir / "going", steps=200, upto=120, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=size) as pilot:
        screen = await _open(app, pilot, wait_for, 120)
        assert screen.running and "stop_run" in _footer_keys(app)
        assert "Stop run" in _footer_text(screen)
        seq = len(_events(run))
        rest = [e for e in whole if e["type"] != "run_started"
                and (e["type"] != "step" or e["step"] > 120)]
        rest = [e for e in rest if e["type"] not in ("stage", "eval")
                or e["t"] > max(x["t"] for x in _events(run))]
        with (run / "events.jsonl").open("a") as out:
            for i, event in enumerate(rest):
                out.write(json.dumps({**event, "seq": seq + i}) + "\n")
        await wait_for(pilot, lambda: screen.state.finished is not None)
        await pilot.pause(0.4)
        assert not screen.running and "stop_run" not in _footer_keys(app)
        assert "Stop run" not in _footer_text(screen)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="whole")
    async with app.run_test(size=size) as pilot:
        screen = await _open(app, pilot, wait_for, 200)
        assert "stop_run" not in _footer_keys(app)
        assert "Stop run" not in _footer_text(screen)


class _FailingLauncher:
    stages = ("check", "start")

    async def start(self, on_stage: Callable[[StageUpdate], None]):
        on_stage(StageUpdate("check", "done", 0.1, "inputs ok"))
        raise OSError("no room on the device")


async def test_a_failed_launch_offers_no_stop_run(wait_for):
    app = KDApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.push_screen(RunScreen(launcher=_FailingLauncher(), title="z on local"))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.launch_failed is not None)
        await pilot.pause(0.3)
        assert "stop_run" not in _footer_keys(app)
        assert "Stop run" not in _footer_text(app.screen)


@pytest.mark.parametrize("theme", ["kdtui-dark", "kdtui-light", "kdtui-high-contrast"])
async def test_the_legend_labels_are_readable_in_every_theme(runs_dir, wait_for, write_run,
                                                            theme):
    run = write_run(runs_dir / "done", steps=200)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run), theme=theme)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _open(app, pilot, wait_for, 200)
        chart = screen.query_one(LossChart)
        await wait_for(pilot, lambda: "val_loss" in chart.legend)
        await pilot.pause(0.3)
        r = chart.region
        strip = screen._compositor.render_strips()[r.bottom - 1]
        labels = [seg for seg in strip.crop(r.x, r.right)
                  if re.search(r"[a-z]", seg.text)]
        assert "".join(seg.text for seg in labels).split() == ["loss", "kd", "ce", "val_loss"]
        for seg in labels:
            fg = Color.from_rich_color(seg.style.color)
            bg = Color.from_rich_color(seg.style.bgcolor)
            assert contrast(fg, bg) >= 4.5, (theme, seg)


async def test_an_ended_run_never_offers_stop_run_not_even_before_its_events(
        runs_dir, wait_for, write_run, end_run, monkeypatch):
    """`kdtui watch` of a completed run, and of one whose engine died (no run_finished, no
    process): Stop run is never offered, not in the first frame either (the footer asked
    check_action before the events were read, and the unknown run counted as running)."""
    offered: list[str] = []
    check_action = RunScreen.check_action

    def spy(self, action, parameters):
        answer = check_action(self, action, parameters)
        if action == "stop_run" and answer is not False:
            offered.append(self.handle.run_id)
        return answer

    monkeypatch.setattr(RunScreen, "check_action", spy)
    write_run(runs_dir / "completed", steps=40)
    end_run(write_run(runs_dir / "killed", steps=200, upto=30, finished=False), "stopped", None)
    for run_id in ("completed", "killed"):
        app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=run_id)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await _open(app, pilot, wait_for, 30)
            await wait_for(pilot, lambda s=screen: s.state.finished is not None or s.ended)
            await pilot.pause(0.2)
            assert "Stop run" not in _footer_text(screen)
    assert offered == []


@pytest.mark.parametrize("status, checkpoint, offered", [
    ("completed", None, False), ("failed", 20, True), ("failed", None, False)])
async def test_resume_is_offered_for_an_ended_run_with_a_checkpoint_only(
        runs_dir, wait_for, write_run, end_run, status, checkpoint, offered):
    """The run screen's R (in the F1 help and the palette): a stopped or failed run with a
    checkpoint has it; a completed run, or one with nothing to continue from, does not."""
    from kdtui.palette import bindings_for

    run = write_run(runs_dir / "r", steps=40, upto=None if status == "completed" else 30,
                    finished=status == "completed")
    if status != "completed":
        end_run(run, status, checkpoint)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="r")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(app, pilot, wait_for, 30)
        await wait_for(pilot, lambda: screen.state.finished is not None or screen.ended)
        await pilot.pause(0.2)
        keys = {b.action for _, b in bindings_for(screen, app)}
        assert ("resume" in keys) == offered, keys


async def test_the_chart_axes_show_in_an_ansi_theme(runs_dir, wait_for, write_run):
    """Under an ANSI theme (the terminal's own colours) the chart's axis labels are in the
    terminal's colours: they were black on black. Switching to another theme and back works."""
    run = write_run(runs_dir / "done", steps=60)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run), theme="ansi-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(app, pilot, wait_for, 60)
        chart = screen.query_one(LossChart)
        for theme in ("ansi-dark", "kdtui-light", "ansi-light"):
            app.theme = theme
            await pilot.pause(0.3)
            r = chart.region
            labels = [seg for strip in screen._compositor.render_strips()[r.y:r.bottom]
                      for seg in strip.crop(r.x, r.right) if re.search(r"\d\.\d\d", seg.text)]
            assert labels, theme
            for seg in labels:
                fg = seg.style.color  # the terminal's default colour, or one unlike the ground
                assert fg is None or fg.is_default or fg != seg.style.bgcolor, (theme, seg)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_footer_reads_key_then_what_it_does(runs_dir, wait_for, write_run, size):
    """A running run's footer read `m EMA l Log y x Stop run`: `y` and `x` side by side, as if
    both were keys. No description holds a lone letter (one reads as a key), every shown key is
    there whole with its description, and where the width allows (120 columns) two spaces set
    one key off from the next."""
    run = write_run(runs_dir / "going", steps=200, upto=120, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=size) as pilot:
        screen = await _open(app, pilot, wait_for, 120)
        assert screen.running
        text = _footer_text(screen)
        shown = [b for b in app.screen.active_bindings.values() if b.binding.show]
        for active in shown:
            description = active.binding.description
            assert not re.search(r"(^| )[a-zA-Z]( |$)", description), description
            key = app.get_key_display(active.binding)
            assert f"{key} {description}" in text, (key, description, text)
        gap = "  " if size[0] >= 120 else " "
        assert f"m EMA{gap}l Log scale{gap}x Stop run{gap}^q Quit" in text, text
