"""The teacher cache from the user's side: F4 on the launch form starts `kdengine cache-teacher`
with the form's teacher and data (a tiny real teacher on this machine), the run screen follows it
as a job that trains nothing (its stages, the teacher's CE by rows scored, no smoke verdict) to
its end, and t fills the form's teacher_cache with the complete cache. The remote command line of
a cache job quotes every value as one word."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from textual.widgets import Input

from kdtui.app import KDApp
from kdtui.launch.cache_job import CacheOptions, cache_args
from kdtui.screens.cache_teacher import CacheTeacherDialog
from kdtui.screens.launch import LaunchScreen
from kdtui.screens.run import RunScreen
from kdtui.widgets.cache_job import CACHE_STAGES, CacheJobPanel, TeacherCEChart


async def test_f4_caches_the_teacher_follows_the_job_and_fills_teacher_cache(
        runs_dir, tiny_run_inputs, wait_for, wait_for_run):
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.form_ready, 30)
        form = app.screen
        values = dict(teacher=tiny_run_inputs["teacher"], data=tiny_run_inputs["data"],
                      seq_len="32", device="cpu", dtype="float32", run_name="tcache")
        for name, value in values.items():
            form.query_one(f"#field-{name}").value = value
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, CacheTeacherDialog), 10)
        dialog = app.screen
        dialog.query_one("#cache-top-k", Input).value = "8"
        await pilot.click("#cache-start")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 60)
        screen = app.screen
        assert screen.cache_job and isinstance(screen.query_one("#chart"), TeacherCEChart)
        run_dir = runs_dir / "tcache"
        await wait_for_run(pilot, run_dir, lambda: screen.state.finished is not None and
                           screen.query_one(CacheJobPanel).verdict is not None, "the job's end")
        panel = screen.query_one(CacheJobPanel)
        assert panel.verdict.status == "pass" and panel.verdict.id == "cache-teacher"
        assert panel.complete_dir == str(run_dir)
        text = str(panel.render())
        assert "COMPLETE" in text and f"--teacher-cache {run_dir}" in text
        assert "F-DISTILL" not in str(panel.border_title)
        tracker = screen.query_one("#stages")
        assert [n for n in tracker.rows][-len(CACHE_STAGES):] == list(CACHE_STAGES)
        assert all(tracker.rows[n].state == "done" for n in CACHE_STAGES)
        chart = screen.query_one(TeacherCEChart)
        await wait_for(pilot, lambda: "teacher CE" in str(chart.border_title), 5)
        assert chart.raw["ce"].count >= 1 and chart.raw["loss"].count == 0
        progress = screen.query_one("#progress")
        assert progress.total == progress.step > 0  # rows, not the form's 1000 steps
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["complete"] and manifest["k"] == 8
        # the job's fields are what was asked: no difference reported
        assert not any("effective config differs" in str(line)
                       for line in screen.query_one("#log").lines)

        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen), 10)
        assert app.screen is form
        assert form.query_one("#field-teacher_cache", Input).value == str(run_dir)
        assert form.query_one("#field-run_name", Input).value == ""  # the job's identity


def test_remote_cache_job_command_quotes_every_value_as_one_word(tmp_path) -> None:
    from kdengine.config import RunConfig
    from kdtui.launch.cache_remote import CachePlan
    from kdtui.remote.hosts import HostConfig
    from kdtui.remote.stages import RemotePlan
    from kdtui.remote.wheel import WheelBuild

    teacher, data = "-m/teach er; rm -rf ~", "$(touch /tmp/x) 'd'.txt"
    config = RunConfig(teacher=teacher, data=data, seq_len=64, run_name="c1")
    wheel = WheelBuild(data=b"x", filename="kdtui-0-py3-none-any.whl", sha256="0" * 64,
                       kdengine_version="0")
    host = HostConfig(alias="gpu-box", work_dir="/w d")
    plan = CachePlan.of(RemotePlan.make(host, config, wheel), CacheOptions(16, "sampled"))
    words = shlex.split(plan.launch("tok").text)
    engine = words[words.index("--") + 1:]
    assert engine[1:4] == ["-m", "kdengine", "cache-teacher"]
    assert engine[4:] == cache_args(config, CacheOptions(16, "sampled"), plan.run_dir)
    assert f"--teacher={teacher}" in engine  # a value starting with '-' joined to its flag
    assert engine[engine.index("--data") + 1] == data
    assert "--student" not in engine and "--steps" not in engine
    assert engine[-6:] == ["--top-k", "16", "--cache-targets", "sampled", "--out", plan.run_dir]
    check = shlex.split(plan.check().text)
    assert check[check.index("cache-teacher") + 1:] == [*engine[4:], "--check"]
    assert Path(plan.run_dir).name == "c1"
