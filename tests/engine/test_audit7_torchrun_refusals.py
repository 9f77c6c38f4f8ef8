"""What torchrun's ranks refused only once the run had started: a global batch the world size
does not divide (a new run, or a resume on another number of GPUs) and float16. The trainer
found them after both models loaded: exit 1, a traceback in launch.log, a new run's directory
left, a resumed run's events ending `failed`. The preflight now refuses them in one line before
any run directory is made or touched, and `python -m kdengine.distributed.launch` (what the
dashboard starts) ends ranks that all refused as one process does: exit 2, no torchrun
traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_tiny_inputs

    return write_tiny_inputs(tmp_path_factory.mktemp("audit7-ranks"))


def _train(made: dict[str, str], run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", made["teacher"], "--student", made["student"], "--data",
            made["data"], "--run-dir", str(run_dir), "--batch-size", "4", "--seq-len", "32",
            "--steps", "2", *extra]


@pytest.mark.parametrize(("world", "extra", "said"), [
    ("3", (), "--batch-size: 4 is the global batch, split over 3 ranks by rows: it must be a "
              "multiple of 3 (e.g. 3), or start 1, 2 or 4 ranks (torchrun --nproc-per-node)"),
    ("2", ("--dtype", "float16"), "--dtype: float16 needs loss scaling"),
])
def test_a_rank_refuses_what_torchrun_cannot_train_before_a_run_directory(
        made: dict[str, str], tmp_path: Path, world: str, extra: tuple[str, ...],
        said: str) -> None:
    """A rank as torchrun starts it (its WORLD_SIZE, RANK; a rank ends by os._exit, so in a
    process of its own)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "WORLD_SIZE": world, "RANK": "0", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-m", "kdengine", *_train(made, run_dir, *extra)],
                          capture_output=True, text=True, timeout=300, env=env)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr[-3000:]
    assert err[0].startswith(f"kdengine train: error: {said}"), err[0]
    assert not run_dir.exists()


def test_a_resume_on_ranks_that_cannot_split_its_batch_is_refused_untouched(
        made: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kdengine", *_train(made, run_dir),
                           "--checkpoint-every", "1"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    # a run stopped before its end: its last checkpoint is step 1 (the final one dropped)
    shutil.rmtree(run_dir / "final")
    events = run_dir / "events.jsonl"
    kept = [line for line in events.read_text().splitlines(keepends=True)
            if '"type":"run_finished"' not in line]
    events.write_text("".join(kept))
    for step in sorted((run_dir / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(step)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    done = subprocess.run([sys.executable, "-m", "kdengine.distributed.launch", "--standalone",
                           "--nproc-per-node", "3", "-m", "kdengine", "train", "--resume",
                           str(run_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("kdengine train:")]
    assert said and all(line.startswith("kdengine train: error: --resume: batch_size in ") and
                        "or start 1, 2 or 4 ranks" in line for line in said), said
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # events, launch.log, config.json untouched
    assert not (run_dir / ".rank-failures").exists()
