"""A torchrun run's ranks on the dashboard: real 2- and 3-rank `kdengine train` runs under torchrun
(gloo, CPU) in which ranks fail, watched in the run screen (the progress panel names the ranks,
marks the failed ones in the theme's error colour with their message) and by `kdtui watch
--headless` (the error line names its rank); a one-process run shows nothing new.

The runs are made as tests/engine/test_distributed.py makes a rank fail (a FileNotFoundError on
that rank only), by tests/tui/fixtures/make_rank_failure_run.py, which also recorded the
run the snapshot shows."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.color import Color

from kdengine.events import read_events
from kdtui.app import KDApp
from kdtui.headless import headless_watch
from kdtui.widgets import run_panels
from kdtui.widgets.run_panels import RankStatus, RunProgress, VerdictPanel, first_line

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_rank_failure_run import run_failing_ranks  # noqa: E402

SIZE = (150, 44)  # the other run-screen snapshots' size


@pytest.fixture(scope="module")
def one_rank_failed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 ranks; rank 1 fails at step 5 (~10 s)."""
    run_dir, out = run_failing_ranks(tmp_path_factory.mktemp("ranks2"))
    assert out.returncode != 0, out.stdout[-2000:] + out.stderr[-2000:]
    return run_dir


@pytest.fixture(scope="module")
def two_ranks_failed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 ranks; ranks 1 and 2 fail at step 5 (~10 s)."""
    run_dir, out = run_failing_ranks(tmp_path_factory.mktemp("ranks3"), ranks=3,
                                     fail_ranks=(1, 2), run_name="two-failed")
    assert out.returncode != 0, out.stdout[-2000:] + out.stderr[-2000:]
    return run_dir


async def _watch_until_ended(run_dir: Path, runs_dir: Path, wait_for, theme: str | None = None):
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run_dir), theme=theme)
    pilot_cm = app.run_test(size=SIZE)
    pilot = await pilot_cm.__aenter__()

    def ended() -> bool:
        progress = app.screen.query(RunProgress)
        return bool(progress) and progress.first().ranks is not None and \
            bool(progress.first().ranks.ended)
    await wait_for(pilot, ended, 20)
    await pilot.pause(0.2)
    return app, pilot, pilot_cm


def _span_style(text, fragment: str):
    """The style of the span that covers `fragment` in a rich Text."""
    start = text.plain.index(fragment)
    styles = [s.style for s in text.spans if s.start <= start and s.end >= start + len(fragment)]
    assert styles, f"no span over {fragment!r} in {text.plain!r}"
    return styles[-1]


def _hex(color: Color) -> str:
    r, g, b = color.get_truecolor()
    return f"#{r:02x}{g:02x}{b:02x}"


async def test_the_progress_panel_names_the_ranks_and_the_failed_one(
        one_rank_failed, runs_dir, wait_for):
    started = next(e for e in read_events(one_rank_failed / "events.jsonl")
                   if e["type"] == "run_started")
    assert (started["world_size"], started["backend"]) == (2, "gloo")  # what the panel reads
    app, pilot, cm = await _watch_until_ended(one_rank_failed, runs_dir, wait_for)
    try:
        progress = app.screen.query_one(RunProgress)
        assert progress.border_subtitle == "torchrun · 2 ranks (gloo)"
        assert progress.ranks.failed == {
            1: "FileNotFoundError: /data/shard-7.bin is missing on this node"}
        text = progress.render()
        lines = text.plain.splitlines()
        assert lines[4].startswith("ranks ■0 ✗1  1 failed")  # rank 0 stopped with the run
        assert lines[5].startswith("rank 1: FileNotFoundError: /data/shard-7.bin")
        # the failed rank in the theme's error colour; the whole message in the tooltip
        error = app.theme_variables["text-error"].lower()
        assert _hex(_span_style(text, "✗1").color) == error
        assert _hex(_span_style(text, "■0").color) != error
        assert "rank 1 failed: FileNotFoundError: /data/shard-7.bin is missing on this node" \
            in str(progress.tooltip)
        assert progress.has_class("-rank-failed")
        assert progress.outer_size.height == 8  # two lines more than a one-process run's
    finally:
        await cm.__aexit__(None, None, None)


async def test_the_ranks_are_ok_while_running_then_the_failure_arrives(
        runs_dir, wait_for, write_run):
    """The recorded run followed live: its events up to step 4 (every rank ok), then the rest
    appended as the engine wrote them (rank 1 failed, the run ended)."""
    lines = (FIXTURES / "rank-failure" / "events.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"type": "log"' in line)
    run_dir = runs_dir / "live"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text("".join(lines[:cut]))
    (run_dir / "launch.log").write_text("")
    (run_dir / "engine.pid").write_text(f"{os.getpid()}\n")  # a live engine
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="live")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.query(RunProgress)) and
                       app.screen.query_one(RunProgress).step == 4, 20)
        progress = app.screen.query_one(RunProgress)
        await pilot.pause(0.2)
        assert progress.render().plain.splitlines()[4] == "ranks ✓0 ✓1  all ok"
        assert progress.border_subtitle == "torchrun · 2 ranks (gloo)"
        assert _hex(_span_style(progress.render(), "✓1").color) == \
            app.theme_variables["text-success"].lower()
        with open(run_dir / "events.jsonl", "a") as fh:
            fh.write("".join(lines[cut:]))
        await wait_for(pilot, lambda: bool(progress.ranks.ended), 20)
        await pilot.pause(0.2)
        assert "ranks ■0 ✗1  1 failed" in progress.render().plain
        assert progress.ranks.failed == {
            1: "FileNotFoundError: /data/shard-7.bin is missing on this node"}


async def test_several_failed_ranks_are_all_marked(two_ranks_failed, runs_dir, wait_for):
    app, pilot, cm = await _watch_until_ended(two_ranks_failed, runs_dir, wait_for)
    try:
        progress = app.screen.query_one(RunProgress)
        assert progress.border_subtitle == "torchrun · 3 ranks (gloo)"
        assert sorted(progress.ranks.failed) == [1, 2]
        text = progress.render()
        assert "ranks ■0 ✗1 ✗2  2 failed" in text.plain
        assert "rank 1: FileNotFoundError: /data/shard-" in text.plain  # cut to the width
        assert text.plain.rstrip().endswith("+1 more")
        error = app.theme_variables["text-error"].lower()
        assert _hex(_span_style(text, "✗1").color) == error
        assert _hex(_span_style(text, "✗2").color) == error
        tooltip = str(progress.tooltip)
        assert "rank 1 failed: FileNotFoundError: /data/shard-7.bin" in tooltip
        assert "rank 2 failed: FileNotFoundError: /data/shard-8.bin" in tooltip
    finally:
        await cm.__aexit__(None, None, None)


async def test_ranks_are_ok_until_one_fails(runs_dir):
    """While the run goes, each rank's badge is ok; a later echo of an error keeps the first."""
    ranks = RankStatus(8, "nccl")
    assert ranks.title == "torchrun · 8 ranks (nccl)"
    assert ranks.summary() == "all 8 ranks ok"
    ranks.fail(3, "rank 3 failed: RuntimeError: CUDA error: out of memory\nmore detail")
    ranks.fail(3, "a later echo")
    assert ranks.failed == {3: "RuntimeError: CUDA error: out of memory"}
    assert first_line("\n  ValueError: x\n") == "ValueError: x"

    app = KDApp(runs_dir=runs_dir)  # the widget alone, on the launch screen
    async with app.run_test(size=(60, 20)) as pilot:
        progress = RunProgress()
        await app.screen.mount(progress)
        progress.set_ranks(2, "gloo")
        await pilot.pause()
        assert progress.render().plain.splitlines()[4] == "ranks ✓0 ✓1  all ok"
        single = RunProgress()
        await app.screen.mount(single)
        single.set_ranks(1, None)  # one process: not a torchrun run
        await pilot.pause()
        assert single.ranks is None and not single.border_subtitle


async def test_a_one_process_run_shows_no_ranks(runs_dir, wait_for, write_run):
    write_run(runs_dir / "single", steps=60)
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="single")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.query(VerdictPanel)) and
                       app.screen.query_one(VerdictPanel).status == "pass", 20)
        progress = app.screen.query_one(RunProgress)
        assert progress.ranks is None
        assert not progress.border_subtitle and progress.tooltip is None
        assert "ranks" not in progress.render().plain
        assert progress.outer_size.height == 6


def test_headless_watch_prints_the_failed_rank(one_rank_failed, runs_dir, capsys):
    out = io.StringIO()
    code = headless_watch(argparse.Namespace(run=str(one_rank_failed), runs_dir=str(runs_dir)),
                          out)
    lines = out.getvalue().splitlines()
    ours = "ERROR (rank 1): FileNotFoundError: /data/shard-7.bin is missing on this node"
    assert lines.count(ours) == 1, lines
    # in place of the engine's own line for it, not beside it
    assert not any(line.startswith("ERROR: rank 1 failed") for line in lines)
    assert lines.index(ours) < next(i for i, line in enumerate(lines)
                                    if line.startswith("ERROR: RuntimeError"))
    assert code == 2  # a failed run is inconclusive


def test_snapshot_of_a_two_rank_run_whose_rank_1_failed(snap_compare, runs_dir, monkeypatch):
    """The recorded real run (tests/tui/fixtures/rank-failure, see make_rank_failure_run.py)."""
    # a running stage's clock ticks; a picture must not depend on when it was taken
    # (a wall clock at 0 adds nothing to a stage's clock counted from its event's time)
    monkeypatch.setattr(run_panels, "time", SimpleNamespace(monotonic=lambda: 1000.0,
                                                            time=lambda: 0.0))
    shutil.copytree(FIXTURES / "rank-failure", runs_dir / "rank-failure")
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="rank-failure")

    async def settled(pilot) -> None:
        for _ in range(100):
            await pilot.pause(0.05)
            progress = pilot.app.screen.query(RunProgress)
            if progress and progress.first().ranks is not None and \
                    progress.first().ranks.ended:
                break
        await pilot.pause(0.4)  # one chart redraw after the last update

    assert snap_compare(app, terminal_size=SIZE, run_before=settled)
