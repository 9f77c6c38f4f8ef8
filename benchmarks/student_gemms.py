"""The student's matmuls of one training step, shape by shape, on the GPU: where Qwen2.5-0.5B's
bf16 matmuls lose time against the machine's ceiling, and what FP8 or Inductor's autotuned
kernels would give there (issue 16: the one pair under dense MFU 0.75).

For each of the student's block projections (8,192 tokens) and each chunk of its lm head, the
three products of a training step (y = x W^T, dx = dy W, dW = dy^T x) in the layouts autograd
uses, timed by the profiler's kernel time (not the host's launch):
  bf16       torch.mm, cuBLAS as the engine's step runs it
  autotune   the same mm compiled with Inductor's max-autotune (cuBLAS and Triton templates)
  fp8        torch._scaled_mm on rowwise-scaled e4m3 operands already in place: the matmul
             alone, no quantization pass (the bound an FP8 GEMM with fused quantization nears)

    python3 benchmarks/student_gemms.py [--student Qwen2.5-0.5B] [--no-autotune]

Prints one JSON line a product, then the step's totals (each product times its count a step).
"""

from __future__ import annotations

import argparse
import json

import torch
from norm_kernel import kernel_ms  # benchmarks/, the script's own folder

TOKENS = 8192
CHUNK = 2048  # the fused loss's chunk (kdengine.trainer's chunk_tokens)

# (hidden, q heads x head dim, kv heads x head dim, intermediate, vocab, layers)
STUDENTS = {
    "Qwen2.5-0.5B": (896, 896, 128, 4864, 151936, 24),
    "Qwen3-0.6B": (1024, 2048, 1024, 3072, 151936, 28),
}


def projections(student: str) -> list[tuple[str, int, int, int, int]]:
    """(name, rows, in, out, count a step) of each matmul's forward shape."""
    hidden, q, kv, inter, vocab, layers = STUDENTS[student]
    return [("qkv", TOKENS, hidden, q + 2 * kv, layers), ("o", TOKENS, q, hidden, layers),
            ("gate_up", TOKENS, hidden, 2 * inter, layers), ("down", TOKENS, inter, hidden, layers),
            ("head", CHUNK, hidden, vocab, TOKENS // CHUNK)]


def products(rows: int, k: int, n: int, gen: torch.Generator) -> dict[str, tuple]:
    """Each product's bf16 operands, as autograd passes them to mm: (a, b) with a @ b."""
    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    x, w, dy = r(rows, k), r(n, k), r(rows, n)
    return {"fwd": (x, w.t()), "dx": (dy, w), "dw": (dy.t(), x)}


def fp8_operands(a: torch.Tensor, b: torch.Tensor):
    """a row-major and b column-major in e4m3, each scaled along the summed dimension."""
    def rows(t):  # t [m, k] quantized along k, row-major
        t = t.contiguous().float()
        scale = t.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 448.0
        return (t / scale).to(torch.float8_e4m3fn), scale
    qa, sa = rows(a)
    qbt, sb = rows(b.t())  # b^T [n, k] row-major is b [k, n] column-major
    return qa, qbt.t(), sa, sb.t()


def tflops(m: int, k: int, n: int, ms: float) -> float:
    return 2 * m * k * n / ms / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--student", default="Qwen2.5-0.5B", choices=sorted(STUDENTS))
    p.add_argument("--no-autotune", action="store_true")
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    totals: dict[str, float] = {}
    flop = 0.0
    tuned = (None if args.no_autotune else
             torch.compile(torch.mm, mode="max-autotune-no-cudagraphs", dynamic=False))
    for name, rows, k, n, count in projections(args.student):
        for product, (a, b) in products(rows, k, n, gen).items():
            m, kk, nn = a.shape[0], a.shape[1], b.shape[1]
            row = {"proj": name, "product": product, "m": m, "k": kk, "n": nn, "count": count}
            times = {"bf16": kernel_ms(lambda a=a, b=b: torch.mm(a, b), args.repeat)}
            if tuned is not None:
                times["autotune"] = kernel_ms(lambda a=a, b=b: tuned(a, b), args.repeat)
            ops = fp8_operands(a, b)
            times["fp8"] = kernel_ms(lambda ops=ops: torch._scaled_mm(
                ops[0], ops[1], scale_a=ops[2], scale_b=ops[3], out_dtype=torch.bfloat16),
                args.repeat)
            for label, ms in times.items():
                row[f"{label}_ms"] = round(ms, 4)
                row[f"{label}_tflops"] = round(tflops(m, kk, nn, ms), 1)
                totals[label] = totals.get(label, 0.0) + count * ms
            flop += count * 2 * m * kk * nn
            print(json.dumps(row), flush=True)
    print(json.dumps({"student": args.student, "step_tflop": round(flop / 1e12, 2),
                      **{f"step_{k}_ms": round(v, 2) for k, v in totals.items()},
                      **{f"step_{k}_tflops": round(flop / v / 1e9, 1)
                         for k, v in totals.items()}}), flush=True)


if __name__ == "__main__":
    main()
