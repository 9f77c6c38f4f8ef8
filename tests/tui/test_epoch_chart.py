"""Epoch-end losses in the run screen: an apr run's `Epoch N/M: loss: X` lines (parsed into
`epoch` events) become their own labelled series on the loss chart, at the step where each epoch
ended, and the progress panel shows which epoch the run is in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.content import Content

from kdtui.app import KDApp
from kdtui.profiles.apr.watch import AprEventsSource
from kdtui.screens.run import RunScreen
from kdtui.watch import LocalRunSource
from kdtui.widgets.loss_chart import EPOCH_LABEL, LossChart
from kdtui.widgets.run_panels import RunProgress

STANDIN = Path(__file__).resolve().parents[1] / "profiles" / "apr_standin.py"
SIZE = (150, 44)


async def _redrawn(pilot, chart: LossChart) -> None:
    """The chart has drawn what it was given (it redraws every REDRAW_S when dirty), and the
    screen shows it."""
    while chart._dirty:
        await pilot.pause(0.02)
    await pilot.pause()


@dataclass
class AprLogHandle:
    """A RunHandle for an apr launch.log on this machine, followed as the run screen follows
    any apr run (AprEventsSource parsing the log into events)."""

    run_dir: Path
    epochs: int | None = None
    run_id: str = "apr-local"
    host: str = "local"
    source: Any = field(init=False)

    def __post_init__(self) -> None:
        self.source = AprEventsSource(LocalRunSource(self.run_dir), epochs=self.epochs)

    async def cancel(self) -> None:
        return None

    def extra(self) -> dict[str, Any]:
        return {"local_run_dir": str(self.run_dir)}


def run_standin(run_dir: Path, *, epochs: int, steps: int) -> str:
    """The apr stand-in, run for real: `apr pull` two models, then `apr distill` into
    launch.log. Returns the log."""
    run_dir.mkdir(parents=True)
    env = {**os.environ, "APR_STANDIN_MODE": "normal", "APR_STANDIN_STEP_DELAY": "0",
           "APR_STANDIN_STEPS": str(steps), "XDG_CACHE_HOME": str(run_dir / "cache")}
    models = []
    for ref in ("hf://org/t/model.apr", "org/s"):
        out = subprocess.run([sys.executable, str(STANDIN), "pull", ref], env=env, check=True,
                             capture_output=True, text=True).stdout
        path = next(line.split("Path: ")[1] for line in out.splitlines() if "Path: " in line)
        models.append(re.sub(r"\x1b\[[0-9;]*m", "", path))
    with open(run_dir / "launch.log", "wb") as log:
        subprocess.run([sys.executable, str(STANDIN), "distill", models[0], "--student",
                        models[1], "--epochs", str(epochs), "--backend", "cuda", "--output",
                        str(run_dir / "student")], env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    return (run_dir / "launch.log").read_text()


async def _open_run(app: KDApp, pilot: Any, handle: AprLogHandle, wait_for) -> RunScreen:
    await pilot.pause()
    app.push_screen(RunScreen(handle=handle, title="apr"))
    await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                   and bool(app.screen.query(RunProgress)), 10)
    return app.screen


async def test_an_apr_run_puts_each_epoch_end_loss_on_its_own_labelled_series(
        tmp_path, runs_dir, wait_for):
    log = run_standin(tmp_path / "apr", epochs=3, steps=5)
    epoch_losses = [float(x) for x in re.findall(r"^Epoch \d+/3: loss: (\S+)$", log, re.M)]
    assert len(epoch_losses) == 3
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_run(app, pilot, AprLogHandle(tmp_path / "apr", epochs=3), wait_for)
        await wait_for(pilot, lambda: screen.state.finished is not None, 20)
        chart = screen.query_one(LossChart)
        await _redrawn(pilot, chart)
        assert chart.point_count == 15  # the step series is as before
        # each epoch's loss at the step its epoch ended: 5, 10, 15
        assert chart.epoch.points() == ([5.0, 10.0, 15.0], epoch_losses)
        assert chart.epoch_numbers == {5: 1, 10: 2, 15: 3}
        plain = chart.render().plain
        assert EPOCH_LABEL in chart.legend  # in the legend (the bottom border: not on the plot)
        assert plain.count("◆") == 3  # three points
        assert all(f"e{n}" in plain for n in (1, 2, 3))
        progress = screen.query_one(RunProgress)
        assert "step 15 / 15   epoch 3/3" in progress.render().plain
        # log y and EMA keep the epoch points (EMA smooths the step series only)
        await pilot.press("l", "m")
        await _redrawn(pilot, chart)
        plain = chart.render().plain
        assert EPOCH_LABEL in chart.legend and plain.count("◆") == 3
        # a border title is markup: what the border shows is its plain text
        assert Content.from_markup(chart.border_title).plain == "loss (EMA, log y)"


async def test_log_y_survives_redraws_of_the_same_data(tmp_path, runs_dir, wait_for):
    """plotext takes the log of its data in place: a second draw of the same data (a resize)
    used to take the log of a log and crash the app."""
    run_standin(tmp_path / "apr", epochs=2, steps=4)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_run(app, pilot, AprLogHandle(tmp_path / "apr", epochs=2), wait_for)
        await wait_for(pilot, lambda: screen.state.finished is not None, 20)
        await pilot.press("l")
        chart = screen.query_one(LossChart)
        await _redrawn(pilot, chart)
        # shown, not read as a markup tag as "[log y]" was
        assert Content.from_markup(chart.border_title).plain == "loss (log y)"
        first = chart.render().plain
        await pilot.resize_terminal(140, 44)
        await pilot.pause(0.3)
        await pilot.resize_terminal(*SIZE)
        await pilot.pause(0.3)
        assert app.is_running and chart.render().plain == first
        assert EPOCH_LABEL in chart.legend and first.count("◆") == 2


async def test_the_progress_panel_shows_the_epoch_the_run_is_in_as_it_goes(
        tmp_path, runs_dir, wait_for):
    """Steps numbered across epochs (no per-epoch restart): before the first epoch ends the
    handle's epoch count says 1/3; after `Epoch 1/3` the next steps are epoch 2."""
    run_dir = tmp_path / "live"
    run_dir.mkdir()
    log = run_dir / "launch.log"
    log.write_text("".join(f"Step {i}/15: loss: {5 - i * 0.1:.4f}\n" for i in range(1, 4)))
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_run(app, pilot, AprLogHandle(run_dir, epochs=3), wait_for)
        progress = screen.query_one(RunProgress)
        chart = screen.query_one(LossChart)
        await wait_for(pilot, lambda: progress.step == 3, 10)
        await pilot.pause(0.2)
        assert "step 3 / 15   epoch 1/3" in progress.render().plain
        assert chart.epoch_point_count == 0
        with log.open("a") as fh:
            fh.write("Step 4/15: loss: 4.6000\nStep 5/15: loss: 4.5000\n"
                     "Epoch 1/3: loss: 4.7000\nStep 6/15: loss: 4.4000\n")
        await wait_for(pilot, lambda: progress.step == 6, 10)
        await pilot.pause(0.2)
        assert "epoch 2/3" in progress.render().plain
        assert chart.epoch.points() == ([5.0], [4.7])


async def test_a_run_without_epochs_shows_no_epoch(runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "kdengine", steps=30)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.state.finished is not None)
        chart = screen.query_one(LossChart)
        await _redrawn(pilot, chart)
        assert "epoch" not in screen.query_one(RunProgress).render().plain
        assert chart.epoch_point_count == 0
        assert EPOCH_LABEL not in chart.render().plain
