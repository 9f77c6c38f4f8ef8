"""Generation throughput on one GPU: the native decoder's `generate` (kdengine.generation) against
transformers' `generate` on the same model, weights and batch.

Default shape: Qwen2.5-0.5B (its public config values, written below), random weights, bf16,
batch 64, ragged prompts of 48..80 tokens (left-padded), 256 new tokens, greedy; transformers
gets min_new_tokens=max_new_tokens and neither side has an EOS, so both make exactly 256 tokens
per row and tokens/s compare fairly. Variants (one JSON line each: tokens/s, ms per step, peak
memory of the timed calls, seconds of the first call):

  transformers        AutoModelForCausalLM (Qwen2, SDPA attention), model.generate, dynamic cache
  native              kdengine generate, bf16 weights (compiled decode step + CUDA graph on CUDA)
  native-fp32-master  kdengine generate of a student as training holds it: fp32 weights,
                      dtype=bf16 (generation keeps one bf16 copy)
  native-eager        GenerationEngine without compile or CUDA graphs (what they buy)

Then the correctness check: the share of rows whose greedy tokens agree between transformers and
native at bf16 (random weights give near-flat logits, so bf16 rounding flips near-ties: the mean
common prefix is reported too), and the same in fp32 on a few rows, where they should all agree.

    python benchmarks/generation.py                 # on a GPU box (no network needed)
    python benchmarks/generation.py --tiny          # tiny shapes on the CPU: the same code path
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdengine.generation import GenerationEngine, SamplingConfig, generate  # noqa: E402
from kdengine.models import Decoder, DecoderConfig  # noqa: E402
from kdengine.models.hf_layout import config_to_hf  # noqa: E402

QWEN25_0_5B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                   num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                   rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                   attention_bias=True, model_type="qwen2", max_position_embeddings=32768)
TINY = dict(QWEN25_0_5B, vocab_size=512, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
PAD = 0


def log(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def init_by_name(module: torch.nn.Module, seed: int = 1, std: float = 0.02) -> None:
    """Deterministic random weights keyed by parameter name: the native decoder and
    transformers' Qwen2 (same names) get identical weights without holding both at once."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            gen = torch.Generator(device=p.device)
            gen.manual_seed(seed * 7919 + zlib.crc32(name.encode()))
            p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
                    * std)


def native_model(shape: dict, device: torch.device, dtype: torch.dtype) -> Decoder:
    with torch.device(device):
        model = Decoder(DecoderConfig(**shape))
    init_by_name(model)
    return model.to(dtype).eval()


def hf_model(shape: dict, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = config_to_hf(DecoderConfig(**shape))
    cfg.pop("dtype", None)
    config = Qwen2Config(**cfg, attn_implementation="sdpa")
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    init_by_name(model)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = None  # no stop: every row makes max_new_tokens
    model.generation_config.pad_token_id = PAD
    return model


def ragged_prompts(batch: int, length: int, vocab: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    lengths = torch.randint(max(1, length * 3 // 4), length * 5 // 4 + 1, (batch,), generator=gen)
    return [torch.randint(1, vocab, (int(n),), generator=gen) for n in lengths]


def left_padded(prompts: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    return ids.to(device), mask.to(device)


def hf_generate(model, prompts: list[torch.Tensor], new: int, device) -> torch.Tensor:
    ids, mask = left_padded(prompts, device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=new, min_new_tokens=new, pad_token_id=PAD)
    return out[:, ids.shape[1]:]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device: torch.device, repeats: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """First call (warm-up: compiles, captures), then `repeats` timed calls: their median."""
    sync(device)
    start = time.perf_counter()
    tokens = run()
    sync(device)
    first = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        tokens = run()
        sync(device)
        seconds.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
    return tokens, dict(first_call_s=round(first, 3), seconds=round(statistics.median(seconds), 4),
                        peak_mem_gib=None if peak is None else round(peak, 3))


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    same = a.cpu() == b.cpu()
    prefix = same.long().cumprod(dim=1).sum(dim=1).float()
    return dict(rows_equal=round(same.all(dim=1).float().mean().item(), 4),
                first_token_equal=round(same[:, 0].float().mean().item(), 4),
                mean_common_prefix=round(prefix.mean().item(), 2), tokens=a.shape[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU check)")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--prompt-len", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--variants", default="transformers,native,native-fp32-master,"
                        "native-eager")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = TINY if args.tiny else QWEN25_0_5B
    batch = args.batch or (4 if args.tiny else 64)
    prompt_len = args.prompt_len or (12 if args.tiny else 64)
    new = args.new_tokens or (16 if args.tiny else 256)
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 check compares like for like
    prompts = ragged_prompts(batch, prompt_len, shape["vocab_size"])
    config = SamplingConfig(max_new_tokens=new, temperature=0.0)
    log(dict(setup="generation", device=str(device), gpu=(torch.cuda.get_device_name(device)
             if device.type == "cuda" else None), torch=torch.__version__, shape=shape,
             batch=batch, prompt_lengths=[min(map(len, prompts)), max(map(len, prompts))],
             new_tokens=new, dtype=args.dtype))

    outputs: dict[str, torch.Tensor] = {}
    results: dict[str, dict] = {}
    for variant in args.variants.split(","):
        try:
            if variant == "transformers":
                model = hf_model(shape, device, dtype)
                run = lambda m=model: hf_generate(m, prompts, new, device)  # noqa: E731
                kind = "transformers generate (dynamic cache, sdpa)"
            elif variant in ("native", "native-fp32-master"):
                model = native_model(shape, device,
                                     torch.float32 if variant.endswith("master") else dtype)
                run = lambda m=model: generate(m, prompts, config, dtype=dtype).tokens  # noqa: E731
                kind = None
            elif variant == "native-eager":
                model = native_model(shape, device, dtype)
                engine = GenerationEngine(model, dtype, compile=False, cuda_graphs=False)
                run = lambda e=engine: e.generate(prompts, config).tokens  # noqa: E731
                kind = "eager"
            else:
                raise ValueError(f"unknown variant {variant!r}")
            tokens, stats = timed(run, device, args.repeats)
            if kind is None:
                from kdengine.generation import engine_for
                kind = engine_for(model, dtype).step_kind
            made = tokens.shape[0] * tokens.shape[1]
            results[variant] = dict(variant=variant, step=kind, tokens_per_s=round(
                made / stats["seconds"], 1), ms_per_step=round(1000 * stats["seconds"] / new, 3),
                **stats, new_tokens=made)
            outputs[variant] = tokens.cpu()
            log(results[variant])
        except Exception as error:  # noqa: BLE001 - one variant failing must not hide the others
            traceback.print_exc()
            log(dict(variant=variant, error=f"{type(error).__name__}: {error}"[:500]))
        finally:
            model = run = engine = None
            free(device)

    if "transformers" in outputs:
        for variant in ("native", "native-fp32-master", "native-eager"):
            if variant in outputs:
                log(dict(check=f"greedy {variant} vs transformers", dtype=args.dtype,
                         **agreement(outputs[variant], outputs["transformers"])))
        if "transformers" in results and "native" in results:
            log(dict(speedup_native_vs_transformers=round(
                results["native"]["tokens_per_s"] / results["transformers"]["tokens_per_s"], 2)))
    try:  # fp32, a few rows: the two implementations should agree token for token
        rows, steps = prompts[:8], min(new, 32)
        hf = hf_model(shape, device, torch.float32)
        theirs = hf_generate(hf, rows, steps, device).cpu()
        hf = None
        free(device)
        native = native_model(shape, device, torch.float32)
        ours = generate(native, rows, SamplingConfig(max_new_tokens=steps, temperature=0.0))
        log(dict(check="greedy native vs transformers", dtype="float32",
                 **agreement(ours.tokens, theirs)))
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        log(dict(check="fp32", error=f"{type(error).__name__}: {error}"[:500]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
