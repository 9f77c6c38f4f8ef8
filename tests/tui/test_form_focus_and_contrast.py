"""Where the focus is on the launch form, and whether what the form says can be read, in each of
kdtui's themes: Textual's compact fields mark their focus with a 5% tint only (none to see on
kdtui-high-contrast), and a Select or a Switch has no cursor, so the focused field's label says
where the keys go; an empty field's placeholder says what empty means, so it must read."""

from __future__ import annotations

import os
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


# -- every screen, as drawn: text 4.5:1 (WCAG AA, normal text), marks 3:1 --------------------
# Text is any run of cells with a letter or digit: 4.5:1 against its own cell's background,
# whatever its role (Textual draws dim and muted text as blended colours, so "secondary" text
# is held to the same 4.5:1; none of kdtui's themes needs less). A run of symbols alone (the
# Select's ▼, the chart's legend ■ and • and its val loss ●, a runs-list mark) is a graphical
# object: WCAG 1.4.11's 3:1. Box drawing, block elements (bars, sparklines) and braille (the
# chart's lines) are graphics drawn in the border and series colours, not measured. A modal
# dialog is measured inside its own box: the screen under it is faded on purpose.
GRAPHICS = ((0x2500, 0x259F), (0x2800, 0x28FF))


def _unreadable(app) -> list[str]:
    from textual.screen import ModalScreen

    screen = app.screen
    box = screen.children[0].region if isinstance(screen, ModalScreen) else None
    bad = []
    for y, strip in enumerate(screen._compositor.render_strips()):
        x = 0
        for seg in strip:
            inside = box is None or (box.y <= y < box.bottom and box.x <= x < box.right)
            x += len(seg.text)
            shown = "".join(c for c in seg.text if not c.isspace() and not any(
                lo <= ord(c) <= hi for lo, hi in GRAPHICS))
            if not shown or not inside or seg.style is None or seg.control:
                continue
            fg, bg = seg.style.color, seg.style.bgcolor
            if seg.style.reverse:
                fg, bg = bg, fg
            if fg is None or bg is None:
                bad.append(f"{shown!r} has no colour of its own ({seg.style})")
                continue
            floor = 4.5 if any(c.isalnum() for c in shown) else 3.0
            ratio = contrast(fg, bg)
            if ratio < floor:
                bad.append(f"{shown[:30]!r} {ratio:.2f}:1 ({fg.get_truecolor().hex} on "
                           f"{bg.get_truecolor().hex})")
    return bad


@pytest.mark.parametrize("theme", THEMES)
async def test_every_screens_text_reads_in_each_theme(runs_dir, wait_for, write_run, theme):
    """The launch form (with the demo preset's toast), the cache dialog, help, the quit dialog,
    the runs list, a run mid-run and finished, and compare, at 80x24 and 120x40: every text run
    4.5:1 against its background, every mark 3:1."""
    from kdtui.compare import CompareTarget
    from kdtui.screens.cache_teacher import CacheTeacherDialog
    from kdtui.screens.compare import CompareScreen
    from kdtui.screens.dialogs import HelpScreen, QuitScreen
    from kdtui.screens.run import RunScreen
    from kdtui.screens.runs import RunsScreen
    from kdtui.widgets.run_panels import RunProgress

    going = write_run(runs_dir / "going", steps=200, upto=120, finished=False, pid=os.getpid())
    done = write_run(runs_dir / "done", steps=200)
    app = KDApp(runs_dir=runs_dir, theme=theme)
    problems: dict[str, list[str]] = {}
    async with app.run_test(size=(80, 24), notifications=True) as pilot:

        async def measure(name: str, ready=lambda: True) -> None:
            # the size it is at first, then the other: one resize a screen (each lays out
            # every screen of the stack again: most of this test's time)
            await wait_for(pilot, ready)
            for size in (app.size, (120, 40) if app.size == (80, 24) else (80, 24)):
                if size != app.size:
                    await pilot.resize_terminal(*size)
                await pilot.pause()
                problems[f"{name} {size[0]}x{size[1]}"] = _unreadable(app)

        def run_at(step: int):
            return lambda: isinstance(app.screen, RunScreen) and any(
                p.step >= step for p in app.screen.query(RunProgress))

        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        await pilot.press("f2")  # the demo preset, and its toast
        await measure("launch form")
        await pilot.press("f4")
        await measure("cache dialog", lambda: isinstance(app.screen, CacheTeacherDialog))
        await pilot.press("escape", "f1")
        await measure("help", lambda: isinstance(app.screen, HelpScreen))
        app.pop_screen()
        app.push_screen(QuitScreen(["kd-1"]))
        await measure("quit dialog", lambda: isinstance(app.screen, QuitScreen))
        app.pop_screen()
        app.clear_notifications()
        # the runs list in the form's place: the screens below are laid out again at each
        # resize, and the form is the largest of them
        app.switch_screen(RunsScreen())
        await measure("runs list", lambda: isinstance(app.screen, RunsScreen))
        app.pop_screen()
        assert app.open_run(str(going))
        await measure("run mid-run", run_at(120))
        app.pop_screen()
        assert app.open_run(str(done))
        await measure("finished run", run_at(200))
        app.pop_screen()
        app.show_compare([CompareTarget.local(going), CompareTarget.local(done)])
        await measure("compare", lambda: isinstance(app.screen, CompareScreen)
                      and app.screen.loaded)
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
