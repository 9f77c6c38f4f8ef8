"""The samples pane of an on-policy run, its time split and held-out scores, and headless
watch's sample lines, on a recorded run (tests/tui/fixtures/on-policy, written by
make_on_policy_run.py from the event schema of docs/events.md). An off-policy run's screen has
no pane and no samples key.
"""

from __future__ import annotations

import io
import json

from kdtui.app import KDApp
from kdtui.headless import follow_to_verdict
from kdtui.palette import binding_commands
from kdtui.samples import Sample, StepLineSplits
from kdtui.watch import LocalRunSource
from kdtui.widgets.run_panels import RunProgress
from kdtui.widgets.samples import SamplesView

from .conftest import verdict_shown


def _plain_rows(pane: SamplesView) -> list[str]:
    return [strip.text.rstrip() for strip in pane._rows]


async def test_samples_pane_shows_the_newest_first_and_follows_one_prompt_across_evals(
        on_policy_run, wait_for):
    app = KDApp(runs_dir=on_policy_run.parent, command="watch", watch_ref="on-policy")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: verdict_shown(app))
        screen = app.screen
        pane = screen.query_one(SamplesView)
        await pilot.pause(0.1)
        # newest first; one step's samples in the order they came (the batch row, then the
        # eval's prompts)
        assert [(s.step, s.split, s.index) for s in pane.shown[:3]] == [
            (120, "train", 0), (120, "val", 0), (120, "val", 1)]
        rows = _plain_rows(pane)
        assert rows[0] == "step 120 train #0 18 tok ✓ logp -1.45"  # terse, one row
        assert any("Use `with open(path) as fh:`" in row for row in rows[:6])
        # indentation of a completion (code) is kept; the prompt is on one line, newlines as ⏎
        assert "    return sum(x * x for x in numbers)" in rows
        assert any("⏎<|assistant|>" in row for row in rows)
        # the held-out scores, step 0's beside the latest, in the bottom border
        assert pane.border_subtitle == "gen KL 0.900 → 0.180 · logp -2.600 → -1.000"
        # the progress panel: the last step's time split and generation rate
        progress = screen.query_one(RunProgress)
        assert "gen 0.41s teacher 0.12s student 0.19s" in progress.render().plain
        assert "gen tok/s 2,496" in progress.render().plain

        # s focuses it; it scrolls with the keys
        await pilot.press("s")
        assert app.focused is pane
        await pilot.press("pagedown", "down")
        await pilot.pause(0.05)
        assert pane.scroll_y > 0
        # reading older samples: a new one arriving on top does not move them
        top = pane.scroll_y
        first_shown = _plain_rows(pane)[int(top)]
        pane.add_samples([Sample(121, "train", 0, "student", "p", "a new\none", 3, True, -0.5)])
        await pilot.pause(0.05)
        assert _plain_rows(pane)[int(pane.scroll_y)] == first_shown and pane.scroll_y > top

        # v: held-out prompt 0 at each eval, newest first, so the change reads top to bottom
        await pilot.press("v")
        await pilot.pause(0.05)
        assert [(s.step, s.split, s.index) for s in pane.shown] == [
            (120, "val", 0), (80, "val", 0), (40, "val", 0), (0, "val", 0)]
        assert pane.shown[-1].finished is False  # step 0's babble ran to max_new_tokens
        assert "val #0 at each eval" in str(pane.border_title)
        await pilot.press("v", "v")  # prompt 1, then every sample again
        assert pane.prompt_index is None

        # z: the pane fills the screen; Esc puts it back and stays on the run
        await pilot.press("z")
        await pilot.pause(0.1)
        assert screen.maximized is pane and pane.region.width == 120
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert screen.maximized is None and app.screen is screen
        assert pane.region.width == 52  # as wide as the side column above it


async def test_an_off_policy_run_has_no_samples_pane_and_no_samples_key(
        runs_dir, write_run, wait_for):
    write_run(runs_dir / "plain", steps=20)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="plain")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: verdict_shown(app))
        screen = app.screen
        assert not screen.query(SamplesView)
        assert "Samples" not in {c.name for c in binding_commands(screen, app)}
        progress = screen.query_one(RunProgress)
        assert progress.split == "" and "gen" not in progress.render().plain


def test_snapshot_of_an_on_policy_run_at_80x24(snap_compare, on_policy_run):
    app = KDApp(runs_dir=on_policy_run.parent, command="watch", watch_ref="on-policy",
                theme="kdtui-dark")

    async def settled(pilot) -> None:
        for _ in range(200):
            await pilot.pause(0.05)
            if verdict_shown(pilot.app) and pilot.app.screen.query(SamplesView):
                break
        await pilot.pause(0.4)  # one chart redraw after the last update

    assert snap_compare(app, terminal_size=(80, 24), run_before=settled)


async def test_headless_watch_prints_a_line_per_sample_and_the_steps_time_split(on_policy_run):
    out = io.StringIO()

    async def alive() -> bool:
        return False

    result = await follow_to_verdict(LocalRunSource(on_policy_run), out=out, is_alive=alive,
                                     interval=0.01)
    lines = out.getvalue().splitlines()
    events = [json.loads(line) for line in (on_policy_run / "events.jsonl").open()]
    samples = [line for line in lines if line.startswith("sample ")]
    assert len(samples) == sum(e["type"] == "sample" for e in events)
    assert all(len(line) <= 160 for line in samples)
    assert samples[0].startswith(
        "sample step 0 · val #0 · ")
    assert "truncated · teacher logp -2.600: …" in samples[0]
    code = next(line for line in samples if line.startswith("sample step 120 · val #0"))
    assert 'numbers):⏎    """The sum' in code  # one line: newlines as ⏎
    step_line = next(line for line in lines if line.startswith("step 20/120 "))
    assert step_line.endswith(
        "tok/s=1850 gen_s=0.41 teacher_s=0.12 student_s=0.19 gen_tok/s=2496 gen_len=32")
    dataset_line = next(line for line in lines if line.startswith("step 30/120 "))
    assert dataset_line.endswith("batch=dataset teacher_s=0.12 student_s=0.19")
    # an engine whose step line carries the split itself (kdengine's ' gen=0.41s ...') keeps it
    splits = StepLineSplits()
    splits.note(next(e for e in events if e["type"] == "step" and e["step"] == 20))
    own = "step 20/120 loss=1.0 tok/s=1850 gen=0.41s teacher=0.12s student=0.19s"
    assert splits.line(own) == own
    assert result.code == 0
