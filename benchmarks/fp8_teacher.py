"""The FP8 teacher on a GPU: is it right, how far does it drift, how much faster is it.

1. check: `Fp8Linear` (torch._scaled_mm, rowwise e4m3) against the same product written out in
   fp32 from the dequantized operands, and against the bf16 linear, on each teacher's block
   shapes at 8192 rows; eager and compiled. And the one-pass SwiGLU quantization before each
   down projection (the Triton kernel `Fp8Linear.swiglu` uses) against the same torch ops,
   eager and compiled as Inductor fuses them: the e4m3 values and scales, and the time of each;
   the same for the one-pass RMSNorm quantization before q/k/v and gate/up (`Fp8Linear.normed`).
2. drift on real text: the demo teacher (trained on the Python stdlib, kdengine.demo) in bf16
   against its FP8 self, both compiled as a run compiles them, on held-out stdlib text: mean
   per-token KL(bf16 || FP8), held-out CE of each, top-1 agreement; and, for scale, the same
   numbers for fp32 against bf16.
3. speed: each pair's teacher (public config, random weights) forward at 4 x 2048 tokens, fused
   and compiled whole as `kdengine train` runs it, in bf16 and in FP8: median ms, tokens/s,
   speed-up, peak memory, and the KL between the two (random weights: near-uniform
   distributions, so that KL is a lower bound of what a trained model shows).

    python3 benchmarks/fp8_teacher.py --out DIR [--teachers Qwen2.5-1.5B,Llama-3.2-3B,Qwen3-4B]

Prints one JSON line per measurement and writes DIR/fp8_teacher.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pairs import MODELS, random_model  # noqa: E402

from kdengine.models.fp8 import (  # noqa: E402
    Fp8Head,
    Fp8Linear,
    dequantize,
    quantize_rowwise,
    quantize_teacher,
    reference_linear,
)  # noqa: E402

RESULTS: list[dict] = []


def emit(**row) -> None:
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def timed(fn, steps: int = 10, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def fresh_compiler() -> None:
    """Each model compiles from scratch, as in its own run: Dynamo's per-code-object cache
    (Decoder.forward, Fp8Linear.forward) would otherwise count every new model as a recompile
    and fall back to eager after `recompile_limit` of them."""
    torch._dynamo.reset()


def check_ops(names: list[str], device: torch.device) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    for name in names:
        cfg = MODELS[name]
        h, inter = cfg["hidden_size"], cfg["intermediate_size"]
        hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
        qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * hd
        shapes = {"qkv": (qkv, h), "o": (h, cfg["num_attention_heads"] * hd),
                  "gate_up": (2 * inter, h), "down": (h, inter)}
        for part, (out_f, in_f) in shapes.items():
            w = torch.randn(out_f, in_f, device=device, generator=gen, dtype=torch.bfloat16) * 0.02
            x = torch.randn(8192, in_f, device=device, generator=gen, dtype=torch.bfloat16)
            layer = Fp8Linear(w)
            fresh_compiler()
            fn = torch.compile(layer)  # compiled: the activation's quantization fused
            eager, compiled = layer(x), fn(x)
            ref = reference_linear(x, layer)
            bf16 = F.linear(x, w)
            t_bf16 = statistics.median(timed(lambda x=x, w=w: F.linear(x, w)))
            t_fp8 = statistics.median(timed(lambda fn=fn, x=x: fn(x)))
            xq, xs = quantize_rowwise(x)  # the matmul alone, its input quantized beforehand
            t_mm = statistics.median(timed(lambda xq=xq, xs=xs, layer=layer: torch._scaled_mm(
                xq, layer.weight.t(), scale_a=xs, scale_b=layer.weight_scale,
                out_dtype=torch.bfloat16, use_fast_accum=True)))
            flops = 2 * 8192 * out_f * in_f
            emit(phase="check", model=name, part=part, shape=[8192, in_f, out_f],
                 err_vs_dequantized=rel(eager, ref), err_compiled_vs_eager=rel(compiled, eager),
                 err_vs_bf16=rel(eager, bf16), bf16_tflops=flops / t_bf16 / 1e12,
                 fp8_tflops_with_quant=flops / t_fp8 / 1e12, fp8_tflops_mm=flops / t_mm / 1e12,
                 speedup=t_bf16 / t_fp8,
                 ok=rel(eager, ref) < 2e-2 and rel(compiled, eager) < 2e-2)
        check_swiglu(name, inter, h, device, gen)
        check_rms_norm(name, h, qkv, device, gen)
        check_attention_kernels(name, cfg, device, gen)


def check_swiglu(name: str, inter: int, hidden_size: int, device: torch.device,
                 gen: torch.Generator) -> None:
    """The Triton kernel against torch's ops, and the down projection through it."""
    from kdengine.models import fp8 as fp8_module
    from kdengine.models.fp8_kernels import launch_swiglu_quantize_rows
    from kdengine.models.fp8_kernels import swiglu_quantize_rows as kernel

    gate_up = torch.randn(8192, 2 * inter, device=device, generator=gen, dtype=torch.bfloat16)
    gate_up[:64] *= 40  # rows with outliers, as a trained MLP has
    fresh_compiler()
    torch_ops = fp8_module.quantize_rowwise_of_swiglu  # the unfused math, in torch ops
    compiled = torch.compile(torch_ops)
    runs = {"kernel": lambda: kernel(gate_up), "compiled": lambda: compiled(gate_up),
            "eager": lambda: torch_ops(gate_up)}
    out = {k: fn() for k, fn in runs.items()}
    values, scale = (torch.empty_like(t) for t in out["kernel"])
    for warps in (4, 8, 16):  # the kernel's threads per row (fp8_kernels.SWIGLU_WARPS)
        runs[f"kernel_{warps}_warps"] = partial(launch_swiglu_quantize_rows, gate_up, values,
                                                scale, warps)
    ms = {k: 1e3 * statistics.median(timed(fn, steps=20)) for k, fn in runs.items()}
    moved = gate_up.numel() * 2 + gate_up.numel() // 2 + 8192 * 4  # read bf16, write e4m3
    row = {"phase": "check", "model": name, "part": "swiglu_quantize", "shape": [8192, inter],
           "ms": ms, "kernel_tb_s": moved / ms["kernel"] / 1e9}
    for other in ("compiled", "eager"):
        row[f"vs_{other}"] = one_step_apart(out["kernel"], out[other])
    layer = Fp8Linear(torch.randn(hidden_size, inter, device=device, generator=gen,
                                  dtype=torch.bfloat16) * 0.02)
    fp8_module.load_kernels()
    gate, up = gate_up.chunk(2, dim=-1)
    row["down_err_vs_unfused"] = rel(layer.swiglu(gate_up), layer(F.silu(gate) * up))
    row["ok"] = (all(row[f"vs_{o}"]["beyond_one_step"] == 0
                     and row[f"vs_{o}"]["values_differing"] < 0.1
                     # eager rounds silu(gate) and the product to bf16: two roundings
                     and row[f"vs_{o}"]["scale_rel_max"] < 2.0 ** -6
                     for o in ("compiled", "eager"))
                 and row["down_err_vs_unfused"] < 1e-2)
    emit(**row)


def check_attention_kernels(name: str, cfg: dict, device: torch.device,
                            gen: torch.Generator) -> None:
    """The attention's two one-pass kernels against the torch ops they replace, eager and
    compiled: the rowwise quantization of its output (before the o projection) and the q/k
    norms with rope (qk_norm_rope, for a teacher whose q/k/v has no bias)."""
    from kdengine.models import fp8_kernels
    from kdengine.models.decoder import Decoder, DecoderConfig
    from kdengine.models.fp8 import qk_norm_rope_reference

    model = Decoder(DecoderConfig(**{**cfg, "num_hidden_layers": 1})).to(device, torch.bfloat16)
    attn = model.model.layers[0].self_attn
    heads, kv, dim = attn.n_heads, attn.n_kv, attn.head_dim
    x = torch.randn(8192, heads * dim, device=device, generator=gen, dtype=torch.bfloat16)
    x[:64] *= 40
    fresh_compiler()
    compiled = torch.compile(quantize_rowwise)
    runs = {"kernel": lambda: fp8_kernels.quantize_rows(x), "compiled": lambda: compiled(x),
            "eager": lambda: quantize_rowwise(x)}
    out = {k: fn() for k, fn in runs.items()}
    ms = {k: 1e3 * statistics.median(timed(fn, steps=20)) for k, fn in runs.items()}
    row = {"phase": "check", "model": name, "part": "quantize_rows", "shape": list(x.shape),
           "ms": ms, "kernel_tb_s": (x.numel() * 3 + 8192 * 4) / ms["kernel"] / 1e9}
    for other in ("compiled", "eager"):
        row[f"vs_{other}"] = one_step_apart(out["kernel"], out[other])
    row["ok"] = all(row[f"vs_{o}"]["beyond_one_step"] == 0
                    and row[f"vs_{o}"]["values_differing"] < 0.05
                    and row[f"vs_{o}"]["scale_rel_max"] < 1e-6 for o in ("compiled", "eager"))
    emit(**row)

    b, t = 4, 2048
    qkv = torch.randn(b, t, (heads + 2 * kv) * dim, device=device, generator=gen,
                      dtype=torch.bfloat16) * 2
    norm = attn.q_norm is not None
    if norm:
        for w in (attn.q_norm.weight, attn.k_norm.weight):
            w.data = (torch.rand(dim, device=device, generator=gen) + 0.5).to(torch.bfloat16)
    cos, sin = model.rope(t, device, torch.bfloat16)
    rows = qkv.view(b * t, -1)
    reference = partial(qk_norm_rope_reference, attn=attn, cos=cos, sin=sin, batch=b, seq=t)
    fresh_compiler()
    compiled_ref = torch.compile(reference)
    runs = {"kernel": lambda: fp8_kernels.qk_norm_rope(
                rows, attn.q_norm.weight if norm else rows, attn.k_norm.weight if norm else rows,
                cos, sin, heads, kv, t, attn.q_norm.eps if norm else 0.0, norm),
            "compiled": lambda: compiled_ref(qkv), "eager": lambda: reference(qkv)}
    out = {k: fn() for k, fn in runs.items()}
    ms = {k: 1e3 * statistics.median(timed(fn, steps=20)) for k, fn in runs.items()}
    q, k = (y.view(b, t, -1, dim) for y in out["kernel"])
    row = {"phase": "check", "model": name, "part": "qk_norm_rope", "qk_norm": norm,
           "shape": list(qkv.shape), "ms": ms,
           "kernel_tb_s": 2 * (heads + kv) * dim * b * t * 2 / ms["kernel"] / 1e9}
    for other in ("compiled", "eager"):
        row[f"err_vs_{other}"] = max(rel(q, out[other][0]), rel(k, out[other][1]))
    row["ok"] = all(row[f"err_vs_{o}"] < 1e-2 for o in ("compiled", "eager"))
    emit(**row)


def one_step_apart(ours: tuple, theirs: tuple) -> dict:
    """How two (e4m3 values, scales) quantizations of the same rows differ: the share of
    values that differ, how many are more than one e4m3 step apart (2^-3 of the value, or the
    smallest subnormal step), and the largest relative difference of the scales."""
    a, b = dequantize(*ours), dequantize(*theirs)
    differ = ours[0].view(torch.uint8) != theirs[0].view(torch.uint8)
    step = torch.maximum(a.abs(), b.abs()) * 2.0 ** -3 + theirs[1] * 2.0 ** -9
    return {"values_differing": float(differ.float().mean()),
            "beyond_one_step": int(((a - b).abs() > step * 1.001).sum()),
            "scale_rel_max": float(((ours[1] - theirs[1]).abs() / theirs[1]).max())}


def check_rms_norm(name: str, hidden_size: int, qkv: int, device: torch.device,
                   gen: torch.Generator) -> None:
    """The one-pass RMSNorm quantization (Triton) against torch's ops, eager and compiled, and
    the q/k/v projection through it against the unfused one."""
    from kdengine.models import fp8 as fp8_module
    from kdengine.models.fp8_kernels import rms_norm_quantize_rows as kernel
    from kdengine.models.norm import RMSNorm

    x = torch.randn(8192, hidden_size, device=device, generator=gen, dtype=torch.bfloat16)
    x[:64] *= 40  # rows with outliers, as a residual stream has
    norm = RMSNorm(hidden_size, 1e-6).to(device, torch.bfloat16)
    norm.weight.data = (torch.rand(hidden_size, device=device, generator=gen) + 0.5).to(
        torch.bfloat16)
    fresh_compiler()
    torch_ops = partial(fp8_module.quantize_rowwise_of_rms_norm, weight=norm.weight, eps=norm.eps)
    compiled = torch.compile(torch_ops)
    runs = {"kernel": lambda: kernel(x, norm.weight, norm.eps), "compiled": lambda: compiled(x),
            "eager": lambda: torch_ops(x)}
    out = {k: fn() for k, fn in runs.items()}
    ms = {k: 1e3 * statistics.median(timed(fn, steps=20)) for k, fn in runs.items()}
    moved = x.numel() * 2 + x.numel() + 8192 * 4  # read bf16, write e4m3 and the scales
    row = {"phase": "check", "model": name, "part": "rms_norm_quantize",
           "shape": [8192, hidden_size], "ms": ms, "kernel_tb_s": moved / ms["kernel"] / 1e9}
    for other in ("compiled", "eager"):
        row[f"vs_{other}"] = one_step_apart(out["kernel"], out[other])
    # with the residual stream's add before it (the MLP's norm): the sum bit for bit torch's
    from kdengine.models.fp8_kernels import add_rms_norm_quantize_rows as add_kernel

    add = torch.randn(8192, hidden_size, device=device, generator=gen, dtype=torch.bfloat16)
    total, *with_add = add_kernel(x, add, norm.weight, norm.eps)
    row["add_sum_equal"] = bool(torch.equal(total, x + add))
    row["add_vs_eager"] = one_step_apart(tuple(with_add), torch_ops(x + add))
    row["add_ms"] = 1e3 * statistics.median(timed(
        lambda: add_kernel(x, add, norm.weight, norm.eps), steps=20))
    layer = Fp8Linear(torch.randn(qkv, hidden_size, device=device, generator=gen,
                                  dtype=torch.bfloat16) * 0.02)
    fp8_module.load_kernels()
    row["qkv_err_vs_unfused"] = rel(layer.normed(x, norm), layer(norm(x)))
    row["add_normed_err_vs_unfused"] = rel(layer.add_normed(x, add, norm)[1], layer(norm(x + add)))
    row["ok"] = (all(row[k]["beyond_one_step"] == 0 and row[k]["values_differing"] < 0.05
                     and row[k]["scale_rel_max"] < 2.0 ** -6
                     for k in ("vs_compiled", "vs_eager", "add_vs_eager"))
                 and row["add_sum_equal"] and row["qkv_err_vs_unfused"] < 1e-2
                 and row["add_normed_err_vs_unfused"] < 1e-2)
    emit(**row)


def kl_stats(p_logits: torch.Tensor, q_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    lp, lq = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return {"kl_mean": float(kl.mean()), "kl_p99": float(kl.flatten().quantile(0.99)),
            "ce_p": float(F.cross_entropy(lp[:, :-1].flatten(0, 1), labels.flatten())),
            "ce_q": float(F.cross_entropy(lq[:, :-1].flatten(0, 1), labels.flatten())),
            "top1_agree": float((lp.argmax(-1) == lq.argmax(-1)).float().mean())}


def drift_on_real_text(device: torch.device) -> None:
    from kdengine import demo

    # outside inference mode: a box without the demo teacher in its cache trains it first
    base = demo.load_teacher_model().requires_grad_(False).eval()
    with torch.inference_mode():
        _drift(base, device)


def _drift(base: torch.nn.Module, device: torch.device) -> None:
    from kdengine.data import ByteTokenizer, demo_documents, split_documents

    tok = ByteTokenizer()
    splits = split_documents(demo_documents(), tok.encode_tensor, tok.eos_id, 0.05, 512)
    rows = splits.val[: 64 * 512].view(64, 512).to(device)
    fp32 = copy.deepcopy(base).to(device)
    bf16 = copy.deepcopy(base).to(device, torch.bfloat16).fuse_for_inference()
    fp8 = copy.deepcopy(base).to(device, torch.bfloat16)
    quantize_teacher(fp8)
    # the same quantization with Inductor's norms, SwiGLU and residual adds (one_pass=False):
    # what the one-pass kernels and the block-end add deferred into the next norm change
    fp8_unfused = copy.deepcopy(base).to(device, torch.bfloat16)
    quantize_teacher(fp8_unfused, one_pass=False)
    logits = {}
    for name, model in (("fp32", fp32), ("bf16", bf16), ("fp8", fp8),
                        ("fp8_unfused", fp8_unfused)):
        if name != "fp32":
            fresh_compiler()
            model.compile()
        hidden = model(rows)
        logits[name] = model.lm_head(hidden).float()
        if name == "fp8":  # the KD loss's teacher logits: through the head's FP8 copy (the
            # demo's 257 ids padded to 272 rows, as a padded teacher vocabulary is, and cut back)
            head = model.lm_head_weight
            fp8_head = Fp8Head(F.pad(head, (0, 0, 0, -head.shape[0] % 16)))
            flat = hidden.reshape(-1, hidden.shape[-1])
            logits["fp8_head"] = fp8_head.logits(flat, head.shape[0]).float().view(
                *hidden.shape[:-1], -1)
    labels = rows[:, 1:]
    emit(phase="drift", text="held-out Python stdlib (the demo teacher's own split)",
         tokens=rows.numel(), bf16_vs_fp8=kl_stats(logits["bf16"], logits["fp8"], labels),
         fp32_vs_bf16=kl_stats(logits["fp32"], logits["bf16"], labels),
         fp8_unfused_vs_fp8=kl_stats(logits["fp8_unfused"], logits["fp8"], labels),
         **({"bf16_vs_fp8_with_fp8_head": kl_stats(logits["bf16"], logits["fp8_head"], labels)}
            if "fp8_head" in logits else {}))


@torch.inference_mode()
def teacher_speed(names: list[str], device: torch.device, steps: int) -> None:
    for name in names:
        model = random_model(MODELS[name], seed=1, device=str(device))
        model.requires_grad_(False).eval()
        gen = torch.Generator(device=device).manual_seed(2)
        ids = torch.randint(0, model.config.vocab_size, (4, 2048), device=device, generator=gen)
        out = {}
        for variant in ("bf16", "fp8"):
            m = copy.deepcopy(model) if variant == "bf16" else model
            if variant == "fp8":
                quantize_teacher(m)
            else:
                m.fuse_for_inference()
            fresh_compiler()
            m.compile()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            m(ids)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            times = timed(lambda m=m, ids=ids: m(ids), steps)
            hidden = m(ids)
            out[variant] = {"ms": 1e3 * statistics.median(times), "compile_s": compile_s,
                            "tokens_per_s": ids.numel() / statistics.median(times),
                            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                            "logits": (hidden[:, -256:] @ m.lm_head_weight.T).float()}
            if variant == "bf16":
                del m
                torch.cuda.empty_cache()
        labels = ids[:, -255:]
        drift = kl_stats(out["bf16"].pop("logits"), out["fp8"].pop("logits"), labels)
        emit(phase="speed", model=name, tokens=ids.numel(), bf16=out["bf16"], fp8=out["fp8"],
             speedup=out["bf16"]["ms"] / out["fp8"]["ms"], drift_random_weights=drift)
        del model
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--teachers", default="Qwen2.5-1.5B,Llama-3.2-3B,Qwen3-4B")
    parser.add_argument("--phases", default="check,drift,speed")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda")
    names = [n for n in args.teachers.split(",") if n]
    phases = args.phases.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    emit(phase="env", torch=torch.__version__, gpu=torch.cuda.get_device_name(device))
    return run_phases({"check": lambda: check_ops(names, device),
                       "drift": lambda: drift_on_real_text(device),
                       "speed": lambda: teacher_speed(names, device, args.steps)},
                      phases, args.out / "fp8_teacher.json")


def run_phases(table: dict, phases: list[str], out: Path) -> int:
    """The asked phases of `table` in its order, each timed, a failing one recorded and the
    others run; every row to `out`. Exit status 1 when a phase failed or a check is not ok."""
    status = 0
    for phase, fn in table.items():
        if phase not in phases:
            continue
        start = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one failing phase must not hide the others
            emit(phase=phase, error=f"{type(exc).__name__}: {exc}"[-2000:])
            status = 1
        print(f"# {phase}: {time.perf_counter() - start:.1f}s", flush=True)
    out.write_text(json.dumps(RESULTS, indent=1) + "\n")
    if any(r.get("phase") == "check" and not r.get("ok", True) for r in RESULTS):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
