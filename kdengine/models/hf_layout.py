"""Read and write the Hugging Face checkpoint layout: config.json + model.safetensors (or shards
with model.safetensors.index.json), parameter names as transformers writes them.

`config_from_hf` maps each supported family's config.json onto `DecoderConfig` the way
transformers 5.x reads it (its defaults for missing keys included); anything the native decoder
cannot reproduce exactly is refused with an error that names the key, never approximated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdengine.models.decoder import ROPE_TYPES, Decoder, DecoderConfig, rope_inv_freq

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# transformers' defaults for keys a config.json may leave out (configuration_<family>.py)
_KV_HEADS_DEFAULT = {"mistral": 8, "qwen2": 32, "qwen3": 32}
_MAX_POSITIONS_DEFAULT = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "qwen3": 32768}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX_FILE = "model.safetensors.index.json"
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads")


class UnsupportedArchitecture(ValueError):
    """A config.json the native decoder cannot run exactly (other family, other features)."""


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> DecoderConfig:
    """The DecoderConfig of an HF config.json dict. Raises UnsupportedArchitecture."""
    if not isinstance(hf, dict):
        raise UnsupportedArchitecture(f"{where} is not a JSON object (not a model's config.json)")
    model_type = hf.get("model_type", "")
    arch = ", ".join(hf.get("architectures") or []) or model_type or "unknown"
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"{where}: architecture {arch} (model_type {model_type!r}) is not supported; "
            f"kdengine runs the Llama family: {', '.join(sorted(ARCHITECTURES))} "
            "(Llama 2/3, SmolLM2, Mistral, Qwen2/2.5, Qwen3)")
    wanted = ARCHITECTURES[model_type]
    if hf.get("architectures") and wanted not in hf["architectures"]:
        raise UnsupportedArchitecture(f"{where}: architecture {arch} is not a causal LM of "
                                      f"{model_type} (kdengine runs {wanted})")

    absent = [k for k in _REQUIRED_KEYS if not _positive_int(hf.get(k))]
    if absent:
        raise UnsupportedArchitecture(f"{where}: {', '.join(absent)} missing or not a positive "
                                      "integer (not a complete config.json)")

    def refuse(key: str, why: str) -> UnsupportedArchitecture:
        return UnsupportedArchitecture(f"{where}: {key} = {hf.get(key)!r} is not supported "
                                       f"({why})")

    if hf.get("quantization_config"):
        method = (hf["quantization_config"].get("quant_method", "quantized")
                  if isinstance(hf["quantization_config"], dict) else "quantized")
        raise UnsupportedArchitecture(
            f"{where}: quantization_config ({method}) is not supported: kdengine loads float "
            "weights (float32, bfloat16, float16); use the model's unquantized checkpoint")
    for key in ("num_key_value_heads", "head_dim"):  # null or absent: the family's default
        if hf.get(key) is not None and not _positive_int(hf[key]):
            raise refuse(key, "a positive integer or null")
    if not _positive_number(hf.get("rms_norm_eps", 1e-6)):
        raise refuse("rms_norm_eps", "a positive number")
    if hf.get("hidden_act", "silu") != "silu":
        raise refuse("hidden_act", "the Llama family uses silu")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or (128 if model_type == "qwen3" else hf["hidden_size"] // heads)
    theta, scaling = _rope(hf, where)

    bias = bool(hf.get("attention_bias", False))
    qkv_bias, o_bias = {"llama": (bias, bias), "mistral": (False, False),
                        "qwen2": (True, False), "qwen3": (bias, bias)}[model_type]
    mlp_bias = bool(hf.get("mlp_bias", False)) if model_type == "llama" else False

    window, layer_types = _sliding(hf, model_type)
    return DecoderConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or _KV_HEADS_DEFAULT.get(
            model_type, heads),
        head_dim=head_dim,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=hf.get("max_position_embeddings",
                                       _MAX_POSITIONS_DEFAULT[model_type]),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        o_proj_bias=o_bias,
        mlp_bias=mlp_bias,
        qk_norm=model_type == "qwen3",
        sliding_window=window,
        layer_types=layer_types,
        model_type=model_type,
        extra={"hf": hf},
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _rope(hf: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling or None) from either layout: transformers 4's top-level rope_theta +
    rope_scaling, or transformers 5's rope_parameters (rope_scaling wins, as in transformers)."""
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    if hf.get(key) and not isinstance(hf[key], dict):
        raise UnsupportedArchitecture(f"{where}: {key} = {hf[key]!r} is not supported (an "
                                      "object such as {\"rope_type\": \"linear\", \"factor\": "
                                      "2.0}, or null)")
    params = dict(hf.get(key) or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise UnsupportedArchitecture(f"{where}: per-layer-type rope_parameters are not supported")
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if not _positive_number(theta):
        raise UnsupportedArchitecture(f"{where}: rope_theta = {theta!r} is not supported (a "
                                      "positive number)")
    theta = float(theta)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UnsupportedArchitecture(
            f"{where}: rope type {kind!r} is not supported (kdengine runs "
            f"{', '.join(ROPE_TYPES)}; its logits would differ from transformers')")
    factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if factor not in (None, 1, 1.0):
        raise UnsupportedArchitecture(f"{where}: partial_rotary_factor = {factor} is not "
                                      "supported (rotary over the whole head only)")
    if kind == "default":
        return theta, None
    params["rope_type"] = kind
    params.pop("type", None)
    params.pop("partial_rotary_factor", None)
    if kind == "llama3":
        params.setdefault("original_max_position_embeddings", hf.get(
            "max_position_embeddings", _MAX_POSITIONS_DEFAULT.get(hf.get("model_type"), 2048)))
    # what rope_inv_freq reads: transformers refuses these configs too
    numbers = {"factor": None}
    if kind == "llama3":
        numbers.update(low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=None)
    for name, default in numbers.items():
        if not _positive_number(params.get(name, default)):
            raise UnsupportedArchitecture(
                f"{where}: {key}.{name} = {params.get(name)!r} is not supported (rope type "
                f"{kind!r} needs a positive number there)")
    return theta, params


def _sliding(hf: dict[str, Any], model_type: str) -> tuple[int | None, list[str] | None]:
    """(sliding_window, layer_types) as transformers applies them to each family."""
    layers = hf["num_hidden_layers"]
    if model_type == "llama":
        return None, None
    if model_type == "mistral":
        # Mistral v0.1 slides over every layer; v0.2+ sets sliding_window to null
        return hf.get("sliding_window", 4096), None
    window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window", False) else None
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28)
        else "full_attention" for i in range(layers)]
    if window is None or "sliding_attention" not in layer_types:
        return None, None
    return window, list(layer_types)


def config_to_hf(config: DecoderConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The config.json of `config` for transformers (4.x and 5.x both read it)."""
    family = config.model_type
    if family not in ARCHITECTURES:
        raise UnsupportedArchitecture(f"model_type {family!r} has no HF layout")
    qkv, o, mlp = config.attention_bias, config.o_proj_bias, config.mlp_bias
    representable = {"llama": qkv == o, "mistral": not (qkv or o or mlp) and not config.qk_norm,
                     "qwen2": qkv and not o and not mlp, "qwen3": qkv == o and not mlp}[family]
    if not representable or (config.qk_norm != (family == "qwen3")) or \
            (mlp and family != "llama"):
        raise UnsupportedArchitecture(f"this decoder's biases/norms (q/k/v bias {qkv}, o bias "
                                      f"{o}, mlp bias {mlp}, q/k norm {config.qk_norm}) cannot be "
                                      f"written as model_type {family}")
    # keep what the source config.json said that we do not model (token ids, generation keys)
    out = {k: v for k, v in dict(config.extra.get("hf") or {}).items()
           if k not in ("rope_scaling", "rope_parameters", "rope_theta", "torch_dtype", "dtype",
                        "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window",
                        "layer_types", "max_window_layers", "transformers_version")}
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling:
        rope.update(config.rope_scaling)
    out.update(
        architectures=[ARCHITECTURES[family]], model_type=family, hidden_act="silu",
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        rope_theta=config.rope_theta, rope_parameters=rope,
        dtype=str(dtype).removeprefix("torch."),
    )
    if family in ("llama", "qwen3"):
        out["attention_bias"] = qkv
    if family == "llama":
        out["mlp_bias"] = mlp
    if family == "mistral":
        out["sliding_window"] = config.sliding_window
    if family in ("qwen2", "qwen3"):
        out["use_sliding_window"] = config.sliding_window is not None
        out["sliding_window"] = config.sliding_window
        out["layer_types"] = config.layer_types or ["full_attention"] * config.num_hidden_layers
        out["max_window_layers"] = config.num_hidden_layers
    return out


def save_decoder(model: Decoder, path: str | Path, dtype: torch.dtype | None = None,
                 max_shard_bytes: int | None = None) -> Path:
    """Write `path/config.json` and `path/model.safetensors` (tied weights stored once), or
    shards `model-0000i-of-0000n.safetensors` + the index when `max_shard_bytes` is set."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = dtype or next(model.parameters()).dtype
    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards = _shard(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map: dict[str, str] = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        (path / INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    hf = config_to_hf(model.config, dtype)
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return path


def _shard(state: dict[str, torch.Tensor],
           max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if not max_bytes:
        return [state]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def read_hf_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        hf = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no config.json (not an HF-layout model)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{path / 'config.json'} is not a JSON object (not a model's "
                         "config.json)")
    return hf


def stored_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's config.json says its weights are stored in (float32 if unsaid)."""
    hf = read_hf_config(path)
    return _DTYPES.get(str(hf.get("dtype") or hf.get("torch_dtype") or "float32"), torch.float32)


def load_decoder(path: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> Decoder:
    """A Decoder with the weights of an HF-layout directory, in `dtype` on `device`. The model is
    built on the meta device and materialised straight in `dtype`: no float32 detour."""
    path = Path(path)
    config = config_from_hf(read_hf_config(path), str(path / "config.json"))
    with torch.device("meta"):
        model = Decoder(config)
    model.to_empty(device=device)
    model.to(dtype)
    expected = {k for k in model.state_dict()
                if not (k == "lm_head.weight" and config.tie_word_embeddings)}
    files = weight_files(path)
    seen: set[str] = set()
    params = dict(model.state_dict())
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if name not in params:
                        if name == "lm_head.weight" and config.tie_word_embeddings:
                            continue  # some exporters store the tied head twice
                        raise ValueError(f"{path}: weights do not match config.json (unexpected "
                                         f"tensor {name} in {file.name})")
                    tensor = fh.get_tensor(name)
                    if tensor.shape != params[name].shape:
                        raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)} in "
                                         f"{file.name}, config.json implies "
                                         f"{tuple(params[name].shape)}")
                    params[name].copy_(tensor)
                    seen.add(name)
    missing = sorted(expected - seen)
    if missing:
        raise ValueError(f"{path}: weights do not match config.json (missing {missing[:3]}"
                         f"{' ...' if len(missing) > 3 else ''})")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = rope_inv_freq(config)
    return model


# safetensors' dtype names of weights that load as they are (a float8 one without scales too)
_FLOAT_STORAGE = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_INT_STORAGE = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8",
                "BOOL": "bool"}


def check_weight_headers(path: str | Path, config: DecoderConfig,
                         files: list[Path] | None = None) -> None:
    """The tensors the safetensors headers of `path` name are the ones `config` builds, of its
    shapes, stored as floats: what load_decoder would find only after reading every weight (and
    the other model). Reads headers, not weights. Raises ValueError naming the tensor."""
    path = Path(path)
    files = weight_files(path) if files is None else files
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Decoder(config).state_dict().items()}
    tied = config.tie_word_embeddings
    fix = "config.json and the weights are not of one model: copy or download it again"
    seen: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name not in shapes:
                    raise ValueError(f"{path}: {file.name} holds {name}, which the model "
                                     f"config.json describes has no place for ({fix})")
                if name == "lm_head.weight" and tied:
                    continue  # some exporters store the tied head twice
                piece = fh.get_slice(name)
                shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
                if shape != shapes[name]:
                    raise ValueError(f"{path}: {name} has shape {shape} in {file.name}, "
                                     f"config.json implies {shapes[name]} ({fix})")
                if dtype not in _FLOAT_STORAGE:
                    dtype = _INT_STORAGE.get(dtype, dtype)
                    raise ValueError(f"{path}: {name} is stored as {dtype} in {file.name}: "
                                     "kdengine loads float weights (float32, bfloat16, float16);"
                                     " a quantized checkpoint is not supported, use the "
                                     "model's unquantized one")
                seen.add(name)
    missing = sorted(n for n in shapes if n not in seen and not (n == "lm_head.weight" and tied))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{path}: {missing[0]} is missing{more} from "
                         f"{', '.join(f.name for f in files[:3])}, and config.json's model "
                         f"needs it ({fix})")


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF-layout directory: model.safetensors, or the shards its
    index names (each present). No weights are read; the run's preflight checks this too."""
    path = Path(path)
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index} is not a safetensors index ({exc})") from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(name, str) for name in weight_map.values()):
            raise ValueError(f"{index} is not a safetensors index (its weight_map is not an "
                             "object of tensor name to file name)")
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.exists()]
        if absent:  # a copy or download cut short, most often: the fix is to finish it
            more = f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""
            raise FileNotFoundError(
                f"{path}: shards named in {INDEX_FILE} are missing: {', '.join(absent[:3])}"
                f"{more}: copy them into {path} from where the model came from, or download "
                f"the model again (`hf download ORG/NAME --local-dir {path}`)")
        return files
    others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    hint = (f" (found {', '.join(others[:3])}: convert to safetensors, e.g. load it with "
            "transformers and save_pretrained(safe_serialization=True))" if others else "")
    raise FileNotFoundError(f"{path} has neither model.safetensors nor {INDEX_FILE}{hint}")
