"""The compare screen never compares runs of another alpha by their objective: train loss
(alpha*CE + (1-alpha)*T^2*D) is drawn as the train CE when the runs' alpha, temperature or loss
differ, and the chart's title says why; runs that share their objective keep train loss."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from kdtui.app import KDApp
from kdtui.compare import CompareTarget, load_summary
from kdtui.widgets.compare_chart import CompareChart

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from contrast import contrast  # noqa: E402

T0 = 1_760_000_000.0


def write_run(run_dir: Path, *, alpha: float, seed: int = 1, temperature: float = 2.0,
              steps: int = 40) -> Path:
    """A recorded run whose objective is alpha*CE + (1-alpha)*KD: with alpha 1 the train loss
    is the CE itself, with a lower alpha the KD term pulls it far below (the trap: a lower
    curve that is not a better student)."""
    run_dir.mkdir(parents=True)
    config = {"teacher": "demo://teacher", "student": "demo://student", "steps": steps,
              "alpha": alpha, "temperature": temperature, "loss": "forward_kl", "seed": seed,
              "run_name": run_dir.name, "run_dir": str(run_dir)}
    events: list[dict[str, Any]] = []

    def emit(kind: str, **payload: Any) -> None:
        events.append({"v": 1, "seq": len(events), "t": T0 + len(events), "type": kind,
                       **payload})

    emit("run_started", run_id=run_dir.name, run_dir=str(run_dir), config=config)
    for step in range(0, steps + 1, 5):
        ce = 5.0 - step / steps * (2.0 if alpha == 1.0 else 1.5)  # the alpha-1 run learns more
        kd = 0.4 * (1 - step / steps / 2)
        if step:
            emit("step", step=step, loss=alpha * ce + (1 - alpha) * kd, ce=ce, kd=kd,
                 total_steps=steps)
        if step % 20 == 0:
            emit("eval", step=step, val_loss=alpha * ce + (1 - alpha) * kd, val_ce=ce,
                 val_kd=kd)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def step_values(run_dir: Path, name: str) -> list[float]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e[name] for e in map(json.loads, lines) if e["type"] == "step"]


async def _chart_after(pilot, presses: int) -> CompareChart:
    app = pilot.app
    while not getattr(app.screen, "loaded", False):
        await pilot.pause(0.05)
    for _ in range(presses):
        await pilot.press("c")
    await pilot.pause(0.4)
    return app.screen.query_one(CompareChart)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_train_loss_of_runs_of_another_alpha_is_drawn_as_train_ce(runs_dir, size):
    kd = write_run(runs_dir / "kd-a03", alpha=0.3)
    ce_only = write_run(runs_dir / "ce-only", alpha=1.0)
    app = KDApp(runs_dir=runs_dir, command="compare",
                compare_targets=[CompareTarget.local(kd), CompareTarget.local(ce_only)])
    async with app.run_test(size=size) as pilot:
        chart = await _chart_after(pilot, 2)  # val CE -> val KD -> train loss
        assert chart.metric == "loss"
        assert chart.border_title.startswith("train CE (alpha differs")
        kd_ys = chart.points(chart.summaries[0])[1]
        assert kd_ys == step_values(kd, "ce")
        # before: the objective, on which the alpha-0.3 run looked the better student
        assert step_values(kd, "loss")[-1] < step_values(ce_only, "loss")[-1]
        assert kd_ys[-1] > chart.points(chart.summaries[1])[1][-1]
        assert size[0] - 4 >= len(chart.border_title)  # the reason shows whole at 80 columns
        chart = await _chart_after(pilot, 1)  # back to val CE: the same in every run
        assert chart.border_title == "val CE"


async def test_runs_that_share_their_objective_compare_by_train_loss(runs_dir):
    one = write_run(runs_dir / "seed1", alpha=0.3, seed=1)
    two = write_run(runs_dir / "seed2", alpha=0.3, seed=2)
    app = KDApp(runs_dir=runs_dir, command="compare",
                compare_targets=[CompareTarget.local(one), CompareTarget.local(two)])
    async with app.run_test(size=(80, 24)) as pilot:
        chart = await _chart_after(pilot, 2)
        assert chart.border_title == "train loss"
        assert chart.points(chart.summaries[0])[1] == step_values(one, "loss")


def test_train_loss_of_runs_of_another_temperature_is_drawn_as_train_ce(tmp_path):
    from kdtui.compare import shown_metric

    runs = [load_summary(write_run(tmp_path / "t2", alpha=0.3)),
            load_summary(write_run(tmp_path / "t4", alpha=0.3, temperature=4.0))]
    series, title = shown_metric("loss", runs)
    assert series == "ce" and title.startswith("train CE (temperature differs")
    runs.append(load_summary(write_run(tmp_path / "ce-only", alpha=1.0)))
    series, title = shown_metric("loss", runs)
    # two fields named, the reason whole in an 80-column border (was cut: '... objecti…')
    assert title == "train CE (alpha, temperature differ: train loss not comparable)"
    assert len(title) <= 80 - 6
    assert shown_metric("val_ce", runs) == ("val_ce", "val CE")
    # val KD is each run's divergence at its own T: not drawn across temperatures
    assert shown_metric("val_kd", runs) == ("", "val KD (temperature differs: KD not "
                                                "comparable)")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_chart_legend_hides_no_point_of_the_curves(runs_dir, size):
    # plotext's legend sat on the plot's top left, where every run's step-0 val CE (its
    # highest point) is drawn: the start of each curve was hidden under the run names
    names = ["kd-20261130-035312", "kd-20261130-041500", "kd-20261130-043000"]
    dirs = [write_run(runs_dir / name, alpha=0.3, seed=i) for i, name in enumerate(names)]
    app = KDApp(runs_dir=runs_dir, command="compare",
                compare_targets=[CompareTarget.local(d) for d in dirs])
    async with app.run_test(size=size) as pilot:
        chart = await _chart_after(pilot, 0)
        region = chart.region
        strips = app.screen._compositor.render_strips()
        inside = "\n".join(  # the chart's cells inside its border
            "".join(seg.text for seg in strips[y])[region.x + 1:region.right - 1]
            for y in range(region.y + 1, region.bottom - 1))
        assert not any(name in inside for name in names), inside
        # each run's colour and name are the table's (■ by its place in the selection)
        table = str(app.screen.query_one("#compare-table").get_row_at(0)[0])
        assert table == f"■ {names[0]}"


@pytest.mark.parametrize("theme", ["kdtui-dark", "kdtui-light"])
async def test_each_run_has_one_colour_in_the_chart_its_legend_and_the_table(runs_dir, theme):
    # plotext's "orange" is ANSI 3 (the table drew dark_orange, 208), plotext has no "yellow"
    # (the 8th run's curve was drawn in the text colour), and a dark theme's terminal palette
    # draws magenta and red alike: the 2nd and 6th runs were one colour
    dirs = [write_run(runs_dir / f"r{i}", alpha=0.3, seed=i) for i in range(8)]
    app = KDApp(runs_dir=runs_dir, command="compare", theme=theme,
                compare_targets=[CompareTarget.local(d) for d in dirs])
    async with app.run_test(size=(120, 40)) as pilot:
        chart = await _chart_after(pilot, 0)
        strips = app.screen._compositor.render_strips()

        def marks(y: int) -> list:  # the colour of each ■ drawn on screen row y
            return [seg.style.color.get_truecolor() if seg.style.color else None
                    for seg in strips[y] for ch in seg.text if ch == "■"]

        legend = marks(chart.region.bottom - 1)
        table = app.screen.query_one("#compare-table").region
        rows = [marks(y) for y in range(table.y + 1, table.y + 9)]  # under its header
        assert len(legend) == 8 and all(len(r) == 1 for r in rows), (legend, rows)
        assert legend == [r[0] for r in rows]
        assert None not in legend and len(set(legend)) == 8  # eight runs, eight colours
        background = app.screen.query_one("#compare-chart").rich_style.bgcolor.get_truecolor()
        assert min(contrast(c, background) for c in legend) >= 3.0


async def test_help_over_compare_says_how_to_reach_the_columns_that_do_not_fit(runs_dir):
    # at 80 columns the table's last columns (step-0 CE, teacher CE) lie past the edge: the
    # arrows scroll to them, and nothing said so
    names = ["kd-20261130-035312", "kd-20261130-041500"]
    dirs = [write_run(runs_dir / names[0], alpha=0.3), write_run(runs_dir / names[1], alpha=1.0)]
    app = KDApp(runs_dir=runs_dir, command="compare",
                compare_targets=[CompareTarget.local(d) for d in dirs])
    async with app.run_test(size=(80, 24)) as pilot:
        await _chart_after(pilot, 0)
        table = app.screen.query_one("#compare-table")
        assert table.virtual_size.width > table.size.width  # it does not fit
        await pilot.press("f1")
        await pilot.pause(0.3)
        text = " ".join(str(w.render()) for w in app.screen.query(".dialog-body"))
        assert "← → scroll to the columns that do not fit" in text
        assert "final val CE" in text
        await pilot.press("escape")
        await pilot.press("right", "right", "right", "right", "right", "right")
        await pilot.pause(0.2)
        assert table.scroll_x > 0


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_val_kd_of_runs_of_another_temperature_is_not_overlaid(runs_dir, size):
    # each run's val KD is its divergence at its own T: a T=4 run's softer distributions sit
    # lower whatever the student learned, so one axis for both invited the wrong reading
    t2 = write_run(runs_dir / "t2", alpha=0.3)
    t4 = write_run(runs_dir / "t4", alpha=0.3, temperature=4.0)
    app = KDApp(runs_dir=runs_dir, command="compare",
                compare_targets=[CompareTarget.local(t2), CompareTarget.local(t4)])
    async with app.run_test(size=size) as pilot:
        chart = await _chart_after(pilot, 1)  # val CE -> val KD
        assert chart.metric == "val_kd"
        assert chart.border_title == "val KD (temperature differs: KD not comparable)"
        assert size[0] - 4 >= len(chart.border_title)
        assert all(chart.points(s) == ([], []) for s in chart.summaries)
        region = chart.region
        strips = app.screen._compositor.render_strips()
        inside = "\n".join("".join(seg.text for seg in strips[y])[region.x:region.right]
                           for y in range(region.y, region.bottom))
        assert "KD is its own divergence at its own T (compare val CE)" in inside, inside
        chart = await _chart_after(pilot, 1)  # train loss: drawn as train CE, as before
        assert chart.border_title.startswith("train CE (temperature differs")


def test_val_kd_compares_across_alpha_and_seed_not_loss(tmp_path):
    from kdtui.compare import shown_metric

    runs = [load_summary(write_run(tmp_path / "a03", alpha=0.3)),
            load_summary(write_run(tmp_path / "a05", alpha=0.5, seed=2))]
    assert shown_metric("val_kd", runs) == ("val_kd", "val KD")  # same T and divergence
    runs[1].config["loss"] = "reverse_kl"
    series, title = shown_metric("val_kd", runs)
    assert series == "" and title == "val KD (loss differs: KD not comparable)"
