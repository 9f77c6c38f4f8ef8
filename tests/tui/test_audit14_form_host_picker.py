"""The launch form's host picker, where README says "pick a host": the form opened scrolled to
its 'models' group at every size, so the intro and the engine-and-host rows (profile, host,
fallback_host, dry_run) were above, out of sight, even on 40 or 50 rows, and nothing on screen
said they were there. Where the engine-and-host rows and the models group fit together the
form opens at its top; on 24 rows it still opens on 'models' (a whole group readable), and the
header names the host the run goes to, as it is picked. The teacher is focused for typing at
every size."""

from __future__ import annotations

import pytest
from textual.containers import VerticalScroll
from textual.widgets import Select
from textual.widgets._header import HeaderTitle

from kdtui.app import KDApp
from kdtui.screens.launch import LaunchScreen


def _shown(app: KDApp, selector: str) -> bool:
    """The whole widget inside the form's viewport."""
    form = app.screen.query_one("#form", VerticalScroll)
    region = app.screen.query_one(selector).region
    view = form.scrollable_content_region
    return bool(region.height) and view.y <= region.y and region.bottom <= view.bottom


def _models_title(app: KDApp):
    return next(label for label in app.screen.query(".group-title")
                if str(label.render()) == "models")


def _title(app: KDApp) -> str:
    return str(app.screen.query_one(HeaderTitle).render())


async def _opened(app: KDApp, pilot, wait_for) -> LaunchScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen.form_ready)
    await pilot.pause()
    await pilot.pause()
    return app.screen


@pytest.mark.parametrize("size", [(120, 40), (100, 50)], ids=["120x40", "100x50"])
async def test_form_opens_at_its_top_with_the_host_picker_where_it_fits(runs_dir, wait_for,
                                                                         size):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=size) as pilot:
        screen = await _opened(app, pilot, wait_for)
        assert screen.query_one("#form", VerticalScroll).scroll_y == 0
        for part in ("#form-intro", "#row-profile", "#row-host", "#row-fallback_host",
                     "#row-dry_run", "#row-teacher_cache"):
            assert _shown(app, part), part
        assert app.focused is screen.query_one("#field-teacher")  # typing goes to the teacher


async def test_form_on_24_rows_opens_on_models_and_names_the_host_in_its_title(runs_dir,
                                                                                wait_for):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _opened(app, pilot, wait_for)
        form = screen.query_one("#form", VerticalScroll)
        # the models group is read whole from its title (no help cut mid-sentence at the top)
        title = _models_title(app)
        assert title.region.y - title.styles.margin.top == form.scrollable_content_region.y
        assert not _shown(app, "#row-host")
        assert app.focused is screen.query_one("#field-teacher")
        assert "host local" in _title(app)  # where the run goes, with the picker out of sight
        # picked (shift+tab up to it, as a user does): the title follows
        host = screen.query_one("#host", Select)
        host.value = "gpu-box"
        await pilot.pause()
        assert "host gpu-box" in _title(app) and "local" not in _title(app)


async def test_an_unknown_launch_host_opens_the_form_on_the_host_row_on_24_rows(runs_dir,
                                                                                 wait_for):
    # `kdtui launch --host nosuch`: the form opens on local with the error on the host row; on
    # 24 rows it opened on 'models', the row out of sight, and once the 5 s toast went nothing
    # on screen said why the form had not started or that the host was not the one asked for
    app = KDApp(runs_dir=runs_dir, command="launch", prefill={"host": "nosuch", "demo": True})
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _opened(app, pilot, wait_for)
        await pilot.pause()
        assert screen.host_error().startswith("host 'nosuch' is not in ~/.ssh/config")
        assert _shown(app, "#row-host")
        assert app.focused is screen.query_one("#host", Select)  # the pick it asks for
        assert isinstance(app.screen, LaunchScreen)  # nothing started
