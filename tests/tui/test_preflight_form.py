"""The form's Start runs the engine's own preflight (`kdengine train --check`, in a child
process: the dashboard never imports torch), so what the run would refuse shows on its field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from textual.widgets import Input

from kdtui.app import KDApp
from kdtui.screens.launch import LaunchScreen


async def test_start_shows_the_engines_refusal_on_its_field(runs_dir, tiny_run_inputs,
                                                            wait_for) -> None:
    teacher = Path(tiny_run_inputs["teacher"])
    config = json.loads((teacher / "config.json").read_text())
    gemma = teacher.with_name("gemma")
    gemma.mkdir()
    for file in teacher.iterdir():
        (gemma / file.name).write_bytes(file.read_bytes())
    (gemma / "config.json").write_text(json.dumps({**config, "model_type": "gemma",
                                                   "architectures": ["GemmaForCausalLM"]}))
    (Path(tiny_run_inputs["data"]) / "zz-latin1.txt").write_bytes("déjà vu".encode("latin-1"))
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(140, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LaunchScreen)
        for name, value in (("teacher", str(gemma)), ("student", tiny_run_inputs["student"]),
                            ("data", tiny_run_inputs["data"]), ("seq_len", "32"),
                            ("batch_size", "4"), ("steps", "4"), ("device", "cpu")):
            screen.query_one(f"#field-{name}", Input).value = value
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.field_error("teacher") != "", timeout=120)
        assert "gemma" in screen.field_error("teacher")
        assert "not supported" in screen.field_error("teacher")

        screen.query_one("#field-teacher", Input).value = str(teacher)
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.field_error("data") != "", timeout=120)
        assert "zz-latin1.txt" in screen.field_error("data")
        assert "not UTF-8" in screen.field_error("data")
        assert app.screen is screen  # still the form: nothing started
        assert list(runs_dir.iterdir()) == []
def test_the_local_check_refuses_without_importing_torch_into_the_dashboard(
        tiny_run_inputs, runs_dir) -> None:
    data = Path(tiny_run_inputs["data"])
    (data / "zz-latin1.txt").write_bytes("déjà vu".encode("latin-1"))
    code = f"""
import sys
from pathlib import Path
from kdengine.config import ConfigError, RunConfig
from kdtui.launch.local import LocalLauncher
config = RunConfig(teacher={tiny_run_inputs['teacher']!r}, student={tiny_run_inputs['student']!r},
                   data={str(data)!r}, seq_len=32, batch_size=4, device="cpu")
try:
    LocalLauncher(config, Path({str(runs_dir)!r})).check()
except ConfigError as exc:
    assert exc.field == "data" and "zz-latin1.txt" in exc.message, exc
else:
    raise SystemExit("the check passed latin-1 data")
assert "torch" not in sys.modules, "the dashboard imported torch"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
