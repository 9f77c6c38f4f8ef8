"""The run screen's loss chart: its legend is in the bottom border, so it hides no point of the
plot (plotext's own sat on the top left, over step 0 and the step-0 validation point), and its
step axis is labelled with whole steps (a run at step 335 read `0.0 83.8 167.5 251.2 335.0`)."""

from __future__ import annotations

import os
import re

import pytest

from kdtui.app import KDApp
from kdtui.screens.run import RunScreen
from kdtui.widgets.loss_chart import LossChart, integer_ticks, step_label

SIZES = [(80, 24), (120, 40)]
EVALS_300 = 7  # write_run's evals of a 300-step run: steps 0, 50, ..., 250, then 300


async def _chart(app: KDApp, pilot, wait_for, points: int) -> LossChart:
    await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                   and bool(app.screen.query(LossChart))
                   and app.screen.query_one(LossChart).point_count >= points)
    await pilot.pause(0.5)  # one redraw after the last point
    return app.screen.query_one(LossChart)


def _plot_rows(plain: str) -> list[str]:
    """The rows inside the plot's frame (between ┌ and └), without the y axis."""
    rows = plain.splitlines()
    top = next(i for i, row in enumerate(rows) if "┌" in row)
    bottom = next(i for i, row in enumerate(rows) if "└" in row)
    return [re.sub(r"^[^┤│]*[┤│]", "", row).rstrip("│ ") for row in rows[top + 1:bottom]]


def _x_labels(plain: str) -> list[str]:
    rows = plain.splitlines()
    bottom = next(i for i, row in enumerate(rows) if "└" in row)
    return rows[bottom + 1].split()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_legend_hides_no_point_of_the_plot(runs_dir, wait_for, write_run, size):
    run = write_run(runs_dir / "done", steps=300)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=size) as pilot:
        chart = await _chart(app, pilot, wait_for, 300)
        plain = chart.render().plain
        plot = "\n".join(_plot_rows(plain))
        # every val point drawn, the step-0 one in the plot's first column, and no label on it
        assert plot.count("●") == EVALS_300, plain
        assert any(row.startswith("●") for row in _plot_rows(plain)), plain
        assert not re.search(r"[a-z]", plot), plain
        # the legend is the bottom border's, in the order the series are drawn
        assert chart.legend == "⢕ loss ⢕ kd ⢕ ce ● val_loss"
        assert "loss" in str(chart.border_subtitle) and "val_loss" in str(chart.border_subtitle)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_step_axis_reads_whole_steps_mid_run(runs_dir, wait_for, write_run, size):
    # a live pid (this one): the run goes on, the watch never judges its engine gone
    run = write_run(runs_dir / "going", steps=1000, upto=335, finished=False, pid=os.getpid())
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=size) as pilot:
        chart = await _chart(app, pilot, wait_for, 335)
        labels = _x_labels(chart.render().plain)
        assert len(labels) >= 3 and all(label.isdigit() for label in labels), labels
        assert labels[0] == "0" and int(labels[-1]) <= 335
        # a narrower chart (a resize) has fewer, still whole and still apart
        await pilot.resize_terminal(size[0] - 20, size[1])
        await pilot.pause(0.3)
        plain = chart.render().plain
        labels = _x_labels(plain)
        assert labels and all(label.isdigit() for label in labels), plain


async def test_a_cached_teacher_badge_goes_after_the_title_and_leaves_the_legend(
        runs_dir, wait_for, write_run):
    run = write_run(runs_dir / "cached", steps=50)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        chart = await _chart(app, pilot, wait_for, 50)
        chart.badge = "teacher cached · K=8 topk · 1.0 MB"
        titled = "loss · teacher cached · K=8 topk · 1.0 MB"
        await wait_for(pilot, lambda: str(chart.border_title) == titled, 10)  # its redraw
        assert str(chart.border_title) == titled
        assert chart.legend.startswith("⢕ loss")
        await pilot.press("l")
        titled = "loss (log y) · teacher cached · K=8 topk · 1.0 MB"
        await wait_for(pilot, lambda: str(chart.border_title) == titled, 10)
        assert str(chart.border_title) == titled


def test_integer_ticks_are_whole_round_and_fit_their_width():
    assert integer_ticks(0, 335, 32) == [0, 100, 200, 300]
    assert integer_ticks(0, 200, 32) == [0, 50, 100, 150, 200]
    assert integer_ticks(1, 4, 32) == [1, 2, 3, 4]
    assert integer_ticks(0, 0, 32) == [0]
    assert integer_ticks(0.5, 0.7, 32) == []  # no whole step in the range: no tick
    for high in (7, 13, 99, 335, 1_234, 99_999, 1_000_000, 123_456_789):
        for columns in (20, 32, 60, 100):
            ticks = integer_ticks(0, high, columns)
            assert all(isinstance(t, int) and 0 <= t <= high for t in ticks)
            cells = max(len(step_label(t)) for t in ticks) + 2
            assert len(ticks) <= 2 or len(ticks) * cells <= columns, (high, columns, ticks)
    assert [step_label(t) for t in (0, 99_999, 150_000, 1_500_000)] == \
        ["0", "99999", "150k", "1.5M"]
