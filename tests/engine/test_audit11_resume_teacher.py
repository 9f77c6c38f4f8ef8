"""Audit 11: a resume continues 'exactly, as if it had never stopped' (docs/getting-started.md)
only with the teacher the run started with. A teacher whose files changed between the start
and the --resume (a folder written over, a hub id whose cache got a newer snapshot) was taken
without a word, and the run went on distilling another model. run_started now carries the
live teacher's identity, and a resume whose teacher differs is refused in one line, before
anything is written; the same teacher put back resumes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import read_events, tiny_run_args, write_tiny_inputs, write_tiny_model  # noqa: E402


def test_a_resume_with_a_changed_teacher_is_refused(tmp_path: Path, engine_in_process,
                                                   one_line_refusal) -> None:
    inputs = write_tiny_inputs(tmp_path / "in")
    run_dir = tmp_path / "run"
    ran = engine_in_process(*tiny_run_args(inputs, run_dir, steps=2, checkpoint_every=1,
                                           eval_every=0))
    assert ran.returncode == 0, ran.stderr[-2000:]
    started = read_events(run_dir)[0]
    assert len(started["teacher_identity"]) == 64
    # as a kill -9 after the step-1 checkpoint leaves it
    (run_dir / "events.jsonl").write_text("".join(
        line for line in (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
        if '"run_finished"' not in line))
    shutil.rmtree(run_dir / "checkpoints" / "step-00000002")
    before = (run_dir / "events.jsonl").read_bytes()

    teacher = Path(inputs["teacher"])
    kept = tmp_path / "teacher-as-it-was"
    shutil.copytree(teacher, kept)
    shutil.rmtree(teacher)
    write_tiny_model(teacher, hidden=32, layers=2, seed=7)  # another teacher, same shapes
    for check in (["--check"], []):
        line = one_line_refusal(engine_in_process("train", "--resume", str(run_dir), *check),
                                "train", "--resume: ")
        assert line.endswith(
            f"the teacher {teacher} is not the one {run_dir} started with (its config.json or "
            "weights changed since), so the run would not continue as it began: restore that "
            "teacher, or start a new run with `kdengine train --config "
            f"{run_dir / 'config.json'} --run-dir NEW_DIR`"), line
    assert (run_dir / "events.jsonl").read_bytes() == before

    shutil.rmtree(teacher)
    shutil.copytree(kept, teacher)
    resumed = engine_in_process("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = [e for e in read_events(run_dir) if e["type"] == "run_started"][-1]
    assert again["resumed_from"] == 1
    assert again["teacher_identity"] == started["teacher_identity"]
