"""A teacher-cache job's progress as its watcher sees it. The writer said nothing between its
`score` stage's start and its first shard's end (16k rows, over a minute on the demo): the
dashboard showed 'rows 0 / ?' with no tokens/s and no ETA, though the data stage knew the rows.
Now the data stage's `done` carries the rows to score, and a `step` event with rows, tokens/s
and the ETA comes every ~2 s between shard ends (at most one a batch), with a launch.log line.
A real tiny job in this process, its interval made short so a shard spans several."""

from __future__ import annotations

import pytest

from tests.conftest import read_events, write_tiny_inputs

EVERY_S = 0.01  # the progress interval for these tests (2 s for a user)
SHARD_ROWS, ROWS_PER_BATCH = 200, 4


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real job's events and launch.log: ~950 rows in 5 shards of 50 batches each."""
    from kdengine.cli import main
    from kdengine.teacher import progress

    root = tmp_path_factory.mktemp("cache-progress")
    inputs = write_tiny_inputs(root / "inputs")
    out = root / "job"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress, "PROGRESS_EVERY_S", EVERY_S)
        code = main(["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["data"],
                     "--seq-len", "32", "--device", "cpu", "--dtype", "float32", "--top-k", "4",
                     "--shard-rows", str(SHARD_ROWS), "--rows-per-batch", str(ROWS_PER_BATCH),
                     "--out", str(out)])
    assert code == 0
    return {"events": read_events(out), "log": (out / "launch.log").read_text(), "out": out}


def _steps(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "step"]


def test_audit14_a_cache_job_says_the_rows_it_will_score_before_its_first_shard_ends(job):
    events = job["events"]
    data_done = next(e for e in events if e["type"] == "stage" and e["stage"] == "data"
                     and e["state"] == "done")
    steps = _steps(events)
    total = steps[-1]["total_steps"]
    assert data_done["rows"] == total == data_done["train_rows"] + data_done["val_rows"]
    assert data_done["seq_len"] == 32 and data_done["shard_rows"] == SHARD_ROWS
    assert data_done["shards"] == steps[-1]["shards"] == -(-total // SHARD_ROWS)
    assert data_done["rows_written"] == 0  # a first attempt keeps nothing yet
    first_shard_end = next(e for e in steps if "write_s" in e)
    assert data_done["seq"] < first_shard_end["seq"]
    assert f"{total:,} rows (" in data_done["detail"]


def test_audit14_a_cache_job_reports_rows_rate_and_eta_between_its_shard_ends(job):
    steps = _steps(job["events"])
    ends = [e for e in steps if "write_s" in e]
    between = [e for e in steps if "write_s" not in e]
    assert len(ends) == steps[-1]["shards"] and ends[-1]["step"] == ends[-1]["total_steps"]
    # progress inside the first shard, before it is written, and inside later ones
    assert between and between[0]["seq"] < ends[0]["seq"]
    assert {e["shard"] for e in between} >= {0, 1}
    written = 0
    for event in steps:  # rows only go up; what a stop keeps is the last shard end's rows
        assert event["total_steps"] == ends[-1]["total_steps"]
        assert event["tokens_per_s"] > 0 and event["eta_s"] >= 0
        assert event["loss"] == event["ce"] > 0  # the teacher's own CE on the rows scored
        if "write_s" in event:
            written = event["step"]
        assert event["rows_written"] == written
    assert [e["step"] for e in steps] == sorted({e["step"] for e in steps})
    assert between[0]["eta_s"] > between[-1]["eta_s"]
    # between two shard ends, a progress event's rows lie strictly inside the shard
    for event in between:
        assert event["shard"] * SHARD_ROWS < event["step"] < (event["shard"] + 1) * SHARD_ROWS


def test_audit14_cache_progress_comes_at_most_every_interval_and_once_a_batch(job):
    steps = _steps(job["events"])
    between = [e for e in steps if "write_s" not in e]
    last = None
    for event in steps:  # after any step event, the next progress one waits the interval
        if last is not None and "write_s" not in event:
            assert event["t"] - last["t"] >= EVERY_S - 0.002, (last, event)
        last = event
    assert all((e["step"] - e["rows_written"]) % ROWS_PER_BATCH == 0 or
               e["step"] == e["total_steps"] for e in between)  # at a batch's end
    batches = sum(-(-min(SHARD_ROWS, steps[-1]["total_steps"] - i * SHARD_ROWS)
                    // ROWS_PER_BATCH) for i in range(steps[-1]["shards"]))
    assert len(between) <= batches - steps[-1]["shards"]


def test_audit14_a_cache_job_s_log_lines_say_its_rows_rate_and_eta(job):
    """`kdtui watch` and `--headless` print launch.log: its progress lines are there."""
    log = job["log"]
    total = _steps(job["events"])[-1]["total_steps"]
    shards = -(-total // SHARD_ROWS)
    scoring = [line for line in log.splitlines()
               if line.startswith("shard ") and " written: " not in line]
    assert scoring and scoring[0].startswith(f"shard 1/{shards}: ")
    assert f"/{total:,} rows (" in scoring[0] and ", tok/s=" in scoring[0]
    assert ", eta " in scoring[0] and "teacher ce=" in scoring[0]
    assert f"shard 1/{shards} written: {SHARD_ROWS}/{total:,} rows (" in log
    assert log.index(scoring[0]) < log.index(f"shard 1/{shards} written")


def test_audit14_the_cache_job_eta_is_read_as_minutes_and_hours() -> None:
    from kdengine.durations import format_seconds as format_eta

    assert [format_eta(s) for s in (0.4, 59.6, 185, 7800)] == ["0s", "1m00s", "3m05s",
                                                                "2h10m"]


def test_audit14_cache_progress_defaults_to_every_two_seconds() -> None:
    from kdengine.teacher.progress import PROGRESS_EVERY_S, ScoreProgress

    progress = ScoreProgress(total_rows=10, seq_len=4, shards=1, rows_written=0)
    assert PROGRESS_EVERY_S == progress.every_s == 2.0 and not progress.due()


def test_audit14_the_cache_job_rate_follows_a_change_of_pace_within_a_minute() -> None:
    """A demo job on a shared CPU, then freed: its rate since the start said 10k tokens/s and a
    4-minute ETA while it ran at 18k. The rate is over the last minute now (the writer's own
    numbers, on a clock the test moves: one batch of 128 tokens a step)."""
    from kdengine.teacher.progress import ScoreProgress

    now = [0.0]
    progress = ScoreProgress(total_rows=100_000, seq_len=128, shards=3, rows_written=0,
                             clock=lambda: now[0])

    def score(seconds: float, tokens_per_s: float) -> dict:
        fields = {}
        end = now[0] + seconds
        while now[0] < end - 1e-9:
            now[0] += 128 / tokens_per_s
            progress.batch(1, 128, 1.0, 127)
            if progress.due():
                fields = progress.fields(0)
        return fields

    now[0] = 30.0  # the first batch's warm-up (a compile) is left out
    progress.batch(1, 128, 1.0, 127)
    slow = score(240, 1_000)
    assert slow["tokens_per_s"] == pytest.approx(1_000, rel=0.02)
    fast = score(90, 3_000)  # 90 s later: a minute of the new pace
    assert fast["tokens_per_s"] == pytest.approx(3_000, rel=0.02)
    left = (100_000 - fast["step"]) * 128 / 3_000
    assert fast["eta_s"] == pytest.approx(left, rel=0.02)


def test_a_stopped_job_s_verdict_says_rows_scored_and_rows_on_disk_apart(job: dict) -> None:
    """With progress events between shard ends, the largest step is rows scored, not kept: a job
    stopped mid-shard read 'cancelled after 2496 rows' with 0 rows on disk (and, beside it,
    'finish it (its finished shards are kept)'). The verdict names both where they differ, as
    the job's own run_finished counts the rows on disk."""
    from kdengine.verdict import verdict_from_events

    events = job["events"]
    mid = next(e for e in _steps(events)
               if e["rows_written"] >= SHARD_ROWS and e["step"] > e["rows_written"])
    cut = events[:events.index(mid) + 1]
    stopped = cut + [{"type": "run_finished", "status": "cancelled", "exit_code": 143,
                      "steps": mid["rows_written"]}]
    reason = verdict_from_events(stopped).reason
    assert reason.startswith(f"the cache job cancelled after {mid['step']:,} rows scored, "
                             f"{mid['rows_written']:,} on disk"), reason
    running = verdict_from_events(cut).reason
    assert running == (f"the cache job has not finished ({mid['step']:,} rows scored, "
                       f"{mid['rows_written']:,} on disk)"), running
    done = verdict_from_events(events)
    assert done.status.upper() == "PASS" and "rows scored" not in done.reason, done.reason
