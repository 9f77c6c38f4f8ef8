"""Shared test setup: every test gets its own runs dir; the demo teacher is trained once per
session into a session cache (never the user's), so tests touch nothing outside tmp."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kdengine-cache")


@pytest.fixture(autouse=True)
def isolated_engine_dirs(tmp_path: Path, session_cache: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDENGINE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("KDENGINE_CACHE", str(session_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


@pytest.fixture
def engine_cmd() -> list[str]:
    """The engine's CLI as a user runs it (the same interpreter as the tests)."""
    return [sys.executable, "-m", "kdengine"]


def write_byte_tokenizer(directory: Path) -> None:
    """A GPT-2-style byte-level BPE tokenizer with no merges: 256 byte tokens + <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}\n')


def write_tiny_model(directory: Path, *, hidden: int, layers: int, seed: int,
                     vocab: int = 257) -> Path:
    """A real HF-layout Llama-family checkpoint (config.json, model.safetensors, tokenizer)."""
    import torch

    from kdengine.models import Decoder, DecoderConfig, save_decoder

    config = DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                           num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, tie_word_embeddings=True,
                           max_position_embeddings=256)
    model = Decoder(config)
    model.init_weights(torch.Generator().manual_seed(seed), std=0.1)
    save_decoder(model, directory)
    write_byte_tokenizer(directory)
    return directory


TINY_TEXT = "\n".join(
    f"def function_{i}(x):\n    return x * {i} + {i % 7}  # line {i}\n" for i in range(400))


def write_tiny_inputs(directory: Path, *, student_layers: int = 1) -> dict[str, str]:
    """Teacher, student and data for a real run that takes seconds, written into `directory`:
    the values of `kdengine train`'s --teacher, --student and --data."""
    teacher = write_tiny_model(directory / "teacher", hidden=32, layers=2, seed=1)
    student = write_tiny_model(directory / "student", hidden=16, layers=student_layers, seed=2)
    data = directory / "data"
    data.mkdir()
    for i in range(6):
        (data / f"doc{i}.txt").write_text(TINY_TEXT[i * 3000:(i + 1) * 3000 + 2000])
    return {"teacher": str(teacher), "student": str(student), "data": str(data)}


@pytest.fixture
def tiny_run_inputs(tmp_path: Path) -> dict[str, str]:
    return write_tiny_inputs(tmp_path)


def tiny_run_args(inputs: dict[str, str], run_dir: Path, **overrides) -> list[str]:
    values = dict(steps=20, batch_size=4, seq_len=32, lr=3e-3, eval_every=10, eval_batches=2,
                  log_every=1, checkpoint_every=10, temperature=2.0)
    values.update(overrides)
    args = ["train", "--teacher", inputs["teacher"], "--student", inputs["student"],
            "--data", inputs["data"], "--run-dir", str(run_dir)]
    for key, value in values.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


@pytest.fixture
def tiny_args():
    return tiny_run_args
