"""docs/events.md and docs/models.md, checked against a real run's directory: every field the
event table names is in the events a tiny CPU run writes, the files it says sit beside them are
there, and `kdengine verdict --json` prints the verdict event's own object."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdengine.config import FIELDS
from kdengine.events import read_events

REPO = Path(__file__).resolve().parents[2]
EVENTS_MD = (REPO / "docs" / "events.md").read_text()
TIMEOUT = 600

# each type's fields as docs/events.md's "Types" table names them (on the CPU: no gauges of a
# GPU, no compile counters; on-policy fields are another test's)
DOCUMENTED = {
    "run_started": ["run_id", "run_dir", "config", "device", "dtype", "resumed_from", "env"],
    "stage": ["stage", "state", "elapsed"],
    "step": ["step", "total_steps", "loss", "kd", "ce", "lr", "grad_norm", "tokens_per_s"],
    "eval": ["step", "val_loss", "val_ce", "val_kd"],
    "checkpoint": ["step", "path", "stall_s", "write_s"],
    "verdict": ["id", "status", "reason", "loss_kind", "initial_val_loss", "final_val_loss",
                "delta", "final_step"],
    "run_finished": ["status", "exit_code", "steps"],
}
ENV = ["kdengine", "torch", "python", "host", "cuda", "threads"]
FIRST_STEP = ["startup_s", "setup_s", "eval0_s", "first_step_s"]
STAGES = ["prepare", "load_teacher", "load_student", "data", "train", "final_eval", "verdict"]


def _row(kind: str) -> str:
    """The Types table's row of `kind`."""
    match = re.search(rf"^\| `{kind}` \|.*$", EVENTS_MD, re.M)
    assert match, f"docs/events.md has no row for {kind}"
    return match.group(0)


def test_the_tests_lists_are_the_docs() -> None:
    for kind, fields in DOCUMENTED.items():
        row = _row(kind)
        for field in fields:
            assert f"`{field}`" in row, (kind, field)
    for key in ENV + FIRST_STEP:
        assert f"`{key}`" in EVENTS_MD, key
    assert " ".join(f"`{s}`," for s in STAGES).rstrip(",") in _row("stage")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_run_args, write_tiny_inputs

    root = tmp_path_factory.mktemp("events-run")
    inputs = write_tiny_inputs(root)
    run_dir = root / "run"
    args = tiny_run_args(inputs, run_dir, steps=12, eval_every=6, checkpoint_every=4,
                         log_every=5)
    done = subprocess.run([sys.executable, "-m", "kdengine", *args], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # a pass or a fail, both complete
    return run_dir


def test_a_runs_events_carry_every_field_the_protocol_names(finished_run: Path) -> None:
    events = read_events(finished_run / "events.jsonl")
    assert [e["seq"] for e in events] == list(range(len(events)))
    for event in events:
        assert event["v"] == 1 and isinstance(event["t"], float), event
    by_type: dict[str, list[dict]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    for kind, fields in DOCUMENTED.items():
        assert kind in by_type, kind
        for event in by_type[kind]:
            missing = [f for f in fields if f not in event]
            assert not missing, (kind, missing, event)

    started = by_type["run_started"][0]
    assert events[0] is started and events[-1]["type"] == "run_finished"
    assert started["run_id"] == finished_run.name
    assert started["run_dir"] == str(finished_run) and started["resumed_from"] is None
    assert set(started["config"]) == {f.name for f in FIELDS}  # the EFFECTIVE config
    assert not [k for k in ENV if k not in started["env"]], started["env"]
    # config.json beside the events: the config the run was started with
    assert json.loads((finished_run / "config.json").read_text()) == started["config"]

    stages = by_type["stage"]
    assert [s["stage"] for s in stages if s["state"] == "running"] == STAGES
    assert {s["state"] for s in stages} <= {"running", "done", "failed", "cancelled"}
    data = next(s for s in stages if s["stage"] == "data" and s["state"] == "done")
    assert data["kind"] == "text"
    assert {"train_tokens", "val_tokens", "skipped_files", "skipped"} <= set(data)

    steps = by_type["step"]
    # every log_every steps, step 1 and the last step
    assert [s["step"] for s in steps] == [1, 5, 10, 12]
    assert all(s["total_steps"] == 12 for s in steps)
    assert not [k for k in FIRST_STEP if k not in steps[0]], steps[0]
    assert not any(k in s for s in steps[1:] for k in FIRST_STEP)

    evals = by_type["eval"]  # step 0 (the baseline), every eval_every steps, and the end
    assert [e["step"] for e in evals] == [0, 6, 12]
    assert "val_teacher_ce" in evals[0]

    checkpoints = by_type["checkpoint"]
    assert [c["step"] for c in checkpoints] == [4, 8, 12]
    # docs/models.md: step-NNNNNNNN/ with student.safetensors, trainer.pt and meta.json; the
    # two newest kept
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == [
        "step-00000008", "step-00000012"]
    newest = Path(checkpoints[-1]["path"])
    assert newest == finished_run / "checkpoints" / "step-00000012"
    assert {"student.safetensors", "trainer.pt", "meta.json"} <= {p.name for p in
                                                                  newest.iterdir()}

    verdict = by_type["verdict"]
    assert len(verdict) == 1 and events.index(verdict[0]) < len(events) - 1  # before the end
    assert verdict[0]["id"] == "F-DISTILL-SMOKE-001" and verdict[0]["loss_kind"] == "val"
    assert verdict[0]["initial_val_loss"] == evals[0]["val_loss"]
    assert verdict[0]["final_val_loss"] == evals[-1]["val_loss"]
    assert verdict[0]["final_step"] == 12
    finished = events[-1]
    assert finished["status"] == "completed" and finished["exit_code"] == 0
    assert finished["steps"] == 12


def test_verdict_json_prints_the_verdict_events_object(finished_run: Path) -> None:
    event = next(e for e in read_events(finished_run / "events.jsonl")
                 if e["type"] == "verdict")
    done = subprocess.run([sys.executable, "-m", "kdengine", "verdict", "--json",
                           str(finished_run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == {"pass": 0, "fail": 1}[event["status"]], done.stderr
    printed = json.loads(done.stdout)
    assert printed == {k: v for k, v in event.items() if k not in ("v", "seq", "t", "type")}


def test_the_final_student_is_in_hf_layout_with_where_it_came_from(finished_run: Path) -> None:
    # docs/models.md: final/ holds config.json, model.safetensors, the tokenizer files and
    # kdengine.json; it loads with transformers' AutoModelForCausalLM
    final = finished_run / "final"
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "kdengine.json"} <= names
    origin = json.loads((final / "kdengine.json").read_text())
    config = json.loads((finished_run / "config.json").read_text())
    assert origin["distilled_from"] == config["teacher"]
    assert origin["student_init"] == config["student"]
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    assert model.config.vocab_size == 257


def test_a_failed_runs_last_event_says_its_error_and_stage(tmp_path, tiny_run_inputs,
                                                           tiny_args, engine_in_process) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_nan_student

    run_dir = tmp_path / "run"
    args = tiny_args({**tiny_run_inputs, "student": write_nan_student(tiny_run_inputs)},
                     run_dir, steps=4)
    # in this process (a failing run's real process: test_failures.py)
    done = engine_in_process(*args)
    assert done.returncode == 1
    # architecture.md: one line on the terminal naming the stage and launch.log
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("kdengine train: error: [train] failed: val loss is nan"), line
    # a NaN is the numbers' failure, not the code's: no traceback to point at (audit 13)
    assert line.endswith(f"(log in {run_dir / 'launch.log'})"), line
    assert "Traceback" not in done.stderr
    events = read_events(run_dir / "events.jsonl")
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "failed"
    assert finished["exit_code"] == 1 and finished["stage"] == "train"
    assert "nan" in finished["error"]
    assert not any(e["type"] == "verdict" for e in events)  # a verdict only for completed runs
