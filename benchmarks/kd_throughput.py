"""KD training throughput on one GPU, three ways, side by side in one process:

  naive     transformers' models, full [tokens, vocab] logits of both, fp32 log_softmax of both and
            KL (as TRL's and DistillKit's trainers write it)
  liger     transformers' models with Liger-Kernel's Qwen2 kernels (RMSNorm, RoPE, SwiGLU) and
            its chunked LigerFusedLinearJSDLoss, beta=0 (forward KL)
  kdengine  kdengine's KDTrainer.train_step: native decoder (teacher fused and compiled whole,
            student blocks compiled), the fused chunked lm-head + KD loss
            (kdengine.losses.fused_kd_loss, Triton KD kernels), clip folded into fused AdamW;
            kdengine-attempt3 is the same trainer set up as before issue 6's attempt 4

Same shapes (teacher: Qwen2.5-1.5B's config, student: Qwen2.5-0.5B's; random weights), same
batch, same optimizer step (bf16 autocast over fp32 master weights, fused AdamW, clip 1.0), same
loss (forward KL, T=1, no hard-label term). Reports the median step time after warm-up as
tokens/s, the peak GPU memory of the timed steps, and MFU against a bf16 matmul measured in this
run. Before timing, the fused loss and its gradients are checked against float64 autograd on the
device (fp32 within 1e-5, bf16 within 1e-2, norm-relative).

    benchmarks/run_kd_throughput.sh                 # on a GPU box: results under $OUT
    python benchmarks/kd_throughput.py --small --device cpu   # the same code path, tiny, fp32

liger-kernel and transformers are benchmark-only dependencies; a variant whose package is
missing is reported as skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pairs import QWEN2_COMMON, QWEN25_0_5B, QWEN25_1_5B  # noqa: E402 - benchmarks/pairs.py

from kdengine.losses import IGNORE_INDEX, KDLossSpec, fused_kd_loss, kd_loss_reference  # noqa: E402
from kdengine.models import Decoder, DecoderConfig  # noqa: E402
from kdengine.models.hf_layout import config_to_hf  # noqa: E402

TINY_TEACHER = dict(vocab_size=512, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                    num_attention_heads=6, num_key_value_heads=2)
TINY_STUDENT = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)

LR, BETAS, CLIP = 1e-5, (0.9, 0.95), 1.0


def log(text: str) -> None:
    print(text, flush=True)


# -- models and data ---------------------------------------------------------------------------

def decoder_config(shape: dict[str, int]) -> DecoderConfig:
    return DecoderConfig(**shape, **QWEN2_COMMON)


def init_like_by_name(module: torch.nn.Module, seed: int) -> None:
    """Deterministic random weights keyed by parameter name, so the native decoder and
    transformers' Qwen2 (same names) get identical weights without holding both at once."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            gen = torch.Generator(device=p.device)
            gen.manual_seed(seed * 7919 + zlib.crc32(name.encode()))
            p.copy_(torch.randn(p.shape, generator=gen, device=p.device) * 0.02)


def native_models(tshape, sshape, device, teacher_dtype):
    with torch.device(device):
        teacher = Decoder(decoder_config(tshape))
        student = Decoder(decoder_config(sshape))
    init_like_by_name(teacher, 1)
    init_like_by_name(student, 2)
    return teacher.to(teacher_dtype).eval().requires_grad_(False), student.train()


def hf_models(tshape, sshape, device, teacher_dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def build(shape, seed):
        cfg = config_to_hf(decoder_config(shape))
        cfg.pop("dtype", None)
        config = Qwen2Config(**cfg, attn_implementation="sdpa", use_cache=False)
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
        init_like_by_name(model, seed)
        return model

    teacher = build(tshape, 1).to(teacher_dtype).eval().requires_grad_(False)
    return teacher, build(sshape, 2).train()


def random_batch(vocab: int, batch: int, seq: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    stream = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    return stream[:, :-1].contiguous().to(device), stream[:, 1:].contiguous().to(device)


# -- FLOPs and the matmul ceiling ---------------------------------------------------------------

def model_flops(shape: dict[str, int], tokens: int, seq: int) -> float:
    """Forward FLOPs of one pass: dense matmuls, causal attention scores, the lm head."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    hd = h // heads
    per_layer = h * heads * hd * 2 + 2 * h * kv * hd + 3 * h * inter  # q, o, k, v, mlp
    dense = 2 * per_layer * layers * tokens
    attention = 2 * 2 * layers * tokens * (seq / 2) * heads * hd  # QK^T and AV, causal half
    head = 2 * tokens * h * shape["vocab_size"]
    return dense + attention + head


def step_flops(tshape, sshape, tokens: int, seq: int) -> float:
    """One KD training step: student forward + backward (3x), teacher forward."""
    return 3 * model_flops(sshape, tokens, seq) + model_flops(tshape, tokens, seq)


def matmul_ceiling(device: torch.device) -> float:
    """FLOP/s of a large matmul in the compute dtype (bf16 on CUDA, fp32 on the CPU)."""
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = 512, torch.float32, 5
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    times = []
    for i in range(reps + 3):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- correctness on the device -------------------------------------------------------------------

def check_fused_loss(device: torch.device, small: bool) -> list[dict[str, Any]]:
    """fused_kd_loss (compiled on CUDA) against float64 autograd on full logits, on the device:
    every kind, fp32 and bf16 compute, padded teacher vocab, ignored labels, ragged last chunk."""
    tokens, hs, ht, vocab = (37, 24, 40, 211) if small else (1000, 256, 384, 151936)
    pad, chunk = 16, (16 if small else 384)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 check means real fp32 matmuls
    rows = []
    try:
        for kind in ("forward_kl", "reverse_kl", "jsd"):
            for cd, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
                gen = torch.Generator(device=device).manual_seed(len(rows))
                h = torch.randn(tokens, hs, device=device, generator=gen)
                w = torch.randn(vocab, hs, device=device, generator=gen) * (2 / hs**0.5)
                th = torch.randn(tokens, ht, device=device, generator=gen)
                tw = torch.randn(vocab + pad, ht, device=device, generator=gen) * (2 / ht**0.5)
                tw[vocab:] = 5.0  # padding ids with real-looking logits: must be dropped
                if cd == torch.bfloat16:
                    th, tw = th.bfloat16(), tw.bfloat16()
                labels = torch.randint(0, vocab, (tokens,), device=device, generator=gen)
                labels[::7] = IGNORE_INDEX
                spec = KDLossSpec(2.0, 0.3, kind, beta=0.4)

                h64, w64 = h.double().requires_grad_(True), w.double().requires_grad_(True)
                ref = kd_loss_reference(h64 @ w64.t(), th.double() @ tw.double()[:vocab].t(),
                                        labels, spec)
                ref.backward()
                hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
                parts = fused_kd_loss(hh, ww, th, tw, labels, spec, chunk, compute_dtype=cd)
                parts.loss.backward()
                errs = {"loss": rel(parts.loss, ref), "grad_h": rel(hh.grad, h64.grad),
                        "grad_w": rel(ww.grad, w64.grad)}
                ok = all(math.isfinite(e) and e < tol for e in errs.values())
                rows.append({"kind": kind, "compute": str(cd)[6:], "tol": tol, **errs, "ok": ok})
                log(f"check {kind:10s} {str(cd)[6:]:8s} loss {errs['loss']:.2e} grad_h "
                    f"{errs['grad_h']:.2e} grad_w {errs['grad_w']:.2e} (tol {tol:g}) "
                    f"{'ok' if ok else 'FAIL'}")
                del h64, w64, ref, hh, ww, parts
                free_memory()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    return rows


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# -- the three variants ------------------------------------------------------------------------

def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_steps(step, device, warmup: int, steps: int) -> dict[str, Any]:
    """Warm-up steps (compilation happens here), then timed steps; peak memory of those."""
    losses = []
    t0 = time.perf_counter()
    for _ in range(warmup):
        losses.append(step())
    sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        losses.append(step())
        sync(device)
        times.append(time.perf_counter() - t0)
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    reserved = torch.cuda.max_memory_reserved(device) if cuda else 0
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "p25_s": q[0], "p75_s": q[2], "warmup_s": warm_s, "peak_gib": peak / 2**30,
            "reserved_gib": reserved / 2**30, "first_loss": losses[0],
            "last_loss": losses[-1], "step_times_s": times,
            "kernel_s": kernel_seconds(step, device) if cuda else None}


def kernel_seconds(step, device, steps: int = 3) -> float:
    """GPU time a step's kernels take, summed (one stream: the time the step would take on a
    host infinitely fast at queueing work). The wall-clock step minus this is the time the GPU
    waited for the host; it tells a GPU-bound variant from a host-bound one."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync(device)
    total_us = 0.0
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None)
        total_us += us if us is not None else getattr(evt, "self_cuda_time_total", 0)
    return total_us / 1e6 / steps


def optimizer_step(loss: torch.Tensor, params, opt) -> float:
    """What KDTrainer.train_step does after the loss: backward and clip queued, then the host
    waits for the loss value (the NaN check), step, then reads the gradient norm. (Each step
    starts with zero_grad(set_to_none=True), as the trainer's does.)"""
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
    value = loss.item()
    opt.step()
    float(norm)
    return value


def make_optimizer(params, device):
    return torch.optim.AdamW(params, lr=LR, betas=BETAS, fused=device.type == "cuda")


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def naive_kd_loss(s_logits, t_logits, labels, mask, T: float, alpha: float = 0.0):
    """The KD objective as TRL's and DistillKit's trainers compute it: full logits of both,
    log_softmax in fp32, KL(teacher || student) over the tokens that train, scaled by T^2, plus
    alpha x CE (skipped at alpha 0, as this benchmark's runs have it)."""
    s_logp = F.log_softmax(s_logits.float() / T, dim=-1)
    t_logp = F.log_softmax(t_logits.float() / T, dim=-1)
    kl = F.kl_div(s_logp, t_logp, reduction="none", log_target=True).sum(-1)
    kd = (kl * mask).sum() / mask.sum().clamp_min(1) * T * T
    if not alpha:
        return kd
    ce = F.cross_entropy(s_logits.float().flatten(0, 1), labels.flatten(),
                         ignore_index=IGNORE_INDEX)
    return alpha * ce + (1 - alpha) * kd


def run_naive(args, device, dtype, ids, labels, T: float):
    teacher, student = hf_models(args.tshape, args.sshape, device, dtype)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = make_optimizer(params, device)
    mask = labels != IGNORE_INDEX

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, use_cache=False).logits
            s_logits = student(input_ids=ids, use_cache=False).logits
        return optimizer_step(naive_kd_loss(s_logits, t_logits, labels, mask, T), params, opt)

    return time_steps(step, device, args.warmup, args.steps)


def run_liger(args, device, dtype, ids, labels, T: float, notes: list[str]):
    """Liger's kernels on transformers' Qwen2 (as Liger users run it); if they fail here, the
    loss alone on plain models, with a note saying so."""
    from transformers.models.qwen2 import modeling_qwen2

    patched = ("apply_rotary_pos_emb", "Qwen2RMSNorm", "Qwen2MLP")
    originals = {name: getattr(modeling_qwen2, name) for name in patched}
    try:
        result = _run_liger(args, device, dtype, ids, labels, T, patch=True)
        notes.append("liger: Qwen2 RMSNorm/RoPE/SwiGLU kernels applied to both models")
        return result
    except (ModuleNotFoundError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - measure the loss alone rather than nothing
        notes.append(f"liger: with its model kernels it failed ({type(exc).__name__}: "
                     f"{str(exc)[:300]}); measured its loss on plain transformers models")
        log(notes[-1])
        for name, value in originals.items():
            setattr(modeling_qwen2, name, value)
        free_memory()
        return _run_liger(args, device, dtype, ids, labels, T, patch=False)


def _run_liger(args, device, dtype, ids, labels, T: float, patch: bool):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    from liger_kernel.transformers import apply_liger_kernel_to_qwen2

    teacher, student = hf_models(args.tshape, args.sshape, device, dtype)
    if patch:
        for model in (teacher, student):
            apply_liger_kernel_to_qwen2(rope=True, rms_norm=True, swiglu=True,
                                        cross_entropy=False, fused_linear_cross_entropy=False,
                                        model=model)
    loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.0,
                                      temperature=T, chunk_size=args.liger_chunk)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = make_optimizer(params, device)
    flat = labels.reshape(-1)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            with torch.no_grad():
                t_h = teacher.model(input_ids=ids, use_cache=False).last_hidden_state
            s_h = student.model(input_ids=ids, use_cache=False).last_hidden_state
        # Liger's loss takes one dtype: bf16 operands, the fp32 master weight cast by autograd
        loss = loss_fn(s_h.reshape(-1, s_h.shape[-1]).to(dtype), student.lm_head.weight.to(dtype),
                       t_h.reshape(-1, t_h.shape[-1]).to(dtype), teacher.lm_head.weight.to(dtype),
                       flat)
        return optimizer_step(loss, params, opt)

    result = time_steps(step, device, args.warmup, args.steps)
    if getattr(args, "profile", False) and device.type == "cuda":
        profile_steps(step, device, Path(args.out) / "profile_liger.txt")
    return result


class FixedBatch:
    """Stands in for KDTrainer's sampler: the same batch every step, as the other variants."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids, self.labels


def make_trainer(args, device, dtype, ids, labels, spec: KDLossSpec, compile_models, run_dir,
                 compile_options=None):
    from kdengine.config import RunConfig
    from kdengine.data import TokenSplits
    from kdengine.providers import ModelStudent, ModelTeacher
    from kdengine.runlog import RunLog
    from kdengine.trainer import KDTrainer

    teacher, student = native_models(args.tshape, args.sshape, device, dtype)
    batch, seq = ids.shape
    config = RunConfig(teacher="bench://teacher", student="bench://student", data="bench://random",
                       steps=10**6, batch_size=batch, seq_len=seq, lr=LR, grad_clip=CLIP,
                       temperature=spec.temperature, alpha=spec.alpha, loss=spec.kind,
                       eval_batches=1, device=str(device), dtype=str(dtype)[6:])
    stream = torch.cat([ids.reshape(-1).cpu(), labels.reshape(-1)[-1:].cpu()])
    splits = TokenSplits(stream, stream, 0)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    runlog = RunLog(Path(run_dir))
    trainer = KDTrainer(config, ModelTeacher(teacher), ModelStudent(student), splits, runlog,
                        device, dtype, compile_models=compile_models,
                        compile_options=compile_options)
    trainer.sampler = FixedBatch(ids.cpu(), labels.cpu())
    return trainer, runlog


def run_kdengine(args, device, dtype, ids, labels, spec, compile_models, rounds, run_dir,
                 profile: bool = False, compile_options=None) -> dict[str, dict[str, Any]]:
    """One trainer (models compiled once per setting); a timed round per entry of `rounds`:
    dicts of name, chunk, and optionally kernel (the Triton KD kernels, default on), fused_clip
    (clip folded into fused AdamW, default on), into_logits, deterministic, concat (the
    student's concatenated projections), math (compiled chunk math, default on)."""
    from kdengine import losses as kd_losses

    trainer, runlog = make_trainer(args, device, dtype, ids, labels, spec, compile_models, run_dir,
                                   compile_options)
    blocks_compiled = trainer.compile
    fused_update = trainer._fused_update
    student = trainer.student.model
    results = {}

    def apply(r: dict[str, Any]) -> None:
        trainer.chunk_tokens = r.get("chunk", 2048)
        trainer.compile = r.get("math", True) and blocks_compiled  # the loss math only
        kd_losses.KD_KERNEL = r.get("kernel", True)
        kd_losses.GRAD_INTO_LOGITS = r.get("into_logits", False)
        trainer._fused_update = fused_update and r.get("fused_clip", True)
        torch.use_deterministic_algorithms(r.get("deterministic", False), warn_only=True)
        if "concat" in r and blocks_compiled:
            student.concat_projections(r["concat"])

    try:
        for r in rounds:
            apply(r)
            try:
                results[r["name"]] = time_steps(lambda: trainer.train_step()["loss"], device,
                                                args.warmup, args.steps)
                results[r["name"]]["kd_math"] = kd_losses.kd_kernel_status()
                kd_losses._KD_KERNELS.pop("used", None)
            except torch.OutOfMemoryError as exc:
                results[r["name"]] = {"error": f"OOM: {exc}"[:300]}
            free_memory()
        if profile and device.type == "cuda":
            apply(rounds[0])
            profile_steps(lambda: trainer.train_step()["loss"], device,
                          Path(args.out) / "profile_kdengine.txt", trace=True)
    finally:
        runlog.close()
        kd_losses.GRAD_INTO_LOGITS = False
        kd_losses.KD_KERNEL = True
        torch.use_deterministic_algorithms(False)
    return results


# first match wins: Inductor's kernels name the ops they fused (an attention's rope: "triton_..
# _scaled_dot_product_cudnn_attention_..."), and cuDNN's attention kernels carry "sm90_"
KERNEL_KINDS = (("triton (inductor/liger)", ("triton",)),
                ("attention", ("sdpa", "flash", "fmha", "attention", "attn")),
                ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "Kernel2")),
                ("optimizer", ("adam", "Adam", "multi_tensor", "foreach", "norm_kernel")),
                ("copy/cast", ("copy", "Memcpy", "Memset", "cast", "fill")))


def profile_steps(step, device, path: Path, steps: int = 2, trace: bool = False) -> None:
    """GPU time of `steps` steps by kernel, and grouped by kind, into `path` (and a summary);
    with `trace`, the GPU's timeline as a gzipped Chrome trace beside it and where the GPU
    idled (`gpu_idle`). Host ops are not recorded: tracing them slows the host several-fold,
    which on a pair whose host is the bound makes idle time that is not there."""
    from torch.profiler import ProfilerActivity, profile

    step()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync(device)
    rows = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = getattr(evt, "self_cuda_time_total", 0)
        if us > 0:
            rows.append((us / 1e3 / steps, evt.count // steps, evt.key))
    rows.sort(reverse=True)
    groups: dict[str, float] = {}
    for ms, _, name in rows:
        kind = next((k for k, keys in KERNEL_KINDS if any(x in name for x in keys)), "other")
        groups[kind] = groups.get(kind, 0.0) + ms
    total = sum(groups.values())
    lines = [f"GPU kernel time per step: {total:.1f} ms"]
    lines += [f"  {k:26s} {v:7.1f} ms" for k, v in sorted(groups.items(), key=lambda x: -x[1])]
    lines += ["", "top kernels (ms/step, launches/step, name):"]
    lines += [f"{ms:8.2f} {n:5d}  {name[:150]}" for ms, n, name in rows[:60]]
    path.write_text("\n".join(lines) + "\n")
    if trace:
        import gzip

        raw = path.with_suffix(".trace.json")
        prof.export_chrome_trace(str(raw))
        idle = gpu_idle(json.loads(raw.read_text()), steps)
        lines[1:1] = idle
        path.write_text("\n".join(lines) + "\n")
        with open(raw, "rb") as src, gzip.open(str(raw) + ".gz", "wb") as dst:
            dst.write(src.read())
        raw.unlink()
    log(f"profile {path.name}:\n" + "\n".join(lines[: len(groups) + 1] + lines[len(groups) + 2:
                                                                           len(groups) + 15]))


GPU_EVENTS = ("kernel", "gpu_memcpy", "gpu_memset")


def gpu_idle(trace: dict[str, Any], steps: int, largest: int = 12) -> list[str]:
    """Where the GPU waits in a profiled timeline: the span from its first to its last kernel,
    the time no kernel, copy or memset runs, the gaps by length, and the longest gaps with the
    kernels on either side (what the GPU finished, and what it then waited for)."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), e.get("name", "?"))
                   for e in trace.get("traceEvents", [])
                   if e.get("ph") == "X" and e.get("cat") in GPU_EVENTS)
    if not spans:
        return ["GPU idle: no GPU events in the trace"]
    gaps: list[tuple[float, str, str]] = []
    end, before = spans[0][1], spans[0][2]
    for start, stop, name in spans[1:]:
        if start > end:
            gaps.append((start - end, before, name))
        if stop > end:
            end, before = stop, name
    span_us = end - spans[0][0]
    idle_us = sum(g for g, _, _ in gaps)
    buckets = ((0, 5), (5, 20), (20, 100), (100, 1000), (1000, float("inf")))
    lines = [f"GPU timeline per step: span {span_us / 1e3 / steps:.1f} ms, idle "
             f"{idle_us / 1e3 / steps:.2f} ms in {len(gaps) / steps:.0f} gaps"]
    for lo, hi in buckets:
        chosen = [g for g, _, _ in gaps if lo <= g < hi]
        lines.append(f"  gaps {lo:g}-{hi:g} us: {len(chosen) / steps:7.1f} a step, "
                     f"{sum(chosen) / 1e3 / steps:6.2f} ms a step")
    lines.append("  longest gaps (us, after -> before):")
    for g, after, nxt in sorted(gaps, reverse=True)[:largest]:
        lines.append(f"  {g:9.1f}  {after[:70]} -> {nxt[:70]}")
    return lines


# -- driver --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny models and batch (CI, CPU)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--chunks", default=None, help="kdengine chunk sizes, comma separated")
    parser.add_argument("--liger-chunk", type=int, default=1024)
    parser.add_argument("--variants",
                        default="check,kdengine,naive,liger,ablations,profile")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time kdengine (headline setting), naive and liger this many more "
                             "times, interleaved, to see the run-to-run scatter of the ratios")
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    small = args.small
    # The checks compile the chunk math once per loss kind and dtype; the default limit (8
    # graphs per function) would silently send the later variants to eager.
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    args.tshape, args.sshape = (TINY_TEACHER, TINY_STUDENT) if small else (QWEN25_1_5B, QWEN25_0_5B)
    batch = args.batch or (2 if small else 4)
    seq = args.seq or (64 if small else 2048)
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 3)
    args.steps = args.steps or (2 if small else 20)
    # the first entry is the headline setting (and the one the ablations and profile use)
    chunks = [int(c) for c in (args.chunks or ("32,128" if small else "2048,4096")).split(",")]
    variants = set(args.variants.split(","))
    args.profile = "profile" in variants
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = batch * seq
    T = 1.0
    spec = KDLossSpec(temperature=T, alpha=0.0, kind="forward_kl")

    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "cuda": torch.version.cuda, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    for pkg in ("transformers", "liger_kernel", "triton"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001 - absent or broken: the variant says skipped
            env[pkg] = None
    log(f"env {json.dumps(env)}")
    results: dict[str, Any] = {"env": env, "batch": batch, "seq": seq, "tokens": tokens,
                               "dtype": str(dtype)[6:], "warmup": args.warmup,
                               "steps": args.steps, "variants": {}, "notes": []}
    flops = step_flops(args.tshape, args.sshape, tokens, seq)
    results["step_flops"] = flops

    def save() -> None:
        (out / "kd_throughput.json").write_text(json.dumps(results, indent=1))

    ceiling = matmul_ceiling(device)
    results["matmul_ceiling_flops"] = ceiling
    what = "bf16 8192^3" if device.type == "cuda" else "fp32 512^3"
    log(f"matmul ceiling {ceiling / 1e12:.1f} TFLOP/s ({what}); step {flops / 1e12:.2f} TFLOP")
    save()

    failed_check = False
    if "check" in variants:
        rows = check_fused_loss(device, small)
        results["check"] = rows
        failed_check = not all(r["ok"] for r in rows)
        save()

    ids, labels = random_batch(args.sshape["vocab_size"], batch, seq, device)

    def record(name: str, fn) -> None:
        free_memory()
        log(f"--- {name}")
        try:
            res = fn()
        except ModuleNotFoundError as exc:
            res = {"skipped": f"{exc}"}
        except torch.OutOfMemoryError as exc:
            res = {"error": f"OOM: {str(exc)[:300]}"}
        except Exception as exc:  # noqa: BLE001 - one broken variant must not lose the others
            res = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                   "traceback": traceback.format_exc()[-4000:]}
        subs = res if res and all(isinstance(v, dict) for v in res.values()) else {"": res}
        for sub, r in subs.items():
            label = f"{name}[{sub}]" if sub else name
            if "median_s" in r:
                r["tokens_per_s"] = tokens / r["median_s"]
                r["mfu"] = flops / r["median_s"] / ceiling
                log(f"{label}: {r['tokens_per_s']:,.0f} tok/s, step {r['median_s'] * 1e3:.1f} "
                    f"ms (kernels {(r.get('kernel_s') or 0) * 1e3:.1f} ms), peak "
                    f"{r['peak_gib']:.2f} GiB, MFU {r['mfu'] * 100:.1f}%, loss "
                    f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}, "
                    f"warm-up {r['warmup_s']:.1f} s")
            else:
                log(f"{label}: {r}")
            results["variants"][label] = r
        save()

    with tempfile.TemporaryDirectory() as tmp:
        from kdengine.compiled import PER_BLOCK_COMPILE, CompileOptions

        c0 = chunks[0]
        if "kdengine" in variants:
            rounds = [{"name": f"chunk={c}", "chunk": c, "concat": True} for c in chunks]
            if "ablations" in variants:  # one change at a time, off the default
                rounds += [
                    {"name": f"chunk={c0}, compiled chunk math (no Triton kernel)", "chunk": c0,
                     "kernel": False},
                    {"name": f"chunk={c0}, clip as its own pass", "chunk": c0,
                     "fused_clip": False},
                    {"name": f"chunk={c0}, gradient written into the logit block", "chunk": c0,
                     "into_logits": True},
                    {"name": f"chunk={c0}, deterministic algorithms on", "chunk": c0,
                     "deterministic": True},
                    {"name": f"chunk={c0}, student projections not concatenated", "chunk": c0,
                     "concat": False},
                ]
            record("kdengine", lambda: run_kdengine(args, device, dtype, ids, labels, spec, None,
                                                    rounds, Path(tmp) / "k1",
                                                    profile="profile" in variants))
            # attempt 3's engine: blocks compiled one by one, compiled chunk math, clip pass
            before = [{"name": f"chunk={c0}", "chunk": c0, "kernel": False, "fused_clip": False}]
            record("kdengine-attempt3", lambda: run_kdengine(
                args, device, dtype, ids, labels, spec, None, before, Path(tmp) / "k0",
                compile_options=PER_BLOCK_COMPILE))
        # naive before liger: Liger's patches replace transformers' Qwen2 classes process-wide
        if "naive" in variants:
            record("naive", lambda: run_naive(args, device, dtype, ids, labels, T))
        if "liger" in variants:
            record("liger", lambda: run_liger(args, device, dtype, ids, labels, T,
                                              results["notes"]))
        if "ablations" in variants:
            one = [{"name": f"chunk={c0}", "chunk": c0}]
            if device.type == "cuda":
                record("kdengine-teacher-cudagraphs", lambda: run_kdengine(
                    args, device, dtype, ids, labels, spec, None, one, Path(tmp) / "k4",
                    compile_options=CompileOptions(teacher="model", teacher_cudagraphs=True)))
                record("kdengine-student-whole-model", lambda: run_kdengine(
                    args, device, dtype, ids, labels, spec, None, one, Path(tmp) / "k5",
                    compile_options=CompileOptions(student="model")))
                record("kdengine-eager", lambda: run_kdengine(
                    args, device, dtype, ids, labels, spec, False, one, Path(tmp) / "k2"))
            mixed = KDLossSpec(temperature=2.0, alpha=0.3, kind="forward_kl")
            record("kdengine-ce+kd(T=2,alpha=0.3)", lambda: run_kdengine(
                args, device, dtype, ids, labels, mixed, None, one, Path(tmp) / "k3"))

        if "sdpa" in variants and device.type == "cuda":
            # attention backends other than cuDNN's (SDPA's pick on an H100) for both models:
            # compiled afresh, so the graphs lower to the kernel asked for
            one = [{"name": f"chunk={c0}", "chunk": c0}]
            for backend in ("flash", "mem_efficient"):
                record(f"kdengine-sdpa-{backend}", lambda backend=backend: with_sdpa_backend(
                    backend, lambda: run_kdengine(args, device, dtype, ids, labels, spec, None,
                                                  one, Path(tmp) / f"sdpa-{backend}")))

        for i in range(2, args.repeat + 2 if args.repeat > 1 else 0):
            one = [{"name": f"chunk={c0}", "chunk": c0}]
            if "kdengine" in variants:
                record(f"kdengine#{i}", lambda one=one, i=i: run_kdengine(
                    args, device, dtype, ids, labels, spec, None, one, Path(tmp) / f"r{i}"))
            if "naive" in variants:
                record(f"naive#{i}", lambda: run_naive(args, device, dtype, ids, labels, T))
            if "liger" in variants:
                record(f"liger#{i}", lambda: run_liger(args, device, dtype, ids, labels, T,
                                                       results["notes"]))

    from kdengine import losses as kd_losses

    if kd_losses._COMPILED_MATH.get("broken"):
        broken = kd_losses._COMPILED_MATH["broken"]
        results["notes"].append(f"kdengine chunk math ran eager: {broken}")
    results["notes"].append(f"mixed-dtype addmm for grad_w: {kd_losses._MIXED_ADDMM}")
    for note in results["notes"]:
        log(f"note: {note}")
    table = summary_table(results)
    results["table"] = table
    save()
    (out / "kd_throughput.md").write_text(table + "\n")
    log("\n" + table)
    if failed_check:
        log("CORRECTNESS CHECK FAILED")
    return 1 if failed_check else 0


def with_sdpa_backend(backend: str, fn):
    """fn() with only `backend` of SDPA's CUDA kernels enabled (math stays as the fallback)."""
    flags = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
             for name in ("cudnn", "flash", "mem_efficient")}
    torch._dynamo.reset()
    try:
        for name in flags:
            getattr(torch.backends.cuda, f"enable_{name}_sdp")(name == backend)
        return fn()
    finally:
        for name, on in flags.items():
            getattr(torch.backends.cuda, f"enable_{name}_sdp")(on)
        torch._dynamo.reset()


def summary_table(results: dict[str, Any]) -> str:
    lines = ["| variant | tokens/s | step (ms) | p25-p75 (ms) | GPU kernels (ms) | peak GPU mem "
             "(GiB) | reserved (GiB) | MFU |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results["variants"].items():
        if "median_s" in r:
            kernels = f"{r['kernel_s'] * 1e3:.1f}" if r.get("kernel_s") else "-"
            lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['median_s'] * 1e3:.1f} | "
                         f"{r['p25_s'] * 1e3:.1f}-{r['p75_s'] * 1e3:.1f} | {kernels} | "
                         f"{r['peak_gib']:.2f} | {r['reserved_gib']:.2f} | {r['mfu'] * 100:.1f}% |")
        else:
            why = r.get("skipped") or r.get("error", "?")
            lines.append(f"| {name} | - | - | - | - | - | - | {why.splitlines()[0][:60]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
