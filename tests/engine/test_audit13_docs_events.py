"""Audit 13: docs/events.md's promises about a teacher cache's streams, checked against a real
`kdengine cache-teacher` job and a 2-step run from its cache (in this process). The step-0 eval's
`val_teacher_ce` was documented as absent for a teacher cache, while a run from one reports the
NLL its writer stored (docs/teacher-cache.md): the doc says so now."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import chat_record, write_chat_pair, write_jsonl, write_tiny_inputs  # noqa: E402,E501

from kdengine.cli import main  # noqa: E402
from kdengine.events import read_events  # noqa: E402

EVENTS_MD = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
ONE_LINE = " ".join(EVENTS_MD.split())


def _listed(after: str) -> list[str]:
    """The backticked keys of the parenthesis that follows `after` in events.md's run_started
    row."""
    row = next(line for line in EVENTS_MD.splitlines() if line.startswith("| `run_started`"))
    inside = re.search(re.escape(after) + r" \(([^)]*)\)", row)
    assert inside, after
    return re.findall(r"`(\w+)`", inside.group(1))


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("audit13-events")
    inputs = write_tiny_inputs(root)
    job, run_dir = root / "cache", root / "run"
    assert main(["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["data"],
                 "--seq-len", "32", "--device", "cpu", "--dtype", "float32", "--top-k", "4",
                 "--out", str(job)]) == 0
    assert main(["train", "--teacher-cache", str(job), "--student", inputs["student"],
                 "--data", inputs["data"], "--run-dir", str(run_dir), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "32", "--eval-batches", "1"]) == 0
    # the same command on the complete cache: scores nothing, records its part
    assert main(["cache-teacher", "--teacher", inputs["teacher"], "--data", inputs["data"],
                 "--seq-len", "32", "--device", "cpu", "--dtype", "float32", "--top-k", "4",
                 "--out", str(job)]) == 0
    return job, run_dir


def _undocumented(streams: list[Path]) -> list[str]:
    named = set(re.findall(r"`([a-z_0-9]+)(?::[^`]*)?`", EVENTS_MD))  # `key` or `key: value`
    undocumented = set()
    for path in streams:
        for event in read_events(path):
            undocumented |= {f"{event['type']}.{k}" for k in event if k not in named}
            for nested in ("env", "teacher_cache", "cache"):
                if isinstance(event.get(nested), dict):
                    undocumented |= {f"{nested}.{k}" for k in event[nested] if k not in named}
            if event["type"] == "stage":
                undocumented |= {f"stage {v}" for v in (event["stage"], event["state"])
                                 if v not in named}
    return sorted(undocumented)


def test_every_key_stage_and_state_of_a_cache_jobs_and_a_cached_runs_streams_is_documented(
        cached_run) -> None:
    # (the stage row said running/done/failed/cancelled and the run's stages only; a job's
    # score stage, its skipped stages, complete_already, eta_s, shard, bytes were nowhere)
    assert not _undocumented([cached_run[0] / "events.jsonl", cached_run[1] / "events.jsonl"])
    job_events = read_events(cached_run[0] / "events.jsonl")
    assert [e["state"] for e in job_events if e["type"] == "stage"][-1] == "skipped"
    assert job_events[-1]["complete_already"] is True


def test_a_run_from_a_teacher_cache_reports_the_teachers_ce_at_step_0(cached_run) -> None:
    _, run_dir = cached_run
    evals = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "eval"]
    assert evals[0]["step"] == 0 and evals[0]["val_teacher_ce"] > 0
    assert not any("val_teacher_ce" in e for e in evals[1:])
    # the doc says what the run does (it said: absent for a teacher cache)
    paragraph = ONE_LINE[ONE_LINE.index("The step-0 eval also carries `val_teacher_ce`"):]
    paragraph = paragraph[:paragraph.index(").", paragraph.index("floor"))]
    assert "teacher-cache.md" in paragraph and "absent for a teacher cache," not in paragraph


def test_the_run_started_events_of_a_cache_job_and_a_cached_run_carry_the_documented_keys(
        cached_run) -> None:
    job, run_dir = cached_run
    started = read_events(run_dir / "events.jsonl")[0]
    assert started["type"] == "run_started" and started["run_id"] == run_dir.name
    assert sorted(started["teacher_cache"]) == sorted(_listed("adds `teacher_cache`"))
    assert started["teacher_cache"]["dir"] == str(job)
    assert "teacher_identity" not in started  # a teacher cache: the cache's own holds it
    assert started["teacher_cache"]["teacher_identity"]
    own = read_events(job / "events.jsonl")[0]
    assert own["type"] == "run_started" and own["job"] == "cache-teacher"
    assert own["run_id"] == job.name and own["resumed_from"] is None
    assert sorted(own["cache"]) == sorted(_listed("the directory's name (what `kdtui watch` "
                                                  "takes) and `cache`"))


def test_every_key_of_an_on_policy_runs_stream_is_documented(tmp_path: Path) -> None:
    # (a sampling step's `source` was in on-policy.md only)
    teacher, student = write_chat_pair(tmp_path)
    data = write_jsonl(tmp_path / "chat.jsonl", [chat_record(i) for i in range(60)])
    run_dir = tmp_path / "run"
    assert main(["train", "--teacher", str(teacher), "--student", str(student), "--data",
                 str(data), "--run-dir", str(run_dir), "--steps", "3", "--seq-len", "64",
                 "--batch-size", "2", "--eval-batches", "1", "--lmbda", "0.5", "--seq-kd",
                 "--max-new-tokens", "8", "--sample-every", "1", "--log-every", "1"]) in (0, 1)
    events = read_events(run_dir / "events.jsonl")
    assert {e.get("source") for e in events if e["type"] == "step"} >= {"teacher"}
    assert not _undocumented([run_dir / "events.jsonl"])
    # what a sampling step adds is in the table of what an on-policy run's step adds
    table = EVENTS_MD[EVENTS_MD.index("`step` of an on-policy run adds"):]
    table = table[:table.index("\n\n", table.index("| key |"))]
    adds = set(re.findall(r"`([a-z_0-9]+)`", table))
    step_row = next(line for line in EVENTS_MD.splitlines() if line.startswith("| `step` |"))
    every_step = {"v", "seq", "t", "type", "host_rss", *re.findall(r"`([a-z_0-9]+)`", step_row)}
    sampled = [e for e in events if e["type"] == "step" and "gen_s" in e]
    assert sampled and not {k for e in sampled for k in e} - every_step - adds
