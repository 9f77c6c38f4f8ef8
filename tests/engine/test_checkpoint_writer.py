"""Checkpoints written in the background (kdengine.checkpoint_writer): the same files as a
synchronous save, training going on while they are written, the step they were taken at kept,
and a write that fails (a full disk) failing the run with no half checkpoint left behind."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest
import torch

import kdengine.checkpoint_writer as writer_module
from kdengine.checkpoint import (
    complete_checkpoints,
    load_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from kdengine.checkpoint_writer import CheckpointWriter
from kdengine.config import RunConfig
from kdengine.events import read_events
from kdengine.loading import load_data, load_student, load_teacher
from kdengine.run import run
from kdengine.runlog import RunLog
from kdengine.stop import RunCancelled, StopSignals
from kdengine.trainer import KDTrainer

WAIT = 120  # seconds a test waits for the writer thread at most (a loaded CI machine)


def tiny_config(inputs: dict[str, str], **overrides) -> RunConfig:
    values = dict(teacher=inputs["teacher"], student=inputs["student"], data=inputs["data"],
                  steps=6, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=1, eval_every=0,
                  eval_batches=1, log_every=1, checkpoint_every=2, temperature=2.0,
                  device="cpu", dtype="float32", seed=3)
    values.update(overrides)
    return RunConfig.from_mapping(values)


def tiny_trainer(config: RunConfig, run_dir: Path, stop: StopSignals | None = None
                 ) -> KDTrainer:
    """A real trainer: the tiny HF-layout teacher and student (tied embeddings), real data."""
    run_dir.mkdir(parents=True)
    log = RunLog(run_dir)
    cpu = torch.device("cpu")
    torch.manual_seed(config.seed)
    teacher, tokenizer = load_teacher(config, cpu, torch.float32, log)
    student = load_student(config, cpu, tokenizer, teacher, log)
    return KDTrainer(config, teacher, student, load_data(config, tokenizer), log, cpu,
                     torch.float32, stop)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_a_background_write_makes_the_same_files_as_a_synchronous_save(
        tiny_run_inputs, tmp_path: Path) -> None:
    trainer = tiny_trainer(tiny_config(tiny_run_inputs), tmp_path / "run")
    for _ in range(2):  # AdamW's moments exist after a step
        trainer.train_step()
    module, state, meta = trainer.student.module, trainer.state(), {"config": {"x": 1}}
    writer = CheckpointWriter(tmp_path / "background")
    background = writer.save(2, module, state, meta)
    synchronous = save_checkpoint(tmp_path / "synchronous", 2, module, state, meta)
    [written] = writer.finished(wait=True)
    assert written.step == 2 and written.path == background and written.write_s > 0
    for name in ("student.safetensors", "meta.json", "trainer.pt"):
        assert (background / name).read_bytes() == (synchronous / name).read_bytes(), name
    assert _same(torch.load(background / "trainer.pt", weights_only=True), state)


def test_training_goes_on_while_a_checkpoint_is_written_and_it_keeps_its_step(
        tiny_run_inputs, tmp_path: Path) -> None:
    config = tiny_config(tiny_run_inputs)
    trainer = tiny_trainer(config, tmp_path / "run")
    started, release = threading.Event(), threading.Event()

    def slow_disk(*args, **kwargs) -> Path:  # the write waits until the test lets it go on
        started.set()
        assert release.wait(WAIT)
        return write_checkpoint(*args, **kwargs)


    trainer.checkpoints = CheckpointWriter(trainer.log.run_dir, write=slow_disk)
    for _ in range(2):
        trainer.train_step()
    at_step_2 = {k: v.clone() for k, v in trainer.student.module.state_dict().items()}
    before_save = time.perf_counter()
    path = trainer.checkpoint()
    assert started.wait(WAIT)
    held_from = time.perf_counter()
    later = [trainer.train_step()["loss"] for _ in range(2)]  # steps 3, 4: the write hangs
    trainer.report_checkpoints()  # a poll, not a wait
    assert not path.exists() and not complete_checkpoints(trainer.log.run_dir)
    assert not [e for e in read_events(trainer.log.events.path) if e["type"] == "checkpoint"]
    assert not torch.equal(trainer.student.module.state_dict()["model.embed_tokens.weight"],
                           at_step_2["model.embed_tokens.weight"])
    released = time.perf_counter()
    release.set()
    trainer.report_checkpoints(wait=True)
    [event] = [e for e in read_events(trainer.log.events.path) if e["type"] == "checkpoint"]
    assert event["step"] == 2 and event["path"] == str(path)
    # the write's time holds the whole hold; the loop's stall ended before the release (it
    # trained steps 3 and 4 meanwhile). Bounds from the test's own clock, not one number
    # against the other: on a loaded machine the snapshot can take longer than a short hold.
    assert event["write_s"] >= released - held_from - 1e-3
    assert 0 <= event["stall_s"] <= released - before_save + 1e-3
    assert "checkpoint saved at step 2: " in (trainer.log.run_dir / "launch.log").read_text()

    # the checkpoint holds step 2, not what steps 3 and 4 made of the same tensors: a trainer
    # resumed from it trains steps 3 and 4 to the very same losses
    resumed = tiny_trainer(config, tmp_path / "resumed")
    state, meta = load_checkpoint(path, resumed.student.module)
    assert meta["step"] == state["step"] == 2
    assert _same(dict(resumed.student.module.state_dict()), dict(at_step_2))
    resumed.restore(state)
    assert [resumed.train_step()["loss"] for _ in range(2)] == later


def test_a_full_disk_in_the_background_fails_the_run_and_leaves_no_half_checkpoint(
        tiny_run_inputs, tmp_path: Path, monkeypatch) -> None:
    class FullDisk:  # pickled into trainer.pt after student.safetensors is written: no space
        def __reduce__(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    def filling_at_step_4(run_dir, step, weights, state, meta, **kwargs) -> Path:
        if step == 4:
            state = {**state, "full": FullDisk()}
        return write_checkpoint(run_dir, step, weights, state, meta, **kwargs)

    monkeypatch.setattr(writer_module, "write_checkpoint", filling_at_step_4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run(tiny_config(tiny_run_inputs, steps=12), run_dir)
    assert result.status == "failed" and result.exit_code == 1 and result.stage == "train"
    assert result.error.startswith("disk full: writing the checkpoint of step 4 into ")
    assert "the last good checkpoint step-00000002 is intact" in result.error
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002"]
    events = read_events(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2]
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "failed"
    assert not (run_dir / "final").exists()


def test_a_stop_during_a_write_ends_the_run_with_that_checkpoint_whole(
        tiny_run_inputs, tmp_path: Path) -> None:
    written = threading.Event()

    class StopSeenDuringTheWrite(StopSignals):
        def check(self) -> None:
            if self.received:  # the loop sees the stop: only now may the write go on
                written.set()
            super().check()

    stop = StopSeenDuringTheWrite()
    trainer = tiny_trainer(tiny_config(tiny_run_inputs, steps=1000), tmp_path / "run", stop)

    def signalled_disk(*args, **kwargs) -> Path:  # a SIGTERM comes while the write is going
        stop.received = "SIGTERM"
        assert written.wait(WAIT)
        return write_checkpoint(*args, **kwargs)

    trainer.checkpoints = CheckpointWriter(trainer.log.run_dir, write=signalled_disk)
    with pytest.raises(RunCancelled):
        trainer.run(evaluate_start=False)
    assert trainer.step < 1000
    # the run did not end before the write did: the checkpoint is whole and reported
    assert [p.name for p in complete_checkpoints(trainer.log.run_dir)] == ["step-00000002"]
    assert not list((trainer.log.run_dir / "checkpoints").glob(".tmp-*"))
    assert [e["step"] for e in read_events(trainer.log.events.path)
            if e["type"] == "checkpoint"] == [2]


def test_the_stager_moves_every_dtype_and_shape_bit_for_bit_in_chunks_of_any_size():
    # the chunking that moves a GPU snapshot to the host through two small pinned buffers, run
    # on the CPU (no stream): whole chunks, a ragged last one, one byte, nothing, a 0-d tensor
    gen = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(37, 11, generator=gen),
             "h": torch.randn(5, 3, generator=gen).to(torch.bfloat16),
             "t": torch.randn(6, 4, generator=gen).t(),  # not contiguous
             "step": torch.tensor(7.0), "mask": torch.rand(9, generator=gen) > 0.5,
             "ids": torch.arange(13, dtype=torch.int64), "none": torch.empty(0, 4),
             "nested": [{"m": torch.randn(3, generator=gen)}, 4, "text"]}
    for chunk in (1, 7, 64, 1 << 20):
        host = writer_module.Stager(chunk).tree(state, None)
        assert host["nested"][1:] == [4, "text"]
        for key in ("w", "h", "t", "step", "mask", "ids", "none"):
            assert host[key].dtype == state[key].dtype and host[key].shape == state[key].shape
            assert torch.equal(host[key], state[key]), (chunk, key)
        assert torch.equal(host["nested"][0]["m"], state["nested"][0]["m"])
        assert host["w"].untyped_storage().data_ptr() != state["w"].untyped_storage().data_ptr()
