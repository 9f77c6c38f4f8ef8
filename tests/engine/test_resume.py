"""Exact resume through the real CLI: a run killed with SIGKILL (between steps, or in the middle
of writing a checkpoint) and continued with `kdengine train --resume RUN_DIR` produces the same
losses and the same final weights as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdengine.checkpoint import latest_checkpoint, load_checkpoint
from kdengine.events import read_events
from kdengine.models import Decoder, DecoderConfig, load_decoder, save_decoder

STEPS, EVERY = 24, 8
# A wrapper around the real CLI that SIGKILLs its own process at a chosen moment: before
# training step KILL_AT (once the checkpoints saved before it, written in the background, are
# whole), or halfway through writing the checkpoint of step KILL_AT.
KILLER = r"""
import os, signal, sys
import torch
import kdengine.trainer as T
kill_at, mode = int(os.environ["KD_KILL_AT"]), os.environ["KD_KILL_MODE"]
if mode == "step":
    train_step = T.KDTrainer.queue_step
    def killing_step(self, batch=None, **queue):
        if self.step + 1 == kill_at:
            self.report_checkpoints(wait=True)  # the checkpoints saved so far, whole on disk
            os.kill(os.getpid(), signal.SIGKILL)
        return train_step(self, batch, **queue)
    T.KDTrainer.queue_step = killing_step
else:
    save = torch.save
    def killing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == kill_at:
            with open(f, "wb") as fh:  # the weights are written; trainer.pt is half written
                fh.write(b"PK\x03\x04 half a file")
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, f, *args, **kwargs)
    torch.save = killing_save
from kdengine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _byte_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}\n')


def _model(directory: Path, hidden: int, layers: int, seed: int) -> str:
    config = DecoderConfig(vocab_size=257, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, tie_word_embeddings=True)
    model = Decoder(config)
    model.init_weights(torch.Generator().manual_seed(seed), std=0.1)
    save_decoder(model, directory)
    _byte_tokenizer(directory)
    return str(directory)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("resume-inputs")
    data = root / "data"
    data.mkdir()
    for i in range(8):
        (data / f"doc{i}.txt").write_text("\n".join(
            f"def f_{i}_{j}(x):\n    return x * {j} + {i}" for j in range(120)))
    return {"teacher": _model(root / "teacher", 32, 2, 1),
            "student": _model(root / "student", 16, 1, 2), "data": str(data)}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1"}


def _train(argv: list[str], kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = _env()
    if kill:
        env.update(KD_KILL_MODE=kill[0], KD_KILL_AT=str(kill[1]))
        cmd = [sys.executable, "-c", KILLER, *argv]
    else:
        cmd = [sys.executable, "-m", "kdengine", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _args(inputs: dict[str, str], run_dir: Path) -> list[str]:
    return ["train", "--teacher", inputs["teacher"], "--student", inputs["student"],
            "--data", inputs["data"], "--run-dir", str(run_dir), "--steps", str(STEPS),
            "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3", "--warmup-steps", "4",
            "--eval-every", str(EVERY), "--eval-batches", "2", "--log-every", "1",
            "--checkpoint-every", str(EVERY), "--device", "cpu", "--seed", "5"]


def _losses(run_dir: Path) -> dict[int, float]:
    """Loss of every step; a step trained twice (before a kill and after the resume) keeps the
    resumed run's value, the one that counts."""
    return {e["step"]: e["loss"] for e in read_events(run_dir / "events.jsonl")
            if e["type"] == "step"}


def _evals(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["val_loss"] for e in read_events(run_dir / "events.jsonl")
            if e["type"] == "eval"}


@pytest.fixture(scope="module")
def uninterrupted(inputs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    out = _train(_args(inputs, run_dir))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return run_dir


def _resume(run_dir: Path) -> None:
    out = _train(["train", "--resume", str(run_dir)])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _assert_same_run(resumed: Path, reference: Path) -> None:
    losses, expected = _losses(resumed), _losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses == expected  # exact: float equality, not approx
    assert _evals(resumed) == _evals(reference)
    a = load_file(str(resumed / "final" / "model.safetensors"))
    b = load_file(str(reference / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_killed_between_steps_resumes_to_the_same_losses_and_weights(
        inputs: dict[str, str], uninterrupted: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _train(_args(inputs, run_dir), kill=("step", 13))
    assert out.returncode == -9, out.stderr[-2000:]
    assert latest_checkpoint(run_dir).name == "step-00000008"
    # step 12's numbers are read after step 13's backward is queued (the overlapped loop), so
    # the kill loses its event; the resume repeats it from the step-8 checkpoint
    assert max(_losses(run_dir)) == 11 and not (run_dir / "final").exists()
    _resume(run_dir)
    started = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "run_started"]
    assert [e["resumed_from"] for e in started] == [None, 8]
    _assert_same_run(run_dir, uninterrupted)


def test_kill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_one_loadable(
        inputs: dict[str, str], uninterrupted: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _train(_args(inputs, run_dir), kill=("checkpoint", 16))
    assert out.returncode == -9, out.stderr[-2000:]
    checkpoints = run_dir / "checkpoints"
    # the write really was cut off: its temporary directory holds the weights, not the rest
    partial = list(checkpoints.glob(".tmp-step-00000016-*"))
    assert len(partial) == 1 and (partial[0] / "student.safetensors").exists()
    assert not (partial[0] / "meta.json").exists()
    previous = latest_checkpoint(run_dir)
    assert previous is not None and previous.name == "step-00000008"
    student = load_decoder(inputs["student"])
    state, meta = load_checkpoint(previous, student)
    assert state["step"] == meta["step"] == 8 and state["data"]["next_step"] == 9
    _resume(run_dir)
    assert not list(checkpoints.glob(".tmp-*"))  # the next save swept the torn write away
    _assert_same_run(run_dir, uninterrupted)


def test_final_student_is_hf_layout_that_transformers_loads(uninterrupted: Path,
                                                            inputs: dict[str, str]) -> None:
    transformers = pytest.importorskip("transformers")
    final = uninterrupted / "final"
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert json.loads((final / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"]
    ids = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(0))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        final, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ours = load_decoder(final).logits(ids)
        ref = theirs(ids).logits
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-4
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(final / "tokenizer.json"))
    assert tok.decode(tok.encode("def f(x):")) == "def f(x):"


def test_resume_refuses_a_checkpoint_whose_data_changed(inputs: dict[str, str],
                                                        tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(inputs["data"], data)
    run_dir = tmp_path / "run"
    out = _train(_args({**inputs, "data": str(data)}, run_dir), kill=("step", 10))
    assert out.returncode == -9
    (data / "doc0.txt").write_text((data / "doc0.txt").read_text().replace("x *", "y *"))
    out = _train(["train", "--resume", str(run_dir)])
    assert out.returncode == 2  # before any model loads (kdengine.resume.check_same_text)
    assert f"the text of {data} is not the one {run_dir} trained on" in out.stderr
