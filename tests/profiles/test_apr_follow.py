"""AprRunFollower: launch.log followed by byte offset (here through a local RunSource), lines
turned into events once each, however the bytes arrive."""

from __future__ import annotations

from pathlib import Path

from kdtui.profiles.apr.watch import AprRunFollower
from kdtui.watch import LocalRunSource


async def test_torn_lines_wait_for_their_newline_and_each_step_comes_once(tmp_path: Path):
    log = tmp_path / "launch.log"
    follower = AprRunFollower(LocalRunSource(tmp_path), epochs=1)
    assert not await follower.poll()  # no log yet
    log.write_bytes(b"  Step 1/3: loss: 5.0\n  Step 2/3: lo")
    first = await follower.poll()
    assert [e["step"] for e in first.events if e["type"] == "step"] == [1]
    with open(log, "ab") as fh:
        fh.write(b"ss: 4.0\n  Step 3/3: loss: 3.0\n")
    second = await follower.poll()
    assert [e["step"] for e in second.events if e["type"] == "step"] == [2, 3]
    assert second.log_lines == ["  Step 2/3: loss: 4.0", "  Step 3/3: loss: 3.0"]
    assert follower.offsets[1] == log.stat().st_size


async def test_a_panic_is_reported_when_the_log_pauses_and_ends_the_run(tmp_path: Path):
    log = tmp_path / "launch.log"
    follower = AprRunFollower(LocalRunSource(tmp_path))
    log.write_text("  Step 1/9: loss: 5.0\nthread 'main' panicked at src/main.rs:9:9:\n")
    update = await follower.poll()
    assert not [e for e in update.events if e["type"] == "log"]  # held for its message
    update = await follower.poll()  # nothing new: the block is complete
    kinds = [e["type"] for e in update.events]
    assert kinds == ["log", "verdict", "run_finished"]
    assert update.events[0]["kind"] == "panic" and update.events[2]["status"] == "failed"


async def test_finish_after_a_silent_death_ends_the_run_once(tmp_path: Path):
    (tmp_path / "launch.log").write_text("  Step 1/9: loss: 5.0\n")
    follower = AprRunFollower(LocalRunSource(tmp_path))
    await follower.poll()
    events = follower.finish(None, "apr is gone without an exit code")
    assert [e["type"] for e in events] == ["verdict", "run_finished"]
    assert events[1]["error"] == "apr is gone without an exit code"
    assert follower.finish(None) == []


async def test_the_plain_run_follower_sees_apr_events_through_the_events_source(tmp_path: Path):
    from kdtui.profiles.apr.watch import AprEventsSource
    from kdtui.watch import RunFollower

    (tmp_path / "launch.log").write_text(
        "  Step 1/2: loss: 5.0\n  Step 2/2: loss: NaN\nCUDA_ERROR_LAUNCH_FAILED\n")
    follower = RunFollower(AprEventsSource(LocalRunSource(tmp_path)))  # what the run screen uses
    update = await follower.poll()
    assert [e["type"] for e in update.events] == ["stage", "step", "step", "log"]
    assert update.log_lines[2] == "CUDA_ERROR_LAUNCH_FAILED"
    assert not follower.events.bad_lines and not follower.events.gaps


async def test_a_silent_death_is_found_by_the_status_check_and_ends_the_run(tmp_path: Path):
    (tmp_path / "launch.log").write_text("  Step 1/9: loss: 5.0\n")
    asked = []

    async def status() -> dict:
        asked.append(1)
        return {"alive": False, "exit_code": None}

    follower = AprRunFollower(LocalRunSource(tmp_path), status=status, alive_every=0.0)
    first = await follower.poll()
    assert [e["type"] for e in first.events] == ["stage", "step"] and not asked
    second = await follower.poll()  # quiet: asks, learns apr is gone
    assert asked and [e["type"] for e in second.events] == ["verdict", "run_finished"]
    assert "without an exit code" in second.events[1]["error"]
