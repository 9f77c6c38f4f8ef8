"""The FP8 student on a GPU: is it right, is each projection faster, what does it do to training.

1. check: `fp8_linear` (kdengine.models.fp8_train: rowwise e4m3 forward, dx and dW through
   torch._scaled_mm) on each student's block shapes at 8192 rows, eager and compiled, against
   the same three products written out in fp32 from the dequantized operands; and the time of
   forward + backward, compiled, against F.linear under bf16 autocast from the same fp32 master
   weight (what the trainer runs with `student_matmuls auto`).
2. curve: `kdengine train --demo` (the demo teacher trained on the Python stdlib, a fresh student)
   for --curve-steps steps on this GPU, student_matmuls auto and float8 side by side: held-out
   val_ce at every evaluation, tokens/s.

    python3 benchmarks/fp8_student.py --out DIR [--students Qwen2.5-0.5B,Llama-3.2-1B,Qwen3-0.6B]

Prints one JSON line per measurement and writes DIR/fp8_student.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fp8_teacher import emit, fresh_compiler, rel, run_phases  # noqa: E402
from pairs import MODELS  # noqa: E402

from kdengine.models.fp8_train import fp8_linear, reference_grads  # noqa: E402

ROWS = 8192  # 4 x 2048, the pairs' batch


def block_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of a block's projections as the trainer runs them (q/k/v and gate/up
    concatenated)."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * hd
    return {"qkv": (qkv, h), "o": (h, cfg["num_attention_heads"] * hd),
            "gate_up": (2 * inter, h), "down": (h, inter)}


def fwd_bwd(fn, x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor):
    """out, dx, dW of fn(x, w) under bf16 autocast, as the trainer calls a projection."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = fn(x, w)
    out.backward(grad)
    return out.detach(), x.grad, w.grad


def kernel_ms(fn, calls: int = 5) -> tuple[float, list[tuple[float, str]]]:
    """GPU kernel time of one fn() (the mean over `calls`), and its kernels by time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [(getattr(e, "self_device_time_total", 0) / 1e3 / calls, e.key)
            for e in prof.key_averages()]
    rows = sorted(((round(ms, 4), key[:90]) for ms, key in rows if ms > 0), reverse=True)
    return sum(ms for ms, _ in rows), rows[:10]


def columns_kernel_check(*tensors: torch.Tensor) -> dict:
    """fp8_kernels' one-pass column quantization against the same values from torch ops: how
    many e4m3 bytes differ (0 expected: the same division, clamp and round-to-nearest-even),
    and its GPU time against Inductor's fusion of the same ops."""
    import kdengine.models.fp8_train as fp8_train
    from kdengine.models.fp8_train import _columns, _load_columns_kernel

    _load_columns_kernel()
    kernel = fp8_train._columns_kernel
    if kernel is None:
        return {"error": "no Triton: the kernel is not in use", "differing_bytes": 0}
    differing = 0
    for t in tensors:
        values, scale = _columns(t)
        fp8_train._columns_kernel = None
        try:
            expected, _ = _columns(t)
        finally:
            fp8_train._columns_kernel = kernel
        differing += int((values.view(torch.uint8) != expected.view(torch.uint8)).sum())
    t = tensors[0]
    fresh_compiler()
    fused = torch.compile(lambda t: fp8_train.quantize_rowwise(t.t())[0].contiguous())
    kernel_ms_, _ = kernel_ms(lambda: _columns(t))
    inductor_ms, _ = kernel_ms(lambda: fused(t))
    return {"differing_bytes": differing, "kernel_ms": kernel_ms_, "inductor_ms": inductor_ms,
            "shape": list(t.shape)}


def check_ops(names: list[str], device: torch.device) -> None:
    from kdengine.models.fp8_train import _load_columns_kernel

    _load_columns_kernel()  # as use_fp8_matmuls does for a run on the GPU
    gen = torch.Generator(device=device).manual_seed(0)
    for name in names:
        for part, (out_f, in_f) in block_shapes(MODELS[name]).items():
            w = torch.randn(out_f, in_f, device=device, generator=gen) * 0.02  # fp32 master
            x = torch.randn(ROWS, in_f, device=device, generator=gen, dtype=torch.bfloat16)
            grad = torch.randn(ROWS, out_f, device=device, generator=gen,
                               dtype=torch.bfloat16) * 1e-3
            fresh_compiler()
            fp8 = torch.compile(fp8_linear)
            bf16_linear = torch.compile(lambda x, w: F.linear(x, w))
            eager = fwd_bwd(fp8_linear, x, w, grad)
            compiled = fwd_bwd(fp8, x, w, grad)
            bf16 = fwd_bwd(bf16_linear, x, w, grad)
            ref = reference_grads(x.float(), w, grad.float())
            columns = columns_kernel_check(x, grad)
            errs = {k: {"vs_dequantized": rel(e, r), "compiled_vs_eager": rel(c, e),
                        "vs_bf16": rel(e, b)}
                    for k, e, c, b, r in zip(("out", "dx", "dW"), eager, compiled, bf16, ref,
                                             strict=True)}
            # GPU kernel time, not wall time: one projection alone is too short to keep the GPU
            # ahead of Python's autograd (the wall clock measured the host for all but the
            # widest shapes in the first run)
            bf16_ms, _ = kernel_ms(partial(fwd_bwd, bf16_linear, x, w, grad))
            fp8_ms, kernels = kernel_ms(partial(fwd_bwd, fp8, x, w, grad))
            flops = 6 * ROWS * out_f * in_f
            emit(phase="check", model=name, part=part, shape=[ROWS, in_f, out_f], errors=errs,
                 bf16_gpu_ms=bf16_ms, fp8_gpu_ms=fp8_ms, fp8_kernels=kernels,
                 bf16_tflops=flops / bf16_ms / 1e9, fp8_tflops=flops / fp8_ms / 1e9,
                 speedup=bf16_ms / fp8_ms, columns_kernel=columns,
                 ok=all(v["vs_dequantized"] < 2e-2 and v["compiled_vs_eager"] < 2e-2
                        for v in errs.values()) and columns["differing_bytes"] == 0)


def curve(steps: int, device: torch.device) -> None:
    """The demo run with the student's matmuls in bf16 and in FP8, one after the other."""
    work = Path(tempfile.mkdtemp(prefix="fp8_student_"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KDENGINE_CACHE": str(work / "cache")}
    rows = {}
    for mode in ("auto", "float8"):
        run_dir = work / f"run-{mode}"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "kdengine", "train", "--demo", "--steps", str(steps),
             "--eval-every", str(max(steps // 8, 1)), "--device", str(device),
             "--student-matmuls", mode, "--run-dir", str(run_dir)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text()
                  .splitlines() if line.strip()] if (run_dir / "events.jsonl").exists() else []
        evals = {e["step"]: round(e["val_ce"], 4) for e in events if e["type"] == "eval"}
        rates = [e["tokens_per_s"] for e in events if e["type"] == "step"][3:]
        rows[mode] = {"exit_code": done.returncode, "wall_s": round(time.perf_counter() - start),
                      "val_ce": evals,
                      "tokens_per_s": statistics.median(rates) if rates else None,
                      **({"tail": done.stderr[-1500:]} if done.returncode else {})}
    emit(phase="curve", data="demo: the Python stdlib, held-out split", steps=steps, **rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--students", default="Qwen2.5-0.5B,Llama-3.2-1B,Qwen3-0.6B")
    parser.add_argument("--phases", default="check,curve")
    parser.add_argument("--curve-steps", type=int, default=400)
    args = parser.parse_args()
    device = torch.device("cuda")
    names = [n for n in args.students.split(",") if n]
    phases = args.phases.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    emit(phase="env", torch=torch.__version__, gpu=torch.cuda.get_device_name(device))
    return run_phases({"check": lambda: check_ops(names, device),
                       "curve": lambda: curve(args.curve_steps, device)},
                      phases, args.out / "fp8_student.json")

if __name__ == "__main__":
    sys.exit(main())
