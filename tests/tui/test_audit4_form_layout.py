"""The launch form as a new user sees it at 80x24 and 120x40, in a light, an ANSI and the default
theme: the button bar whole above the footer, placeholders that say what an empty field means
(never the meaningless `a value`) and fit the field, and group titles whose rule shows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.color import Color
from textual.widgets import Button, Footer, Input

from kdtui.app import KDApp
from kdtui.screens.launch import FieldInput

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from contrast import contrast  # noqa: E402

SIZES = [(80, 24), (120, 40)]
THEMES = ["kdtui-dark", "kdtui-light", "ansi-dark"]


async def _form(pilot):
    while not pilot.app.screen.form_ready:
        await pilot.pause(0.05)
    await pilot.pause()
    return pilot.app.screen


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_form_buttons_are_whole_above_the_footer(runs_dir, size, theme):
    # both were docked to the bottom, and Textual docks do not stack: the footer covered the
    # buttons' last row (their lower border; in an ANSI theme the box was open at the bottom)
    app = KDApp(runs_dir=runs_dir, theme=theme)
    async with app.run_test(size=size) as pilot:
        form = await _form(pilot)
        footer = form.query_one(Footer).region
        for button in form.query("#form-buttons Button").results(Button):
            assert button.region.bottom <= footer.y, (button.id, button.region, footer)
        bar = form.query_one("#form-buttons").region
        assert bar.bottom <= footer.y
        assert form.query_one("#form").region.bottom <= bar.y


@pytest.mark.parametrize("profile", ["kdengine", "apr"])
async def test_every_placeholder_says_something_and_fits_its_field_at_80_columns(runs_dir,
                                                                                 profile):
    # an empty teacher read `a value` (its bounds text), as if that were its value; run_name's
    # and data_fields' bounds were cut mid-word at 80 columns
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await _form(pilot)
        if profile == "apr":
            form.select_profile("apr")
            while not form.profile_ready("apr"):
                await pilot.pause(0.05)
            await pilot.pause()
        fields = [f for f in form.query(FieldInput).results(FieldInput)
                  if f.id.startswith("apr-") == (profile == "apr")]
        assert fields
        for field in fields:
            assert field.placeholder != "a value", field.id
            assert len(field.placeholder) <= field.content_region.width, (
                field.id, field.placeholder, field.content_region.width)
        teacher = form.query_one("#apr-field-teacher" if profile == "apr" else "#field-teacher",
                                 Input)
        assert teacher.placeholder  # an empty required field says what to type
        if profile == "kdengine":
            assert "kd-" in form.query_one("#field-run_name", Input).placeholder


@pytest.mark.parametrize("theme", ["kdtui-dark", "kdtui-light", "kdtui-high-contrast"])
async def test_group_title_rule_shows_in_each_theme(runs_dir, theme):
    # $panel-lighten-2 was white on kdtui-light's near-white background (1.06:1): no rule
    app = KDApp(runs_dir=runs_dir, theme=theme)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await _form(pilot)
        title = form.query(".group-title").first()
        _, rule = title.styles.border_bottom
        behind = title.background_colors[1]
        assert contrast(behind + rule, behind) >= 1.8, (theme, rule, behind)


def _cell_colors(app, y: int) -> list[Color]:
    """What each cell of screen row y shows: its glyph's colour, or its background for a space."""
    cells: list[Color] = []
    for seg in app.screen._compositor.render_strips()[y]:
        style = seg.style
        fg, bg = (style.bgcolor, style.color) if style.reverse else (style.color, style.bgcolor)
        for ch in seg.text:
            rich = fg if ch.strip() and fg else bg
            cells.append(Color.from_rich_color(rich))
    return cells


@pytest.mark.parametrize("theme", ["kdtui-dark", "kdtui-light", "kdtui-high-contrast"])
async def test_a_switch_shows_against_the_form_off_and_on(runs_dir, theme):
    # Textual's slider ($panel on $panel-darken-2) was 1.2:1 on kdtui-dark's form and 1.5:1 on
    # high contrast's: dry_run, seq_kd and allow_same_teacher_student looked like empty rows
    app = KDApp(runs_dir=runs_dir, theme=theme)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await _form(pilot)
        switch = form.query_one("#field-seq_kd")
        form.query_one("#form").scroll_to_widget(switch, animate=False, top=True)
        for on in (False, True):
            switch.value = on
            await pilot.wait_for_scheduled_animations()  # the slider's, to its end
            region = switch.region
            row = _cell_colors(app, region.y)
            around = row[region.right + 2]  # the form beside the switch
            best = max(contrast(around, c) for c in row[region.x:region.right])
            assert best >= 3.0, (theme, on, best)


async def test_tab_goes_through_every_field_in_form_order_with_no_dead_stop(runs_dir):
    # after the Runs button, Tab focused the form's scroll container: nothing on screen showed
    # where the focus was, one Tab lost
    from kdengine.config import FIELDS

    app = KDApp(runs_dir=runs_dir)
    # the form scrolls to each focused field; each press waited for that scroll's animation
    # (~0.3 s a field): the focus order is the check, so the scroll jumps
    app.animation_level = "none"
    async with app.run_test(size=(80, 24)) as pilot:
        form = await _form(pilot)
        form.query_one("#profile").focus()
        await pilot.pause()
        order = []
        for _ in range(4 + len(FIELDS) + 3):
            order.append(app.focused.id)
            await pilot.press("tab")
        assert app.focused.id == "profile"  # round again
        assert order == ["profile", "host", "fallback_host", "dry_run",
                         *(f"field-{f.name}" for f in FIELDS), "start", "demo", "runs"]
        scroll = form.query_one("#form")
        form.query_one("#field-teacher").focus()
        await pilot.pause()
        before = scroll.scroll_y
        await pilot.press("pagedown")  # the field does not take it: the form scrolls
        await pilot.pause(0.2)
        assert scroll.scroll_y > before
