"""`kdengine verdict RUN_DIR` (README, getting-started): prints the verdict and exits 0, 1 or 2;
events.md: readers are tolerant, so a damaged or hand-edited events.jsonl gives a verdict (or one
line saying why not), never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kdengine.verdict import distill_report, verdict_from_events


def _verdict(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdengine", "verdict", *argv],
                          capture_output=True, text=True, timeout=120)


def _events(*events: dict) -> str:
    return "".join(json.dumps({"v": 1, "seq": i, "t": 1.0, **e}) + "\n"
                   for i, e in enumerate(events))


GOOD_END = [{"type": "run_finished", "status": "completed", "exit_code": 0, "steps": 10}]
# a field of the wrong type, as an editor, another tool or a damaged disk leaves it
MISTYPED = {
    "step-as-text": [{"type": "step", "step": "x", "loss": 1.0},
                     {"type": "eval", "step": 0, "val_loss": 2.0},
                     {"type": "eval", "step": 10, "val_loss": 1.0}, *GOOD_END],
    "eval-step-as-text": [{"type": "eval", "step": 0, "val_loss": 2.0},
                          {"type": "eval", "step": "ten", "val_loss": 1.0}, *GOOD_END],
    "eval-step-null": [{"type": "eval", "step": 0, "val_loss": 2.0},
                       {"type": "eval", "step": None, "val_loss": 1.0}, *GOOD_END],
    "val-loss-as-text": [{"type": "eval", "step": 0, "val_loss": "2.0"},
                         {"type": "eval", "step": 10, "val_loss": 1.0}, *GOOD_END],
    "steps-as-text": [{"type": "eval", "step": 0, "val_loss": 2.0},
                      {"type": "eval", "step": 10, "val_loss": 1.0},
                      {"type": "run_finished", "status": "completed", "steps": "10"}],
}


@pytest.mark.parametrize("events", MISTYPED.values(), ids=MISTYPED.keys())
def test_a_mistyped_field_gives_a_verdict_not_a_traceback(tmp_path, events) -> None:
    (tmp_path / "events.jsonl").write_text(_events(*events))
    done = _verdict(str(tmp_path))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1, 2) and done.stdout.startswith("F-DISTILL-SMOKE-001 ")
    assert len(done.stdout.splitlines()) == 1
    verdict_from_events(json.loads(line) for line in _events(*events).splitlines())
    distill_report(json.loads(line) for line in _events(*events).splitlines())


def test_an_eval_without_a_usable_step_counts_as_no_eval(tmp_path) -> None:
    events = MISTYPED["eval-step-as-text"]
    verdict = verdict_from_events(json.loads(line) for line in _events(*events).splitlines())
    assert verdict.status == "inconclusive" and verdict.reason == \
        "no validation loss after step 0"


def test_a_run_dir_whose_events_file_is_a_directory_is_one_line(tmp_path) -> None:
    (tmp_path / "events.jsonl").mkdir()
    done = _verdict(str(tmp_path))
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.splitlines() == [
        f"kdengine verdict: error: {tmp_path} has no events.jsonl: not a kdengine run dir"]


def test_a_run_name_for_a_run_dir_says_where_the_run_is(tmp_path, monkeypatch) -> None:
    # `kdtui watch` takes a run's name; `kdengine verdict` its directory: given the name of a
    # run in the runs dir, the line says the directory to give
    runs = tmp_path / "runs"
    (runs / "my-first-kd").mkdir(parents=True)
    (runs / "my-first-kd" / "events.jsonl").write_text(_events(*MISTYPED["step-as-text"]))
    monkeypatch.chdir(tmp_path)  # KDENGINE_RUNS_DIR is tmp_path/runs
    done = _verdict("my-first-kd")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "kdengine verdict: error: my-first-kd does not exist here (the run of that name is "
        f"{runs / 'my-first-kd'}: kdengine verdict {runs / 'my-first-kd'})"]
    missing = _verdict("no-such-run")
    assert missing.stderr.splitlines() == [
        "kdengine verdict: error: no-such-run does not exist (give a run's directory, the one "
        "that holds events.jsonl)"]
