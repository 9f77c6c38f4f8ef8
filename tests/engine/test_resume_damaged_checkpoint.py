"""`kdengine train --resume` refuses a damaged checkpoint or config.json, or a flag, in one
line (exit 2) before it loads a model, naming the file and the fix, and writes nothing into the
run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdengine.checkpoint import save_checkpoint
from kdengine.checkpoint_files import checkpoint_damage
from kdengine.config import RunConfig


def _stopped_run(run_dir: Path, steps: tuple[int, ...]) -> list[Path]:
    """A run stopped after its checkpoints at `steps`, written by the engine's own writer."""
    run_dir.mkdir()
    config = RunConfig.from_mapping({"teacher": "t", "student": "s", "data": "d", "steps": 100,
                                     "checkpoint_every": 10, "run_name": "stopped"})
    (run_dir / "config.json").write_text(config.to_json())
    (run_dir / "events.jsonl").write_text(json.dumps(
        {"v": 1, "seq": 0, "t": 0.0, "type": "step", "step": steps[-1] + 3}) + "\n")
    module = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    return [save_checkpoint(run_dir, step, module, {"optimizer": optimizer.state_dict()},
                            {"config": config.to_dict()}) for step in steps]


def _resume(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdengine", "train", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KDENGINE_RUNS_DIR": str(run_dir.parent)})


def test_resume_refuses_a_cut_short_checkpoint_and_names_the_one_before(tmp_path: Path,
                                                                        one_line_refusal):
    run_dir = tmp_path / "run"
    before, latest = _stopped_run(run_dir, (10, 20))
    weights = latest / "student.safetensors"
    os.truncate(weights, weights.stat().st_size - 16)  # a copy cut short
    events = (run_dir / "events.jsonl").read_bytes()

    line = one_line_refusal(_resume(run_dir), "train", "--resume: ")
    assert f"checkpoint {latest} is damaged: student.safetensors is cut short" in line
    assert f"rm -r {latest}" in line and f"continue from {before.name}" in line
    assert (run_dir / "events.jsonl").read_bytes() == events  # no failed segment written


@pytest.mark.parametrize("damage", ["trainer.pt", "meta.json"])
def test_resume_refuses_a_damaged_only_checkpoint_with_the_restart_command(
        tmp_path: Path, one_line_refusal, damage: str):
    run_dir = tmp_path / "run"
    (only,) = _stopped_run(run_dir, (10,))
    (only / damage).write_bytes(b"\x00garbage")

    line = one_line_refusal(_resume(run_dir), "train", "--resume: ")
    assert f"checkpoint {only} is damaged: {damage} cannot be read" in line
    assert f"--config {run_dir / 'config.json'} --run-dir NEW_DIR" in line


def test_resume_of_a_config_json_that_does_not_parse_names_it(tmp_path: Path,
                                                             one_line_refusal):
    run_dir = tmp_path / "run"
    _stopped_run(run_dir, (10,))
    (run_dir / "config.json").write_text('{"steps": 100, ')  # cut short

    line = one_line_refusal(_resume(run_dir), "train", "--resume: ")
    assert f"{run_dir / 'config.json'} cannot be read" in line


def test_a_whole_checkpoint_has_no_damage(tmp_path: Path):
    for checkpoint in _stopped_run(tmp_path / "run", (10, 20)):
        assert checkpoint_damage(checkpoint) is None


def test_resume_names_the_run_config_for_a_model_that_is_gone(tmp_path: Path,
                                                              one_line_refusal):
    """A resume takes no flags, so a model its config.json names that no longer exists is
    said as that file's field, not as a --teacher the user cannot pass."""
    run_dir = tmp_path / "run"
    _stopped_run(run_dir, (10,))  # its config.json names teacher "t", which does not exist

    line = one_line_refusal(_resume(run_dir), "train",
                            f"--resume: teacher in {run_dir / 'config.json'}: t does not exist")
    assert line.endswith("(the run's own config: restore what it names, or edit that file)")


def test_resume_with_a_flag_says_how_to_start_a_run_with_other_values(tmp_path: Path,
                                                                     one_line_refusal):
    run_dir = tmp_path / "run"
    _stopped_run(run_dir, (10,))
    done = subprocess.run([sys.executable, "-m", "kdengine", "train", "--resume", str(run_dir),
                           "--batch-size", "8"], capture_output=True, text=True, timeout=120)
    line = one_line_refusal(done, "train", "--resume continues the run with its own "
                            "config.json; drop --batch-size (other values are a new run: ")
    assert f"`kdengine train --config {run_dir / 'config.json'} --run-dir NEW_DIR`" in line
