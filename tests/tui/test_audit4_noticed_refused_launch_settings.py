"""A launch the check refuses (here: data that does not exist) does not remember its values as
the host's: the form opens next time with the values of the last launch that started, not the
refused one's."""

from __future__ import annotations

from textual.widgets import Input

from kdtui.app import KDApp
from kdtui.screens.launch import FieldRow
from kdtui.settings import Settings


async def test_a_refused_launch_does_not_remember_its_values(runs_dir, tmp_path, wait_for):
    good = {"teacher": "demo://teacher", "student": "demo://student", "data": "demo://data",
            "steps": "123", "profile": "kdengine"}
    Settings.load().remember("local", good)
    missing = str(tmp_path / "no-such-corpus.txt")
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        form.query_one("#field-data", Input).value = missing
        form.query_one("#field-steps", Input).value = "7"
        await pilot.press("ctrl+r")
        row = form.query_one("#row-data", FieldRow)
        await wait_for(pilot, lambda: "no-such-corpus" in row.error, 30)
        assert app.screen is form  # refused: the form stays, as typed
        assert form.query_one("#field-data", Input).value == missing
    remembered = Settings.load().values_for("local")
    assert remembered["data"] == "demo://data" and remembered["steps"] == "123", remembered
