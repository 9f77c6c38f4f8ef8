"""A teacher-cache job's run screen while the teacher scores. It showed 'rows 0 / ?' with no
tokens/s and no ETA until the first shard was written (over a minute on the demo). Now the total
comes with the data stage, and rows, tokens/s and the ETA move with the step events the writer
sends every ~2 s (the ETA the engine's, as its log lines say it; the dashboard's own, from the
rate between events, jumped between 8 and 14 minutes on a contended demo job where the log said
11); the cache panel says the shard being scored and the rows on disk (what a stop
keeps). A real tiny job's stream (its interval made short), appended to a run directory as the
engine wrote it, while the screen follows it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdengine.durations import format_seconds
from kdtui.app import KDApp
from kdtui.runs import PID_FILE
from kdtui.widgets.cache_job import CacheJobPanel
from kdtui.widgets.run_panels import RunProgress
from tests.conftest import write_tiny_inputs

SHARD_ROWS = 200


@pytest.fixture(scope="module")
def job_stream(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The events of a real tiny job: ~950 rows in 5 shards, a progress event every batch or
    so."""
    from kdengine.cli import main
    from kdengine.events import read_events
    from kdengine.teacher import progress

    root = tmp_path_factory.mktemp("cache-progress-tui")
    inputs = write_tiny_inputs(root / "inputs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress, "PROGRESS_EVERY_S", 0.01)
        assert main(["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["data"],
                     "--seq-len", "32", "--device", "cpu", "--dtype", "float32", "--top-k",
                     "4", "--shard-rows", str(SHARD_ROWS), "--rows-per-batch", "4",
                     "--out", str(root / "job")]) == 0
    return read_events(root / "job" / "events.jsonl")


def _append(run_dir: Path, events: list[dict]) -> None:
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in events)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
async def test_audit14_a_cache_job_s_screen_shows_its_total_then_rows_rate_and_a_moving_eta(
        size, job_stream, runs_dir, wait_for):
    run_dir = runs_dir / "cache-progress"
    run_dir.mkdir()
    (run_dir / PID_FILE).write_text(f"{os.getpid()}\n")  # an engine alive: this process
    data_done = next(i for i, e in enumerate(job_stream) if e.get("stage") == "data"
                     and e.get("state") == "done")
    steps = [i for i, e in enumerate(job_stream) if e["type"] == "step"]
    between = [i for i in steps if "write_s" not in job_stream[i]]
    total = job_stream[steps[-1]]["total_steps"]
    _append(run_dir, job_stream[:data_done + 2])  # up to the score stage's start

    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=size) as pilot:
        assert app.open_run(str(run_dir))
        await wait_for(pilot, lambda: bool(app.screen.query(RunProgress)), 10)
        progress = app.screen.query_one(RunProgress)
        panel = app.screen.query_one(CacheJobPanel)
        # the total before a row is scored (was '?' until the first shard's end)
        await wait_for(pilot, lambda: progress.total == total, 10)
        assert f"rows 0 / {total:,}" in str(progress.render())
        assert "shard 1/5" in str(panel.render()) and "0 rows on disk" in str(panel.render())

        etas: list[float] = []
        shown: list[str] = []
        # rows scored, in the first shard, a middle one and the last
        picks = [between[0], between[len(between) // 2], between[-1]]
        for at in picks:
            _append(run_dir, job_stream[len(_read(run_dir)):at + 1])
            event = job_stream[at]
            await wait_for(pilot, lambda e=event: progress.step == e["step"], 10)
            text = str(progress.render())
            # the engine's ETA, from its first event on: the log line beside says the same
            assert progress.eta == event["eta_s"]
            assert f"rows {event['step']:,} / {total:,}" in text, text
            etas.append(progress.eta)
            shown.append(text)
            if size[1] >= 40:  # the full panel: the rate too (the compact one: rows and ETA)
                assert f"tokens/s {event['tokens_per_s']:,.0f}" in text, text
            assert f"ETA {format_seconds(progress.eta)}" in text, text
            # the shard being scored, and the rows in the shards written before it
            said = str(panel.render())
            assert f"shard {event['shard'] + 1}/5" in said, said
            assert f"{event['rows_written']:,} rows on disk" in said, said
        assert etas == sorted(etas, reverse=True) and etas[0] > etas[-1], etas
        assert len(set(shown)) == len(shown)  # the panel moved with every event
        assert job_stream[picks[-1]]["rows_written"] == 4 * SHARD_ROWS


def _read(run_dir: Path) -> list[str]:
    return (run_dir / "events.jsonl").read_text().splitlines()
