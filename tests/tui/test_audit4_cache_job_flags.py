"""A cache job's K refused by the engine (more ids than the vocab holds) is named as the user
gave it: `kdtui launch --cache-teacher --headless` said `--top-k: 300 is more than the 257
ids`, and `--top-k` there is the run's on-policy sampling flag, which leaves the cache's K as
it was; the dashboard's notice said `top_k:` for the dialog's K."""

from __future__ import annotations

import re
import subprocess
import sys

from textual.widgets import Input

from kdtui.app import KDApp
from kdtui.screens.cache_teacher import CacheTeacherDialog


def test_headless_cache_job_names_cache_top_k_when_the_engine_refuses_k(
        tiny_run_inputs, runs_dir) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kdtui", "launch", "--headless", "--cache-teacher",
         "--cache-top-k", "300", "--teacher", tiny_run_inputs["teacher"], "--data",
         tiny_run_inputs["data"], "--seq-len", "32", "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "--cache-top-k: 300 is more than the 257 ids of the vocab" in said, said
    assert not re.search(r"(?<![\w-])--top-k\b", said), said
    assert "Traceback" not in said
    assert not any(runs_dir.iterdir())  # nothing started


async def test_the_dialogs_k_refused_by_the_engine_is_named_k(runs_dir, tiny_run_inputs,
                                                               wait_for) -> None:
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        values = dict(teacher=tiny_run_inputs["teacher"], data=tiny_run_inputs["data"],
                      seq_len="32", device="cpu", run_name="tcache")
        for name, value in values.items():
            form.query_one(f"#field-{name}").value = value
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, CacheTeacherDialog), 10)
        app.screen.query_one("#cache-top-k", Input).value = "300"
        await pilot.click("#cache-start")
        await wait_for(pilot, lambda: any(n.title == "Cannot cache the teacher"
                                          for n in app._notifications), 120)
        notes = [n.message for n in app._notifications if n.title == "Cannot cache the teacher"]
        assert notes == ["K: 300 is more than the 257 ids of the vocab"], notes
        assert app.screen is form and not (runs_dir / "tcache").exists()
