"""Where the focus is on the launch form, and whether what the form says can be read, in each of
kdtui's themes: Textual's compact fields mark their focus with a 5% tint only (none to see on
kdtui-high-contrast), and a Select or a Switch has no cursor, so the focused field's label says
where the keys go; an empty field's placeholder says what empty means, so it must read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.widgets import Input, Label

from kdtui.app import KDApp

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from contrast import contrast  # noqa: E402

THEMES = ("kdtui-dark", "kdtui-light", "kdtui-high-contrast")


def _label(form, name: str) -> Label:
    return form.query_one(f"#row-{name} .field-label", Label)


@pytest.mark.parametrize("theme", THEMES)
async def test_the_focused_fields_label_stands_out_as_the_focus_moves(runs_dir, wait_for, theme):
    app = KDApp(runs_dir=runs_dir, theme=theme)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        for name in ("train_on", "seq_kd", "steps"):  # a Select, a Switch, a text field
            form.query_one(f"#field-{name}").focus()
            await pilot.pause()
            focused, other = _label(form, name).rich_style, _label(form, "teacher").rich_style
            assert (focused.color, focused.bgcolor) != (other.color, other.bgcolor), name
            assert contrast(focused.color, focused.bgcolor) >= 4.5, (name, focused)
        form.query_one("#host").focus()  # the rows above the schema's fields too
        await pilot.pause()
        host = form.query_one("#row-host .field-label", Label).rich_style
        assert (host.color, host.bgcolor) != (other.color, other.bgcolor)


@pytest.mark.parametrize("theme", THEMES)
async def test_an_empty_fields_placeholder_reads_in_each_theme(runs_dir, wait_for, theme):
    app = KDApp(runs_dir=runs_dir, theme=theme)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        field = app.screen.query_one("#field-teacher_cache", Input)
        assert field.value == "" and field.placeholder == "none: the teacher runs live"
        text = field.get_component_rich_style("input--placeholder")
        background = field.rich_style.bgcolor
        assert contrast(text.color, background) >= 4.5, (text, background)


@pytest.mark.parametrize("theme", ["ansi-dark", "ansi-light"])
async def test_in_an_ansi_theme_the_focused_label_reads_and_a_placeholder_is_dim(runs_dir,
                                                                                wait_for, theme):
    # the terminal's own colours: $text-accent on $accent-muted were one ANSI colour, the
    # focused field's label vanished
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        app.theme = theme
        form = app.screen
        form.query_one("#field-train_on").focus()
        await pilot.pause()
        focused, other = _label(form, "train_on").rich_style, _label(form, "teacher").rich_style
        assert focused != other
        assert focused.color != focused.bgcolor or focused.reverse, focused
        field = form.query_one("#field-teacher_cache", Input)
        assert field.get_component_rich_style("input--placeholder").dim
