"""Models by hub repo id through huggingface_hub's own cache (HF_HUB_OFFLINE=1, no network), a
whole distillation end to end with its verdict, and the model-pairing rules: one shared
tokenizer, a padded teacher vocab trimmed (never zero-padded), no silent teacher == student."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdengine.config import ConfigError, RunConfig
from kdengine.events import read_events
from kdengine.losses import KDLossSpec, fused_kd_loss
from kdengine.models import Decoder, config_from_hf, load_decoder, save_decoder
from kdengine.sources import check_sources, resolve_model_dir

TEXT = "\n".join(f"def add_{i}(a, b):\n    return a + b * {i % 9}  # sum {i}" for i in range(300))


def _tokenizer(directory: Path, vocab: int = 280, text: str = TEXT) -> int:
    """A byte-level BPE trained here on `text`; returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text.splitlines(), trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}\n')
    return tok.get_vocab_size()


def _qwen2(directory: Path, vocab: int, hidden: int, layers: int, seed: int,
           tokenizer_from: Path) -> Path:
    """A tiny Qwen2-family checkpoint (q/k/v bias, tied embeddings) with the given tokenizer."""
    hf = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": vocab,
          "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
          "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True,
          "rope_theta": 1e6, "max_position_embeddings": 256, "eos_token_id": 0}
    model = Decoder(config_from_hf(hf))
    model.init_weights(torch.Generator().manual_seed(seed), std=0.1)
    save_decoder(model, directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tokenizer_from / name, directory / name)
    return directory


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A local hub cache with kd-test/teacher (vocab padded to 320) and kd-test/student (vocab
    288), sharing one 280-token tokenizer; HF_HUB_OFFLINE=1."""
    tok_dir = tmp_path / "tok"
    n_tokens = _tokenizer(tok_dir)
    teacher = _qwen2(tmp_path / "src-teacher", 320, 48, 2, 1, tok_dir)
    student = _qwen2(tmp_path / "src-student", 288, 24, 1, 2, tok_dir)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import offline_hub, put_in_hub_cache

    cache = tmp_path / "hub"
    commits = {rid: put_in_hub_cache(cache, rid, src)
               for rid, src in (("kd-test/teacher", teacher), ("kd-test/student", student))}
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"part{i}.txt").write_text(TEXT[i * 2500:(i + 1) * 2500 + 1500])
    env = offline_hub(monkeypatch, cache, tmp_path / "hf-home")
    return {"cache": cache, "commits": commits, "data": str(data), "env": env,
            "n_tokens": n_tokens, "tok_dir": tok_dir}


def test_the_cache_layout_is_huggingface_hubs_own(hub: dict) -> None:
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    info = scan_cache_dir(hub["cache"])
    assert not info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {"kd-test/teacher", "kd-test/student"}
    revision = next(iter(repos["kd-test/teacher"].revisions))
    assert revision.commit_hash == hub["commits"]["kd-test/teacher"]
    assert {f.file_name for f in revision.files} >= {"config.json", "model.safetensors",
                                                     "tokenizer.json"}
    assert try_to_load_from_cache("kd-test/teacher", "config.json")


def test_repo_id_resolves_through_the_cache_offline(hub: dict) -> None:
    lines: list[str] = []
    path = resolve_model_dir("kd-test/teacher", "teacher", lines.append)
    assert path.name == hub["commits"]["kd-test/teacher"]
    assert json.loads((path / "config.json").read_text())["vocab_size"] == 320
    assert "local hub cache" in lines[0]


def test_repo_id_missing_from_the_cache_offline_is_a_clear_error(hub: dict) -> None:
    config = RunConfig(teacher="kd-test/absent", student="kd-test/student", data=hub["data"])
    with pytest.raises(ConfigError) as info:
        check_sources(config)
    assert info.value.field == "teacher"
    assert "not in the local hub cache" in info.value.message
    assert "HF_HUB_OFFLINE=1" in info.value.message
    with pytest.raises(ConfigError, match="not in the local hub cache"):
        resolve_model_dir("kd-test/absent", "teacher")


def test_distillation_through_repo_ids_end_to_end_with_a_passing_verdict(
        hub: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--teacher", "kd-test/teacher", "--student", "kd-test/student",
            "--data", hub["data"], "--run-dir", str(run_dir), "--steps", "40",
            "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3", "--temperature", "2",
            "--eval-every", "20", "--eval-batches", "2", "--log-every", "5",
            "--checkpoint-every", "20", "--device", "cpu"]
    env = {**os.environ, **hub["env"], "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "kdengine", *args], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (run_dir / "launch.log").read_text()
    assert "kd-test/teacher from the local hub cache" in log
    assert "teacher vocab 320 > student vocab 288" in log and "dropped" in log
    events = read_events(run_dir / "events.jsonl")
    verdict = next(e for e in events if e["type"] == "verdict")
    assert verdict["status"] == "pass", verdict
    final = run_dir / "final"
    assert json.loads((final / "config.json").read_text())["vocab_size"] == 288
    assert (final / "tokenizer.json").read_bytes() == (hub["tok_dir"] / "tokenizer.json")\
        .read_bytes()
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        final, dtype=torch.float32, attn_implementation="eager").eval()
    tok = transformers.AutoTokenizer.from_pretrained(final)
    ids = torch.tensor([tok.encode("def add_7(a, b):")])
    with torch.no_grad():
        ref, ours = theirs(ids).logits, load_decoder(final).logits(ids)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-4


def test_padded_teacher_vocab_is_dropped_never_zero_padded() -> None:
    """152064 vs 151936 in miniature: the teacher's extra logits must not take probability mass.
    Huge padding rows change the loss if they are kept; dropping them gives exactly the loss of
    a teacher that never had them."""
    gen = torch.Generator().manual_seed(0)
    s_hidden, t_hidden = torch.randn(2, 6, 16, generator=gen), torch.randn(2, 6, 16, generator=gen)
    s_head, t_head = torch.randn(100, 16, generator=gen), torch.randn(100, 16, generator=gen)
    padded = torch.cat([t_head, 50 * torch.randn(28, 16, generator=gen)])
    labels = torch.randint(0, 100, (2, 6), generator=gen)
    spec = KDLossSpec(temperature=2.0, alpha=0.3)
    trimmed = fused_kd_loss(s_hidden, s_head, t_hidden, t_head, labels, spec, 4)
    dropped = fused_kd_loss(s_hidden, s_head, t_hidden, padded, labels, spec, 4)
    assert torch.equal(trimmed.loss, dropped.loss)
    # zero-padding the student instead would be a different (wrong) loss
    zero_padded = torch.cat([s_head, torch.zeros(28, 16)])
    wrong = fused_kd_loss(s_hidden, zero_padded, t_hidden, padded, labels, spec, 4)
    assert not torch.allclose(wrong.loss, trimmed.loss)


def _run_config(hub: dict, **values) -> RunConfig:
    return RunConfig.from_mapping({"teacher": "kd-test/teacher", "student": "kd-test/student",
                                   "data": hub["data"], **values})


def test_teacher_equal_to_student_is_refused_unless_allowed(hub: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="same model as the teacher"):
        _run_config(hub, student="kd-test/teacher").validate()
    # the same weights under another name are the same model too
    copy = tmp_path / "teacher-copy"
    shutil.copytree(resolve_model_dir("kd-test/teacher", "teacher"), copy)
    with pytest.raises(ConfigError, match="holds the same weights as the teacher"):
        check_sources(_run_config(hub, student=str(copy)))
    check_sources(_run_config(hub, student=str(copy), allow_same_teacher_student=True))
    _run_config(hub, student="kd-test/teacher", allow_same_teacher_student=True).validate()


def test_teacher_equal_to_student_is_refused_by_the_cli_before_any_run_dir(
        hub: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, **hub["env"]}
    out = subprocess.run([sys.executable, "-m", "kdengine", "train", "--teacher",
                          "kd-test/teacher", "--student", "kd-test/teacher", "--data",
                          hub["data"], "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2
    assert "allow-same-teacher-student" in out.stderr or "allow_same_teacher_student" in \
        out.stderr
    assert not run_dir.exists()


def test_different_tokenizers_are_a_clear_error(hub: dict, tmp_path: Path) -> None:
    from kdengine.loading import check_same_tokenizer
    from kdengine.tokenizer import load_tokenizer

    other = tmp_path / "other-tok"
    _tokenizer(other, text=TEXT.upper())
    a = load_tokenizer(resolve_model_dir("kd-test/teacher", "teacher"), "teacher")
    b = load_tokenizer(other, "student")
    with pytest.raises(ConfigError) as info:
        check_same_tokenizer(a, b)
    assert info.value.field == "student"
    assert "does not share the teacher's tokenizer" in info.value.message
    assert "vocabulary differ" in info.value.message


def test_student_vocab_larger_than_the_teachers_is_a_clear_error(hub: dict,
                                                                 tmp_path: Path) -> None:
    from kdengine.loading import load_student, load_teacher

    big = _qwen2(tmp_path / "big-student", 400, 24, 1, 3, hub["tok_dir"])

    class Log:
        def line(self, text: str) -> None:
            pass

    config = _run_config(hub, student=str(big))
    teacher, tokenizer = load_teacher(config, torch.device("cpu"), torch.float32, Log())
    with pytest.raises(ConfigError, match=r"vocab \(400\) is larger than the teacher's \(320\)"):
        load_student(config, torch.device("cpu"), tokenizer, teacher, Log())


def test_download_progress_is_whole_lines_every_ten_percent() -> None:
    from kdengine.sources import line_progress

    lines: list[str] = []
    bar = line_progress("teacher", lines.append)(total=50_000_000, desc="Fetching 3 files")
    for _ in range(50):
        bar.update(1_000_000)
    bar.close()
    assert lines[0] == "teacher: download Fetching 3 files 0% (0.0 of 50.0 MB)"
    assert lines[-1] == "teacher: download Fetching 3 files 100% (50.0 of 50.0 MB)"
    assert len(lines) == 11 and not any("\r" in line for line in lines)
