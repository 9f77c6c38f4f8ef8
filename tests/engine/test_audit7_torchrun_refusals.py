"""What torchrun's ranks refused only once the run had started: a global batch the world size
does not divide (a new run, or a resume on another number of GPUs) and float16. The trainer
found them after both models loaded: exit 1, a traceback in launch.log, a new run's directory
left, a resumed run's events ending `failed`. The preflight now refuses them in one line before
any run directory is made or touched, and `python -m kdengine.distributed.launch` (what the
dashboard starts) ends ranks that all refused as one process does: exit 2, no torchrun
traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_tiny_inputs

    return write_tiny_inputs(tmp_path_factory.mktemp("audit7-ranks"))


def _in_process(*argv: str) -> tuple[int, str]:
    """`kdengine argv` through kdengine.cli.main in this process, as one process runs it (no
    torchrun variables; on one torch thread, as the engines here): exit code and stderr. A
    one-process run checks nothing a new interpreter's torch import would add."""
    import contextlib
    import io

    import torch

    from kdengine.cli import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads, err = torch.get_num_threads(), io.StringIO()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code, err.getvalue()


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


@pytest.fixture(scope="module")
def stopped_run(made: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-process run stopped before its end: its last complete checkpoint is step 1."""
    run_dir = tmp_path_factory.mktemp("audit7-stopped") / "run"
    code, err = _in_process(*_train(made, run_dir), "--checkpoint-every", "1")
    assert code == 0, err
    shutil.rmtree(run_dir / "final")
    events = run_dir / "events.jsonl"
    kept = [line for line in events.read_text().splitlines(keepends=True)
            if '"type":"run_finished"' not in line]
    events.write_text("".join(kept))
    for step in sorted((run_dir / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(step)
    return run_dir


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def test_a_resume_on_ranks_that_cannot_split_its_batch_is_refused_untouched(
        stopped_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run, run_dir)
    # as torchrun's ranks mark the checkpoints they write (DCP shards): the refusal comes from
    # the run's config and this mark alone, before any shard is read
    meta = run_dir / "checkpoints" / "step-00000001" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "sharded": True,
                                "world_size": 2}))
    before = _files(run_dir)
    done = subprocess.run([sys.executable, "-m", "kdengine.distributed.launch", "--standalone",
                           "--nproc-per-node", "3", "-m", "kdengine", "train", "--resume",
                           str(run_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("kdengine train:")]
    # said once, by the first rank, not once by each of the three (kdengine.cli._say_refusal)
    assert len(said) == 1, said
    assert said[0].startswith("kdengine train: error: --resume: batch_size in ") and \
        "or start 1, 2 or 4 ranks" in said[0], said
    assert _files(run_dir) == before  # events, launch.log, config.json untouched
    assert not (run_dir / ".rank-failures").exists()


def test_a_one_process_checkpoint_resumed_under_torchrun_is_refused_before_the_models_load(
        stopped_run: Path, tmp_path: Path) -> None:
    """Its ranks read DCP shards only: the trainer refused it once both models had loaded;
    the preflight now does, from the checkpoint's meta.json."""
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run, run_dir)
    before = _files(run_dir)
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-m", "kdengine", "train", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=300, env=env)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr[-3000:]
    latest = run_dir / "checkpoints" / "step-00000001"
    assert err[0] == (f"kdengine train: error: --resume: {latest} was written by a one-process "
                      f"run; resume it with one process (`kdengine train --resume {run_dir}`), "
                      "not under torchrun")
    assert _files(run_dir) == before
    # and one process resumes it
    code, err = _in_process("train", "--resume", str(run_dir))
    assert code == 0, err[-3000:]


_RANK = """
import sys, time
import kdengine.cli as cli
cli.OTHER_RANK_REFUSAL_WAIT_S = float(sys.argv[1])
sleep = time.sleep
def noted(seconds):
    print("waiting", flush=True)
    sleep(seconds)
time.sleep = noted
sys.exit(cli.main(["train", "--steps", "many"]))
"""


def _other_rank(wait_s: float) -> subprocess.Popen[str]:
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
           "TORCHELASTIC_RUN_ID": "none"}  # a worker torchrun started
    return subprocess.Popen([sys.executable, "-c", _RANK, str(wait_s)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_rank_that_refused_alone_says_why_after_waiting_for_its_first_rank() -> None:
    rank = _other_rank(0.2)
    out, err = rank.communicate(timeout=120)
    assert rank.returncode == 2 and out == "waiting\n", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdengine train: error: ") and \
        "--steps" in lines[0] and "'many'" in lines[0], err


def test_a_rank_ended_by_torchrun_while_it_waits_says_nothing() -> None:
    """Its first rank refused and exited; torchrun stops the others (SIGTERM)."""
    rank = _other_rank(120)
    assert rank.stdout.readline() == "waiting\n"
    rank.send_signal(signal.SIGTERM)
    assert rank.wait(timeout=60) == -signal.SIGTERM
    assert rank.stderr.read() == ""
