"""How a run fails, through the real CLI: a failure inside a run is one line on the terminal with
its traceback in launch.log; --resume with nothing to continue refuses and touches nothing; a
file system too small for the checkpoints refuses before a run directory exists; a disk that
fills up while saving is one line with the numbers and leaves the last good checkpoint whole.

The disk tests run on real, small tmpfs mounts (they need root, as in the CI sandbox; elsewhere
they are skipped with the reason) and fill them with a real file, as another process would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdengine.checkpoint import complete_checkpoints, load_checkpoint
from kdengine.diskspace import model_footprint, peak_need, saves_left
from kdengine.events import read_events
from kdengine.models import load_decoder

TIMEOUT = 240  # one tiny run takes seconds; generous for a loaded 2-core machine

# The real CLI, with one addition: just before the save named by KD_FILL_BEFORE (a checkpoint's
# step, or "final"), a file fills the run's file system up to KD_LEAVE free bytes.
FILLING_CLI = r"""
import os, shutil, sys
import kdengine.checkpoint_writer as W
import kdengine.loading as L

where, leave = os.environ["KD_FILL_BEFORE"], int(os.environ["KD_LEAVE"])
filler = os.environ["KD_FILLER"]

def fill(run_dir):
    free = shutil.disk_usage(run_dir).free
    try:
        with open(filler, "wb") as fh:
            fh.write(b"\0" * max(free - leave, 0))
    except OSError:
        pass

write_checkpoint, save_final = W.write_checkpoint, L.save_final_student
def filling_checkpoint(run_dir, step, *args, **kwargs):
    if where == str(step):
        fill(run_dir)
    return write_checkpoint(run_dir, step, *args, **kwargs)
def filling_final(config, student, run_dir, tokenizer):
    if where == "final":
        fill(run_dir)
    return save_final(config, student, run_dir, tokenizer)
W.write_checkpoint, L.save_final_student = filling_checkpoint, filling_final
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""


# The real CLI, its first training step raising as a bug in the engine (or a CUDA error) would:
# a failure of the code, which keeps its traceback (a NaN loss is the numbers' failure, said in
# one line with none: test_audit13_lifecycle_nan)
CRASHING_CLI = r"""
import sys
import kdengine.trainer as T
def crashing_step(self, *args, **kwargs):
    raise RuntimeError("an engine bug in the training step")
T.KDTrainer.queue_step = crashing_step
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""
CRASH = "RuntimeError: an engine bug in the training step"


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every path under `directory` with its size and mtime (ns)."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


def _nan_student(inputs: dict[str, str]) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_nan_student

    return write_nan_student(inputs)


@pytest.fixture
def small_fs(tmp_path: Path):
    """make(bytes) -> a directory on a fresh tmpfs of that size."""
    mounts: list[Path] = []

    def make(size: int) -> Path:
        where = tmp_path / f"fs{len(mounts)}"
        where.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"a small tmpfs cannot be mounted here ({out.stderr.strip()}); "
                        "these tests need root")
        mounts.append(where)
        return where

    yield make
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _in_process(capsys: pytest.CaptureFixture[str], argv: list[str]) -> subprocess.CompletedProcess:
    """`kdengine argv` through kdengine.cli.main in this process (a run's or a refusal's exit
    code, stdout and stderr, as _run gives them, without a new interpreter's torch import; the
    worker's SIGINT/SIGTERM handlers are put back). A real process of each family stays: the
    failing run (test_a_run_failing_inside_...), the resume refusal (..._the_run_still_goes_...)
    and the disk-full run (FILLING_CLI)."""
    import signal

    import torch

    from kdengine.cli import main

    capsys.readouterr()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the engine processes (OMP_NUM_THREADS=1, tests/conftest.py)
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    finally:
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("kdengine train: error: ")
    return lines[0]


def test_a_run_failing_inside_prints_one_line_and_keeps_the_traceback_in_launch_log(
        tmp_path, tiny_run_inputs, tiny_args, engine_cmd) -> None:
    run_dir = tmp_path / "run"
    out = _run([sys.executable, "-c", CRASHING_CLI, *tiny_args(tiny_run_inputs, run_dir)])
    assert out.returncode == 1
    line = _one_error_line(out)
    assert line == ("kdengine train: error: [train] failed: an engine bug in the training step "
                    f"(traceback in {run_dir / 'launch.log'})")
    assert "failed" not in out.stdout and "ERROR" not in out.stdout  # progress lines only
    log = (run_dir / "launch.log").read_text()
    assert log.count("Traceback (most recent call last)") == 1
    assert "[train] failed" in log and f"ERROR: {CRASH}" in log
    events = read_events(run_dir / "events.jsonl")
    error = next(e for e in events if e["type"] == "log" and e.get("level") == "error")
    assert CRASH in error["traceback"]
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "failed"


def test_a_failure_under_a_launcher_writes_its_traceback_into_launch_log_once(
        tmp_path, tiny_run_inputs, tiny_args, engine_cmd) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "launch.log", "ab") as log:  # as kdtui's local launcher starts it
        code = subprocess.run([sys.executable, "-c", CRASHING_CLI,
                               *tiny_args(tiny_run_inputs, run_dir)], stdout=log,
                              stderr=subprocess.STDOUT, timeout=TIMEOUT).returncode
    assert code == 1
    text = (run_dir / "launch.log").read_text()
    assert text.count("Traceback (most recent call last)") == 1
    assert text.count(f"ERROR: {CRASH}") == 1
    assert text.count("kdengine train: error: [train] failed: an engine bug") == 1


def test_resume_without_a_complete_checkpoint_refuses_and_changes_nothing(
        tmp_path, tiny_run_inputs, tiny_args, capsys) -> None:
    run_dir = tmp_path / "run"
    inputs = {**tiny_run_inputs, "student": _nan_student(tiny_run_inputs)}
    assert _in_process(capsys, tiny_args(inputs, run_dir)).returncode == 1  # stops at step 0
    before = _snapshot(run_dir)
    out = _in_process(capsys, ["train", "--resume", str(run_dir)])
    assert out.returncode == 2
    line = _one_error_line(out)
    assert line.startswith(f"kdengine train: error: --resume: {run_dir} has no complete "
                           "checkpoint to continue from (it stopped at step")
    assert f"--config {run_dir / 'config.json'} --run-dir NEW_DIR" in line
    assert _snapshot(run_dir) == before


def test_resume_while_the_run_still_goes_refuses_and_the_run_goes_on(
        tmp_path, tiny_run_inputs, tiny_args, engine_cmd) -> None:
    import signal
    import time

    run_dir = tmp_path / "run"
    engine = subprocess.Popen([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir, steps=100000,
                                                       checkpoint_every=2, eval_every=100000)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT  # the first complete checkpoint: resumable
        while not any(run_dir.glob("checkpoints/step-*/meta.json")):
            assert engine.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        out = _run([*engine_cmd, "train", "--resume", str(run_dir)])
        assert out.returncode == 2
        line = _one_error_line(out)
        assert f"--resume: {run_dir} is being trained by another engine right now" in line
        assert engine.poll() is None  # the run goes on, alone in its directory
        started = [e for e in read_events(run_dir / "events.jsonl")
                   if e["type"] == "run_started"]
        assert len(started) == 1
    finally:
        os.killpg(engine.pid, signal.SIGTERM)
        engine.wait(timeout=TIMEOUT)


def test_resume_of_a_completed_run_refuses_and_changes_nothing(
        tmp_path, tiny_run_inputs, tiny_args, capsys) -> None:
    run_dir = tmp_path / "run"
    assert _in_process(capsys, tiny_args(tiny_run_inputs, run_dir, steps=4)).returncode == 0
    before = _snapshot(run_dir)
    out = _in_process(capsys, ["train", "--resume", str(run_dir)])
    assert out.returncode == 2
    line = _one_error_line(out)
    assert f"--resume: {run_dir} already completed (4 steps)" in line
    assert f"--student {run_dir / 'final'}" in line
    assert _snapshot(run_dir) == before


def test_a_file_system_too_small_for_the_checkpoints_refuses_before_a_run_dir_exists(
        tiny_run_inputs, tiny_args, small_fs, capsys) -> None:
    fs = small_fs(256 * 1024)  # the tiny student's checkpoints need about 1 MB
    run_dir = fs / "run"
    for check in ([], ["--check"]):  # the remote check stage runs --check on the GPU box
        out = _in_process(capsys, [*tiny_args(tiny_run_inputs, run_dir), *check])
        assert out.returncode == 2
        line = _one_error_line(out)
        assert line.startswith(f"kdengine train: error: --run-dir: {run_dir}'s file system has ")
        assert "free, the run needs" in line and "pick another --run-dir" in line
        assert not run_dir.exists()


def test_tight_free_space_warns_with_the_numbers_and_the_run_goes_on(
        tiny_run_inputs, tiny_args, small_fs, capsys) -> None:
    footprint = model_footprint(Path(tiny_run_inputs["student"]))
    need, _ = peak_need(footprint, saves_left(20, 10, 0))
    fs = small_fs(int(need * 1.5) // 4096 * 4096 + 4096)  # more than needed, less than twice
    run_dir = fs / "run"
    out = _in_process(capsys, tiny_args(tiny_run_inputs, run_dir))
    assert out.returncode == 0, out.stderr
    warnings = [e["message"] for e in read_events(run_dir / "events.jsonl")
                if e["type"] == "log" and e.get("level") == "warning"]
    assert any(w.startswith("disk space is tight: ") and "the run needs up to" in w
               for w in warnings), warnings
    assert "WARNING: disk space is tight" in out.stdout


@pytest.mark.parametrize("leave, failing_write", [
    (16 * 1024, "No space left on device (os error 28)"),  # safetensors, the weights
    # the weights (43 kB) fit, trainer.pt (76 kB) does not: torch.save's
    # `[enforce fail at inline_container.cc] unexpected pos`, as the GPU box reported it
    (60 * 1024, "unexpected pos"),
])
def test_a_disk_full_at_a_checkpoint_is_one_line_and_the_last_good_checkpoint_is_intact(
        tiny_run_inputs, tiny_args, small_fs, leave, failing_write, capsys) -> None:
    fs = small_fs(8 * 1024 * 1024)
    run_dir, filler = fs / "run", fs / "someone-elses-file"
    env = {"KD_FILL_BEFORE": "20", "KD_LEAVE": str(leave), "KD_FILLER": str(filler)}
    args = tiny_args(tiny_run_inputs, run_dir, steps=30)
    out = _run([sys.executable, "-c", FILLING_CLI, *args], env=_env(env))
    assert out.returncode == 1, out.stdout + out.stderr
    line = _one_error_line(out)
    assert line.startswith("kdengine train: error: [train] failed: disk full: writing the "
                           f"checkpoint of step 20 into {run_dir / 'checkpoints'} needs ")
    assert "free; the last good checkpoint step-00000010 is intact" in line
    # the half-written checkpoint is gone, the one before loads
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000010"]
    model = load_decoder(tiny_run_inputs["student"])
    state, meta = load_checkpoint(run_dir / "checkpoints" / "step-00000010", model)
    assert meta["step"] == state["step"] == 10
    log = (run_dir / "launch.log").read_text()
    assert "Traceback (most recent call last)" in log and failing_write in log
    # space freed, the run continues from it and completes
    filler.unlink()
    again = _in_process(capsys, ["train", "--resume", str(run_dir)])
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout and "step-00000010" in again.stdout


def test_a_disk_full_at_the_final_student_is_one_line_and_the_checkpoints_are_intact(
        tiny_run_inputs, tiny_args, small_fs) -> None:
    fs = small_fs(8 * 1024 * 1024)
    run_dir, filler = fs / "run", fs / "someone-elses-file"
    env = {"KD_FILL_BEFORE": "final", "KD_LEAVE": str(8 * 1024), "KD_FILLER": str(filler)}
    out = _run([sys.executable, "-c", FILLING_CLI, *tiny_args(tiny_run_inputs, run_dir)],
               env=_env(env))
    assert out.returncode == 1, out.stdout + out.stderr
    line = _one_error_line(out)
    assert line.startswith("kdengine train: error: [final_eval] failed: disk full: writing the "
                           f"final student into {run_dir} needs ")
    assert "the last good checkpoint step-00000020 is intact" in line
    assert not (run_dir / "final").exists() and not (run_dir / ".tmp-final").exists()
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step-00000010", "step-00000020"]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    finished = read_events(run_dir / "events.jsonl")[-1]
    assert finished["type"] == "run_finished" and finished["stage"] == "final_eval"
    assert json.loads((run_dir / "checkpoints" / "step-00000020" / "meta.json").read_text())[
        "step"] == 20


def test_a_torch_save_on_a_full_disk_is_recognised_as_a_full_disk(small_fs) -> None:
    from kdengine.diskspace import is_disk_full

    fs = small_fs(64 * 1024)
    with pytest.raises(RuntimeError) as caught:
        torch.save({"x": torch.zeros(100_000)}, fs / "x.pt")
    assert is_disk_full(caught.value), caught.value
