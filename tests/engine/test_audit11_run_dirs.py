"""Audit 11: the run directory as a new user names it. A run started or resumed with a relative
directory (`--run-dir out/kd1`, `--resume runs/kd1`, `--run-dir .`, a relative
KDENGINE_RUNS_DIR) wrote that relative path into its events (run_started's `run_dir`, each
checkpoint's `path`): meaningless to a dashboard or a reader in another working directory. The
events now hold the absolute directory, however it was named."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import read_events, tiny_run_args, write_tiny_inputs  # noqa: E402


def test_a_relative_run_dir_is_written_absolute_in_the_events(tmp_path: Path, monkeypatch,
                                                              engine_in_process) -> None:
    inputs = write_tiny_inputs(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    started = engine_in_process(*tiny_run_args(inputs, Path("out/kd1"), steps=2,
                                               checkpoint_every=1, eval_every=0))
    assert started.returncode == 0, started.stderr[-2000:]
    run_dir = tmp_path / "out" / "kd1"
    events = read_events(run_dir)
    assert events[0]["run_dir"] == str(run_dir)
    paths = [e["path"] for e in events if e["type"] == "checkpoint"]
    assert paths and all(p.startswith(str(run_dir) + "/") for p in paths), paths

    # the same run as a kill -9 after its step-1 checkpoint leaves it, resumed by a name
    # relative to where the user stands now
    monkeypatch.chdir(run_dir)
    (run_dir / "events.jsonl").write_text("".join(
        line for line in (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
        if '"run_finished"' not in line and '"verdict"' not in line))
    shutil.rmtree(run_dir / "checkpoints" / "step-00000002")
    resumed = engine_in_process("train", "--resume", ".")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = [e for e in read_events(run_dir) if e["type"] == "run_started"][-1]
    assert again["run_dir"] == str(run_dir) and again["resumed_from"] == 1


def test_a_new_run_into_a_run_dir_names_a_way_on_that_works(tmp_path: Path, monkeypatch,
                                                            engine_in_process,
                                                            one_line_refusal) -> None:
    """`kdengine train` into a directory that holds a run said 'continue it with --resume' for
    every run, and --resume then refused a completed one ('nothing to continue') and one with
    no checkpoint: the refusal now offers --resume only where it continues."""
    inputs = write_tiny_inputs(tmp_path / "in")
    run_dir = tmp_path / "run"
    args = tiny_run_args(inputs, run_dir, steps=2, checkpoint_every=1, eval_every=0)
    assert engine_in_process(*args).returncode == 0
    events = (run_dir / "events.jsonl").read_text()

    line = one_line_refusal(engine_in_process(*args, "--check"), "train", "--run-dir: ")
    assert line.endswith(f"{run_dir} already holds a run (completed: pick another --run-dir; "
                         f"to train its student further, also give --student {run_dir}/final)")

    # killed after its step-1 checkpoint: --resume continues it, as the refusal says
    (run_dir / "events.jsonl").write_text("".join(
        e for e in events.splitlines(keepends=True) if '"run_finished"' not in e))
    shutil.rmtree(run_dir / "checkpoints" / "step-00000002")
    line = one_line_refusal(engine_in_process(*args, "--check"), "train", "--run-dir: ")
    assert line.endswith(f"(continue it with --resume {run_dir}, or pick another --run-dir)")
    assert engine_in_process("train", "--resume", str(run_dir), "--check").returncode == 0

    # killed before its first checkpoint: --resume would refuse it too
    shutil.rmtree(run_dir / "checkpoints")
    line = one_line_refusal(engine_in_process(*args, "--check"), "train", "--run-dir: ")
    assert line.endswith(f"{run_dir} already holds a run, with no checkpoint to continue from "
                         "(pick another --run-dir)")


def test_a_run_dir_holding_a_models_config_json_is_refused(tmp_path: Path, engine_in_process,
                                                           one_line_refusal) -> None:
    """`--run-dir models/student` (the student's own folder, or any model's): the run wrote its
    config.json over the model's, and the model was lost. Refused now, by --check and the start,
    with nothing written; a run's own config.json left by a start that stopped before its first
    event is the run's to write again."""
    inputs = write_tiny_inputs(tmp_path / "in")
    student = Path(inputs["student"])
    before = {p.name: p.read_bytes() for p in student.iterdir()}
    for check in (["--check"], []):
        done = engine_in_process(*tiny_run_args(inputs, student, steps=2), *check)
        line = one_line_refusal(done, "train", "--run-dir: ")
        assert line.endswith(f"{student} holds a config.json that is not a kdengine run's (a "
                             "model's folder?), which the run would write over: pick another "
                             "--run-dir (a new or empty directory)"), line
    assert {p.name: p.read_bytes() for p in student.iterdir()} == before

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "launch.log").write_text("")  # as a launcher leaves it before the engine starts
    (run_dir / "config.json").write_text(json.dumps({"teacher": "t", "student": "s",
                                                     "steps": 9}))
    done = engine_in_process(*tiny_run_args(inputs, run_dir, steps=2, eval_every=0), "--check")
    assert done.returncode == 0, done.stderr
