"""Settings that cannot be written (a config dir that is a file, a read-only or full disk) cost
the user the remembering, never the dashboard: the form still starts (here: a dry run), a theme
change still applies, and one warning names the file and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Switch

from kdtui.app import KDApp
from kdtui.screens.dialogs import PlanScreen
from kdtui.settings import Settings


@pytest.fixture
def unwritable_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the config dir should be\n")
    monkeypatch.setenv("KDTUI_CONFIG_DIR", str(blocker))
    return blocker


async def test_a_start_and_a_theme_change_go_on_when_settings_cannot_be_saved(
        runs_dir, unwritable_config, wait_for):
    # before: the form's Start raised FileExistsError in its worker and the dashboard died
    # with a traceback (Settings.save, called to remember the form's values)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        await pilot.press("f2")
        app.screen.query_one("#dry_run", Switch).value = True
        app.clear_notifications()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, PlanScreen), 60)
        warnings = [str(n.message) for n in app._notifications if n.severity == "warning"]
        assert len(warnings) == 1 and str(unwritable_config) in warnings[0], warnings
        await pilot.press("escape")
        app.theme = "kdtui-light"
        await pilot.pause(0.2)
        assert app.theme == "kdtui-light"
        # said once, not at every save
        assert len([n for n in app._notifications if n.severity == "warning"]) == 1
    assert app.return_code in (0, None)


def test_settings_save_says_why_it_could_not_write(unwritable_config):
    settings = Settings.load()
    assert settings.save() is False
    assert str(unwritable_config) in settings.problem
    assert settings.remember("local", {"steps": "200"}) is False
    assert settings.values_for("local") == {"steps": "200"}  # kept for this session
