"""Audit 13, a run's life: what --resume must refuse before it loads anything. A run on raw
text whose text changed since its checkpoint was refused only after both models loaded (exit 1,
a traceback in launch.log, the stopped run's record turned failed, so the dashboard offered R
again); it is refused first now, in one line, as example data is, the record untouched."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_args, write_tiny_inputs  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_inputs(tmp_path_factory.mktemp("lifecycle"))


def sigterm_before_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """A real SIGTERM to this process just before training step `step` (a kdtui cancel): the
    engine's own handler ends the run cancelled, with a checkpoint of the last trained step."""
    import kdengine.trainer as trainer

    queue = trainer.KDTrainer.queue_step

    def signalled(self, *args, **kwargs):
        if self.step + 1 == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return queue(self, *args, **kwargs)

    monkeypatch.setattr(trainer.KDTrainer, "queue_step", signalled)


def stopped_run(inputs: dict[str, str], run_dir: Path, engine_in_process,
                monkeypatch: pytest.MonkeyPatch, **overrides) -> None:
    """A run cancelled in its step 3, with checkpoints of steps 2 and 3 (the cancel's)."""
    with monkeypatch.context() as patch:
        sigterm_before_step(patch, 3)
        done = engine_in_process(*tiny_run_args(inputs, run_dir, **{
            "steps": 4, "eval_every": 2, "checkpoint_every": 2, **overrides}))
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert (run_dir / "checkpoints" / "step-00000002" / "meta.json").exists()


def test_a_resume_on_raw_text_that_changed_is_refused_before_any_model_loads(
        inputs, tmp_path: Path, engine_in_process, monkeypatch) -> None:
    data = Path(tmp_path / "data")
    data.mkdir()
    for doc in Path(inputs["data"]).iterdir():
        (data / doc.name).write_text(doc.read_text())
    run_dir = tmp_path / "run"
    stopped_run({**inputs, "data": str(data)}, run_dir, engine_in_process, monkeypatch)
    record = (run_dir / "events.jsonl").read_bytes()
    original = (data / "doc0.txt").read_text()
    (data / "doc0.txt").write_text(original + "one more line\n")
    for check in ([], ["--check"]):
        out = engine_in_process("train", "--resume", str(run_dir), *check)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and out.stdout == ""
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"kdengine train: error: --resume: the text of {data} is not the "
                               f"one {run_dir} trained on up to step-00000003 ("), line
        assert "restore that data and resume, or start a new run" in line, line
        assert (run_dir / "events.jsonl").read_bytes() == record  # still a cancelled run
    # the same number of tokens, other ones: refused too
    (data / "doc0.txt").write_text(original.replace("x", "y"))
    out = engine_in_process("train", "--resume", str(run_dir))
    assert out.returncode == 2 and "as many training tokens" in out.stderr, out.stderr[-2000:]
    # the same text again (a new mtime: the same tokens) continues
    (data / "doc0.txt").write_text(original)
    out = engine_in_process("train", "--resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_raw_text_checkpoint_without_a_data_position_in_its_meta_still_resumes(
        inputs, tmp_path: Path, engine_in_process, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    stopped_run(inputs, run_dir, engine_in_process, monkeypatch)
    meta = run_dir / "checkpoints" / "step-00000002" / "meta.json"
    saved = json.loads(meta.read_text())
    del saved["data"]  # as a checkpoint written before meta.json held it
    meta.write_text(json.dumps(saved))
    out = engine_in_process("train", "--resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-2000:]
