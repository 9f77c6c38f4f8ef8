"""The run screen's layout at the sizes people have (80x24 up), in every theme: the whole verdict
panel of a finished run shows, the chart keeps room, and no panel sits on another theme's
background. Pilot checks of the geometry, and snapshots (pytest-textual-snapshot) to look at.

Update after an intended change of the look:
pytest tests/tui/test_run_layout.py --snapshot-update (then look at the pictures).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.segment import Segment

from kdtui.app import KDApp
from kdtui.launch.base import StageUpdate
from kdtui.launch.local import LocalRunHandle
from kdtui.screens.run import RunScreen
from kdtui.widgets import run_panels
from kdtui.widgets.loss_chart import LossChart
from kdtui.widgets.run_panels import RunProgress, StageTracker, VerdictPanel

SIZES = [(80, 24), (120, 40)]
T0 = 1_760_000_000.0  # write_run's fixed clock (tests/tui/conftest.py)
THEMES = ["kdtui-light", "kdtui-high-contrast"]


@pytest.fixture(autouse=True)
def frozen_stage_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # a running stage's clock ticks; a picture must not depend on when it was taken
    monkeypatch.setattr(run_panels, "time", SimpleNamespace(monotonic=lambda: 1000.0,
                                                            time=lambda: T0 + 1000.0))


class AttachingLauncher:
    """What the form's local launcher shows before the engine's own stages (check, start),
    ending in a handle on a run already written: a form run's screen with fixed content."""

    stages = ("check", "start")

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    async def start(self, on_stage: Callable[[StageUpdate], None]) -> LocalRunHandle:
        on_stage(StageUpdate("check", "done", 0.4, "inputs ok"))
        on_stage(StageUpdate("start", "done", 0.1, "pid 4242"))
        return LocalRunHandle.attach(self.run_dir)


def failed_run(write_run: Callable[..., Path], run_dir: Path) -> Path:
    """A run that trained 120 of 300 steps, then its train stage failed (a long reason)."""
    write_run(run_dir, steps=300, upto=120, finished=False)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    error = "RuntimeError: CUDA error: an illegal memory access was encountered"
    t, seq = events[-1]["t"] + 0.1, len(events)
    for payload in ({"type": "stage", "stage": "train", "state": "failed", "elapsed": 7.0,
                     "detail": error},
                    {"type": "log", "level": "error", "message": error},
                    {"type": "run_finished", "status": "failed", "exit_code": 1, "error": error,
                     "stage": "train", "steps": 120}):
        events.append({"v": 1, "seq": seq, "t": t, **payload})
        seq += 1
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    with open(run_dir / "launch.log", "a") as fh:
        fh.write(f"[train] failed (7.0s): {error}\nERROR: {error}\n")
    return run_dir


def _settled(until: Callable[[KDApp], bool], before: Callable | None = None):
    async def run_before(pilot) -> None:
        if before is not None:
            await before(pilot)
        for _ in range(200):
            await pilot.pause(0.05)
            if until(pilot.app):
                break
        await pilot.pause(0.4)  # one chart redraw after the last update
    return run_before


def _verdict_shown(app: KDApp) -> bool:
    return bool(app.screen.query(VerdictPanel)) and \
        app.screen.query_one(VerdictPanel).status != "pending"


def verdict_is_whole(screen: RunScreen) -> bool:
    """Every row of the verdict panel is inside the side column and on screen."""
    panel = screen.query_one(VerdictPanel)
    side = screen.query_one("#run-side")
    return (side.region.contains_region(panel.region) and screen.region.contains_region(
        panel.region) and panel.region.height == panel.height_for(side.region.width))


# -- the geometry, at each size -------------------------------------------------------------
@pytest.mark.parametrize("size", [(80, 24), (100, 30), (120, 40), (160, 48)])
@pytest.mark.parametrize("started", ["watched", "from the form", "failed"])
async def test_the_whole_verdict_of_a_finished_run_shows_at_every_size(
        runs_dir, wait_for, write_run, size, started):
    if started == "failed":
        run = failed_run(write_run, runs_dir / "ended")
    else:
        run = write_run(runs_dir / "ended", steps=300)
    if started == "from the form":
        app = KDApp(runs_dir=runs_dir)
    else:
        app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=size) as pilot:
        if started == "from the form":
            await pilot.pause()
            app.push_screen(RunScreen(launcher=AttachingLauncher(run), title="ended on local"))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        screen = app.screen
        await wait_for(pilot, lambda: _verdict_shown(app))
        await pilot.pause(0.2)
        assert verdict_is_whole(screen), (screen.query_one(VerdictPanel).region,
                                          screen.query_one("#run-side").region)
        chart = screen.query_one(LossChart)
        assert chart.region.width >= 40 and chart.region.height >= 15
        assert screen.query_one("#log").region.height >= 5
        tracker = screen.query_one(StageTracker)
        if started == "from the form":
            assert list(tracker.rows)[:2] == ["check", "start"]
        # the stage list is whole where there is room for it, one line where there is not
        if size[1] >= 40:
            assert not tracker.compact and tracker.region.height == len(tracker.rows) + 2
        if size == (80, 24):
            assert tracker.compact and tracker.region.height == 3


# -- snapshots -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_of_a_finished_run(snap_compare, runs_dir, write_run, size):
    write_run(runs_dir / "finished", steps=300)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="finished", theme="kdtui-dark")
    assert snap_compare(app, terminal_size=size, run_before=_settled(_verdict_shown))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_of_a_run_started_from_the_form(snap_compare, runs_dir, write_run, size):
    run = write_run(runs_dir / "formrun", steps=300)

    async def open_it(pilot) -> None:
        await pilot.pause()
        pilot.app.push_screen(RunScreen(launcher=AttachingLauncher(run),
                                        title="formrun on local"))

    app = KDApp(runs_dir=runs_dir, theme="kdtui-dark")
    assert snap_compare(app, terminal_size=size,
                        run_before=_settled(_verdict_shown, before=open_it))


def test_snapshot_of_a_failed_run_at_80x24(snap_compare, runs_dir, write_run):
    failed_run(write_run, runs_dir / "failed")
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="failed", theme="kdtui-dark")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_settled(_verdict_shown))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("theme", THEMES)
def test_snapshot_after_switching_theme_on_a_finished_run(snap_compare, runs_dir, write_run,
                                                          size, theme):
    """Drawn in the dark theme first, then switched: nothing keeps the dark background."""
    write_run(runs_dir / "themed", steps=300, log_extra=["WARNING: planted for the colours"])
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="themed", theme="kdtui-dark")

    async def switch(pilot) -> None:
        for _ in range(200):
            await pilot.pause(0.05)
            if _verdict_shown(pilot.app):
                break
        await pilot.pause(0.3)
        pilot.app.theme = theme

    assert snap_compare(app, terminal_size=size, run_before=_settled(lambda app: True, switch))


# -- colours -----------------------------------------------------------------------------------
@pytest.mark.parametrize("theme", THEMES)
async def test_stage_rows_and_rank_badges_carry_no_background_of_their_own(
        runs_dir, wait_for, write_run, theme):
    """Their text is drawn over the widget's background, whatever theme is on now."""
    write_run(runs_dir / "colours", steps=50)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="colours", theme="kdtui-dark")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _verdict_shown(app))
        app.theme = theme
        await pilot.pause(0.2)
        tracker = app.screen.query_one(StageTracker)
        progress = app.screen.query_one(RunProgress)
        progress.set_ranks(2, "gloo")
        progress.rank_failed(1, "boom")
        background = app.screen.styles.background.rich_color
        for widget in (tracker, progress):
            lines = app.console.render_lines(widget.render(), app.console.options.update_width(
                widget.content_size.width), pad=False)
            styles = {seg.style for seg in Segment.apply_style(
                [s for line in lines for s in line], None) if seg.style}
            assert all(style.bgcolor is None for style in styles), (widget, background)
