"""Read and write the Hugging Face checkpoint layout: config.json + model.safetensors (or shards
with model.safetensors.index.json), parameter names as transformers writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdengine.models.decoder import Decoder, DecoderConfig, rope_inv_freq

# model_type -> what that family fixes beyond the shared Llama keys
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "qwen2": {"attention_bias": True},
    "qwen3": {"qk_norm": True},
}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


class UnsupportedArchitecture(ValueError):
    pass


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> DecoderConfig:
    model_type = hf.get("model_type", "")
    if model_type not in FAMILIES:
        arch = ", ".join(hf.get("architectures") or []) or model_type or "unknown"
        raise UnsupportedArchitecture(
            f"{where}: architecture {arch} (model_type {model_type!r}) is not supported; "
            f"kdengine runs the Llama family: {', '.join(sorted(FAMILIES))}")
    fixed = FAMILIES[model_type]
    return DecoderConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 1e4)),
        rope_scaling=hf.get("rope_scaling"),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        attention_bias=fixed.get("attention_bias", hf.get("attention_bias", False)),
        qk_norm=fixed.get("qk_norm", False),
        model_type=model_type,
    )


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
    out = config.to_dict()
    out.pop("qk_norm")
    out["architectures"] = [ARCHITECTURES[config.model_type]]
    out["hidden_act"] = "silu"
    out["torch_dtype"] = "float32"
    return out


def save_decoder(model: Decoder, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `path/config.json` and `path/model.safetensors` (tied weights stored once)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu()
             for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    hf = config_to_hf(model.config)
    hf["torch_dtype"] = str(dtype or next(iter(state.values())).dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return path


def load_decoder(path: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> Decoder:
    path = Path(path)
    try:
        hf = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no config.json (not an HF-layout model)") from None
    config = config_from_hf(hf, str(path / "config.json"))
    state = _read_weights(path)
    with torch.device("meta"):
        model = Decoder(config)
    model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match config.json "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # the rotary table is not in the checkpoint: rebuild it off the meta device
    model.register_buffer("inv_freq", rope_inv_freq(config).to(device), persistent=False)
    return model.to(dtype)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    single = path / "model.safetensors"
    if single.exists():
        return load_file(str(single))
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    raise FileNotFoundError(f"{path} has neither model.safetensors nor "
                            "model.safetensors.index.json")
