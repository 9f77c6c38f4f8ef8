"""The teacher -> student pairs the benchmarks distil: public config values, random weights.

Each model is the core of its public config.json (the keys `kdengine.models.DecoderConfig`
takes); `write_model` writes it as an HF-layout bf16 checkpoint (config.json + safetensors, as
`kdengine train` and transformers read it) with a byte-level tokenizer whose 257 ids lie inside
every vocab here, so no model or tokenizer is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# -- public configs (the model cards' config.json) ----------------------------------------------

QWEN2_COMMON = dict(rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                    attention_bias=True, model_type="qwen2", max_position_embeddings=32768)
QWEN25_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                   num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2)
QWEN25_0_5B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                   num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2)

QWEN3_COMMON = dict(rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, qk_norm=True,
                    head_dim=128, model_type="qwen3", max_position_embeddings=40960)
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8)
QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                  num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8)

LLAMA32_COMMON = dict(rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      model_type="llama", max_position_embeddings=131072,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192})
LLAMA32_3B = dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                  num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                  head_dim=128)
LLAMA32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                  num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=64)

MODELS: dict[str, dict[str, Any]] = {
    "Qwen2.5-1.5B": {**QWEN2_COMMON, **QWEN25_1_5B},
    "Qwen2.5-0.5B": {**QWEN2_COMMON, **QWEN25_0_5B},
    "Llama-3.2-3B": {**LLAMA32_COMMON, **LLAMA32_3B},
    "Llama-3.2-1B": {**LLAMA32_COMMON, **LLAMA32_1B},
    "Qwen3-4B": {**QWEN3_COMMON, **QWEN3_4B},
    "Qwen3-0.6B": {**QWEN3_COMMON, **QWEN3_0_6B},
}

# name -> (teacher, student)
PAIRS: dict[str, tuple[str, str]] = {
    "qwen2.5": ("Qwen2.5-1.5B", "Qwen2.5-0.5B"),
    "llama3.2": ("Llama-3.2-3B", "Llama-3.2-1B"),
    "qwen3": ("Qwen3-4B", "Qwen3-0.6B"),
}


def tiny(name: str) -> dict[str, Any]:
    """The same family's features (biases, q/k norm, rope scaling, tied heads) at toy size."""
    base = MODELS[name]
    teacher = any(name == t for t, _ in PAIRS.values())
    hidden = 64 if teacher else 32
    return {**base, "vocab_size": 512, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2 if teacher else 1, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 1024,
            **({"head_dim": 16 if teacher else 8} if "head_dim" in base else {}),
            **({"rope_scaling": {**base["rope_scaling"], "original_max_position_embeddings": 256}}
               if "rope_scaling" in base else {})}


def family(config: dict[str, Any]) -> str:
    return config["model_type"]


def matmul_params(config: dict[str, Any]) -> int:
    """Weights that take part in a matmul: every Linear of every block and the lm head (a tied
    head counts: it is a matmul even though it shares the embedding's storage); not the
    embedding lookup, norms or biases."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or h // heads
    attention = 2 * h * heads * hd + 2 * h * kv * hd  # q, o; k, v
    mlp = 3 * h * config["intermediate_size"]  # gate, up, down
    return layers * (attention + mlp) + config["vocab_size"] * h


# -- checkpoints on disk --------------------------------------------------------------------------

def write_byte_tokenizer(directory: Path) -> None:
    """A GPT-2-style byte-level BPE tokenizer with no merges: 256 byte tokens + <|endoftext|>
    (tests/conftest.py's, here so a GPU box without pytest can write it)."""
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


def random_model(config: dict[str, Any], seed: int, device: str = "cpu") -> Any:
    """A bf16 Decoder of `config` with random weights (normal(0, 0.02) matrices, unit norms,
    zero biases), built on `device` (much faster on a GPU for billions of weights)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kdengine.models import Decoder, DecoderConfig

    with torch.device(device):
        model = Decoder(DecoderConfig(**config)).to(torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model


def write_model(path: Path, config: dict[str, Any], seed: int, device: str = "cpu") -> int:
    """An HF-layout bf16 checkpoint of `random_model(config, seed, device)` with a byte-level
    tokenizer. Returns the parameter count."""
    import torch

    from kdengine.models import save_decoder

    model = random_model(config, seed, device)
    params = sum(p.numel() for p in model.parameters())
    save_decoder(model, path, dtype=torch.bfloat16)
    write_byte_tokenizer(path)
    del model
    return params
