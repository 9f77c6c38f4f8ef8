"""The run and compare panels' border titles ("stages", "loss", "progress", "val CE", ...) read in
every theme: they were drawn in the border's own colour, $foreground at 35%, so 2.1:1 on
kdtui-light, 2.7:1 on kdtui-dark and 3.0:1 on kdtui-high-contrast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdtui.app import KDApp
from kdtui.compare import CompareTarget

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from contrast import contrast  # noqa: E402

THEMES = ("kdtui-dark", "kdtui-light", "kdtui-high-contrast")
ANSI_THEMES = ("ansi-dark", "ansi-light")


def title_styles(app: KDApp) -> dict[str, set]:
    """Each bordered widget's title on screen: its text -> the styles its cells are drawn in."""
    strips = app.screen._compositor.render_strips()
    found: dict[str, set] = {}
    for widget in app.screen.query("*"):
        title = str(widget.border_title or "")
        region = widget.region
        if not title or not region.height or region.y >= len(strips):
            continue
        cells = [(ch, seg.style) for seg in strips[region.y] for ch in seg.text]
        row = "".join(ch for ch, _ in cells)
        at = row.find(title[:12], region.x, region.right)
        if at < 0:  # not drawn yet
            continue
        found[title] = {style for _, style in cells[at:at + min(len(title), 12)]
                        if _ != " "}
    return found


def compared_run(run_dir: Path, seed: int) -> Path:
    run_dir.mkdir(parents=True)
    config = {"teacher": "demo://teacher", "student": "demo://student", "steps": 20,
              "alpha": 0.5, "temperature": 2.0, "loss": "forward_kl", "seed": seed}
    events = [{"type": "run_started", "run_id": run_dir.name, "config": config}]
    for step in (0, 10, 20):
        if step:
            events.append({"type": "step", "step": step, "loss": 3.0 - step / 20,
                           "ce": 3.0, "kd": 0.3, "total_steps": 20})
        events.append({"type": "eval", "step": step, "val_loss": 3.0 - step / 20,
                       "val_ce": 3.0 - step / 20, "val_kd": 0.3})
    (run_dir / "events.jsonl").write_text("".join(
        json.dumps({"v": 1, "seq": i, "t": 1_760_000_000.0 + i, **e}) + "\n"
        for i, e in enumerate(events)))
    return run_dir


async def _screens(app: KDApp, pilot, wait_for):
    """The run screen (the log focused, then not), then the compare screen."""
    await wait_for(pilot, lambda: {"stages", "progress", "loss"} <= set(title_styles(app)), 30)
    await pilot.pause(0.3)
    yield "run"
    app.screen.query_one("#log").focus()
    await pilot.pause(0.2)
    yield "run, log focused"


@pytest.mark.parametrize("theme", THEMES + ANSI_THEMES)
async def test_run_panels_border_titles_read_in_each_theme(runs_dir, wait_for, write_run,
                                                           theme):
    write_run(runs_dir / "ended", steps=50)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="ended", theme="kdtui-dark")
    async with app.run_test(size=(120, 40)) as pilot:
        app.theme = theme
        async for where in _screens(app, pilot, wait_for):
            _assert_titles_read(app, theme, where)


@pytest.mark.parametrize("theme", THEMES + ANSI_THEMES)
async def test_compare_chart_border_title_reads_in_each_theme(runs_dir, wait_for, theme):
    dirs = [compared_run(runs_dir / f"seed{i}", i) for i in (1, 2)]
    app = KDApp(runs_dir=runs_dir, command="compare", theme="kdtui-dark",
                compare_targets=[CompareTarget.local(d) for d in dirs])
    async with app.run_test(size=(120, 40)) as pilot:
        app.theme = theme
        await wait_for(pilot, lambda: getattr(app.screen, "loaded", False), 30)
        await pilot.pause(0.4)
        assert "val CE" in title_styles(app)
        _assert_titles_read(app, theme, "compare")


def _assert_titles_read(app: KDApp, theme: str, where: str) -> None:
    titles = title_styles(app)
    assert titles, where
    for title, styles in titles.items():
        for style in styles:
            assert not style.dim, (where, title, style)
            if theme in ANSI_THEMES:  # the terminal's own colours: not its background's
                assert style.color != style.bgcolor or style.color.is_default, (title, style)
            else:
                ratio = contrast(style.color, style.bgcolor)
                assert ratio >= 4.5, (where, title, str(style), round(ratio, 2))
