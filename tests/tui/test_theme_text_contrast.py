"""Text the eye has to read in each kdtui theme, measured as drawn: the form's Start button (its
label was 4.2:1 on kdtui-light's green), the stage tracker's rows (a running stage, in the
accent colour, was 4.47:1 on kdtui-light's background), the loss chart's val loss points and
the dialogs' buttons ('Stop it' was 3.1:1 on kdtui-high-contrast's red)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rich.style import Style

from kdtui.app import KDApp
from kdtui.widgets.run_panels import StageTracker

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from contrast import contrast  # noqa: E402

THEMES = ("kdtui-dark", "kdtui-light", "kdtui-high-contrast")


def drawn_styles(app: KDApp, widget) -> set[Style]:
    """The styles of the widget's non-blank cells as the screen draws them."""
    strips = app.screen._compositor.render_strips()
    region = widget.region
    found = set()
    for y in range(region.y, region.bottom):
        x = 0
        for seg in strips[y]:
            text = seg.text.strip(" ▔▁▏▕▎▊")  # a button's half-block edges are no text
            if region.x <= x < region.right and text and seg.style:
                found.add(seg.style)
            x += len(seg.text)
    return found


@pytest.mark.parametrize("theme", THEMES)
async def test_the_start_buttons_label_reads_in_each_theme(runs_dir, wait_for, theme):
    app = KDApp(runs_dir=runs_dir, theme=theme)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        await pilot.pause(0.2)
        styles = drawn_styles(app, app.screen.query_one("#start"))
        assert styles
        for style in styles:
            assert contrast(style.color, style.bgcolor) >= 4.5, (theme, str(style))


@pytest.mark.parametrize("theme", THEMES)
async def test_each_stage_state_reads_in_each_theme(runs_dir, wait_for, write_run, theme):
    write_run(runs_dir / "staged", steps=40, upto=20, finished=False)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="staged", theme=theme)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.query(StageTracker), 30)
        tracker = app.screen.query_one(StageTracker)
        background = tracker.rich_style.bgcolor
        for state in ("pending", "running", "done", "failed", "skipped", "cancelled"):
            color = tracker.get_component_rich_style(f"stage--{state}").color
            assert contrast(color, background) >= 4.5, (theme, state, color, background)


@pytest.mark.parametrize("theme", THEMES)
async def test_the_loss_charts_val_loss_points_show_in_each_theme(runs_dir, wait_for, write_run,
                                                                 theme):
    # plotext's "orange" is the terminal palette's yellow: 2.8:1 on kdtui-light's white chart,
    # under the 3:1 a mark needs to be seen
    from kdtui.widgets.loss_chart import LossChart

    write_run(runs_dir / "evals", steps=200)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="evals", theme=theme)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.query(LossChart)
                       and "val_loss" in app.screen.query_one(LossChart).legend, 30)
        await pilot.pause(0.5)
        chart = app.screen.query_one(LossChart)
        strips = app.screen._compositor.render_strips()
        marks = set()
        for y in range(chart.region.y, chart.region.bottom):
            x = 0
            for seg in strips[y]:
                if chart.region.x <= x < chart.region.right and "●" in seg.text:
                    marks.add(seg.style)
                x += len(seg.text)
        assert marks
        for style in marks:
            assert contrast(style.color, style.bgcolor) >= 3.0, (theme, str(style))


@pytest.mark.parametrize("theme", THEMES)
async def test_the_dialogs_button_labels_read_in_each_theme(runs_dir, wait_for, theme):
    # the Quit dialog's "Stop it" (an error button) was 3.1:1 on kdtui-high-contrast's red
    from textual.widgets import Button

    from kdtui.screens.dialogs import ConfirmScreen, QuitScreen

    app = KDApp(runs_dir=runs_dir, theme=theme)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        for dialog in (QuitScreen(["kd-20261130-080739"]),
                       ConfirmScreen("Stop run r?", "body", yes="Stop the run", no="Keep it")):
            app.push_screen(dialog)
            await wait_for(pilot, lambda d=dialog: app.screen is d, 10)
            app.set_focus(None)  # each button as it looks unfocused
            await pilot.pause(0.3)
            for button in app.screen.query(Button):
                for style in drawn_styles(app, button):
                    if style.color is not None and style.bgcolor is not None:
                        assert contrast(style.color, style.bgcolor) >= 4.5, \
                            (theme, str(button.label), str(style))
            app.pop_screen()
            await pilot.pause()
