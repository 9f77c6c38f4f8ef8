"""The native decoder against transformers, family by family: same safetensors weights, same
float32 logits within 1e-4 relative, loaded both ways (transformers -> kdengine, kdengine ->
transformers). transformers is a test-only dependency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdengine.models import (
    Decoder,
    UnsupportedArchitecture,
    config_from_hf,
    load_decoder,
    save_decoder,
)

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # max |ours - theirs| <= TOL * max |theirs|, float32
VOCAB, SEQ = 160, 24

BASE = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5)

# (family, transformers config class, what this case pins)
CASES: dict[str, tuple[str, dict]] = {
    "llama2": ("llama", dict(rope_theta=10000.0)),
    "llama3-rope-scaling": ("llama", dict(
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 32})),
    "llama-linear-rope-and-biases": ("llama", dict(
        rope_scaling={"rope_type": "linear", "factor": 2.0}, attention_bias=True,
        mlp_bias=True)),
    "smollm2-tied": ("llama", dict(num_attention_heads=3, num_key_value_heads=1,
                                   tie_word_embeddings=True, rope_theta=100000.0)),
    "mistral-sliding-window": ("mistral", dict(sliding_window=8, rope_theta=1e6)),
    "mistral-no-window": ("mistral", dict(sliding_window=None)),
    "qwen2-qkv-bias-tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-sliding-layers": ("qwen2", dict(use_sliding_window=True, sliding_window=6,
                                           max_window_layers=1)),
    "qwen3-qk-norm-head-dim": ("qwen3", dict(head_dim=16, num_attention_heads=4,
                                             num_key_value_heads=1, hidden_size=40,
                                             rope_theta=1e6)),
    "qwen3-tied-attention-bias": ("qwen3", dict(head_dim=12, tie_word_embeddings=True,
                                                attention_bias=True)),
}
CONFIG_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
                  "qwen3": "Qwen3Config"}


def _hf_config(case: str):
    family, overrides = CASES[case]
    return getattr(transformers, CONFIG_CLASSES[family])(**{**BASE, **overrides})


def _scramble(module: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter, norms and biases included, so no path hides behind an
    init of ones or zeros."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.15 * noise)


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def _hf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_checkpoint_loads_into_native_decoder_with_equal_logits(
        case: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf_model = transformers.AutoModelForCausalLM.from_config(
        _hf_config(case), attn_implementation="eager").float().eval()
    _scramble(hf_model, seed=1)
    hf_model.save_pretrained(tmp_path)
    ids = _tokens()
    with torch.no_grad():
        theirs = hf_model(ids).logits
        ours = load_decoder(tmp_path).eval().logits(ids)
    assert ours.shape == theirs.shape == (2, SEQ, VOCAB)
    assert _relative_error(ours, theirs) <= TOL, case


@pytest.mark.parametrize("case", list(CASES))
def test_native_checkpoint_loads_into_transformers_with_equal_logits(
        case: str, tmp_path: Path) -> None:
    hf_dict = _hf_config(case).to_dict()
    model = Decoder(config_from_hf(hf_dict))
    _scramble(model, seed=2)
    save_decoder(model, tmp_path)
    ids = _tokens(1)
    with torch.no_grad():
        ours = model.eval().logits(ids)
    theirs = _hf_logits(tmp_path, ids)
    assert _relative_error(ours, theirs) <= TOL, case


def test_sliding_window_changes_the_logits_of_late_positions() -> None:
    """The mask is real: with a window of 8, positions >= 8 differ from full attention."""
    hf = _hf_config("mistral-sliding-window").to_dict()
    windowed = Decoder(config_from_hf(hf))
    _scramble(windowed, seed=3)
    full = Decoder(config_from_hf({**hf, "sliding_window": None}))
    full.load_state_dict(windowed.state_dict())
    ids = _tokens()
    with torch.no_grad():
        a, b = windowed.logits(ids), full.logits(ids)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_sharded_checkpoint_with_index_loads_like_a_single_file(tmp_path: Path) -> None:
    model = Decoder(config_from_hf(_hf_config("llama2").to_dict()))
    _scramble(model, seed=4)
    save_decoder(model, tmp_path / "single")
    save_decoder(model, tmp_path / "sharded", max_shard_bytes=40_000)
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = _tokens()
    with torch.no_grad():
        a = load_decoder(tmp_path / "single").logits(ids)
        b = load_decoder(tmp_path / "sharded").logits(ids)
        c = _hf_logits(tmp_path / "sharded", ids)
    assert torch.equal(a, b)
    assert _relative_error(b, c) <= TOL


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16, torch.float32])
def test_weights_stored_in_any_dtype_load_in_any_dtype(tmp_path: Path, stored: torch.dtype,
                                                       compute: torch.dtype) -> None:
    model = Decoder(config_from_hf(_hf_config("qwen2-qkv-bias-tied").to_dict()))
    _scramble(model, seed=5)
    save_decoder(model, tmp_path, dtype=stored)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["dtype"] == str(stored)[6:]
    loaded = load_decoder(tmp_path, dtype=compute)
    assert all(p.dtype == compute for p in loaded.parameters())
    assert loaded.inv_freq.dtype == torch.float32  # rope frequencies never rounded
    with torch.no_grad():
        ours = loaded.logits(_tokens()).float()
        reference = model.logits(_tokens())
    assert torch.isfinite(ours).all()
    # half precision: close to the float32 model, not equal
    limit = {torch.float32: 1e-6, torch.float16: 2e-2, torch.bfloat16: 6e-2}
    assert _relative_error(ours, reference) <= max(limit[stored], limit[compute])


@pytest.mark.parametrize("config, named", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 10},
     "GPT2LMHeadModel"),
    ({"model_type": "gemma", "architectures": ["GemmaForCausalLM"]}, "GemmaForCausalLM"),
    ({**BASE, "model_type": "llama", "architectures": ["LlamaForSequenceClassification"]},
     "LlamaForSequenceClassification"),
    ({**BASE, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "yarn"),
    ({**BASE, "model_type": "llama", "hidden_act": "gelu"}, "hidden_act"),
])
def test_other_architectures_get_an_error_naming_them(config: dict, named: str) -> None:
    with pytest.raises(UnsupportedArchitecture, match=named):
        config_from_hf(config)


def test_transformers5_rope_parameters_and_legacy_rope_theta_read_the_same() -> None:
    legacy = config_from_hf({**BASE, "model_type": "llama", "rope_theta": 500000.0,
                             "rope_scaling": {"type": "linear", "factor": 2.0}})
    modern = config_from_hf({**BASE, "model_type": "llama", "rope_parameters": {
        "rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}})
    assert legacy.rope_theta == modern.rope_theta == 500000.0
    assert legacy.rope_scaling == modern.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_missing_weights_and_missing_files_are_named(tmp_path: Path) -> None:
    model = Decoder(config_from_hf(_hf_config("llama2").to_dict()))
    save_decoder(model, tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="missing.*model.layers.2"):
        load_decoder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        load_decoder(tmp_path)
