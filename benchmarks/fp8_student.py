"""The FP8 student on a GPU: is it right, is its MLP faster, what does it do to training.

1. mlp: the student's MLP as one function (kdengine.models.fp8_train.fp8_swiglu_mlp) at 8192
   rows: its two SwiGLU kernels (fp8_kernels.swiglu_rows, swiglu_backward_rows) and the
   weights' column quantization (quantize_columns_t) against torch's ops and kdengine::swiglu's,
   and forward + backward of the whole MLP, compiled, in GPU kernel time, against bf16 autocast
   from the same fp32 masters (F.linear, kdengine::swiglu, F.linear: what the trainer runs with
   `student_matmuls auto`); its errors against that and against the eager function.
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

ROWS = 8192  # 4 x 2048, the pairs' batch


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
    """fp8_kernels' one-pass column quantization (dx's weight operand) against the same values
    from torch ops: how many e4m3 bytes differ (0 expected: the same division, clamp and
    round-to-nearest-even), and the time of the scales and the kernel, compiled as in a
    training step, against Inductor's fusion of the whole."""
    import kdengine.models.fp8_train as fp8_train
    from kdengine.models.fp8_train import _columns, _load_kernels

    _load_kernels()
    kernels = fp8_train._kernels
    if kernels is None:
        return {"error": "no Triton: the kernel is not in use", "differing_bytes": 0}
    differing = 0
    for t in tensors:
        values, scale = _columns(t)
        fp8_train._kernels = None
        try:
            expected, _ = _columns(t)
        finally:
            fp8_train._kernels = kernels
        differing += int((values.view(torch.uint8) != expected.view(torch.uint8)).sum())
    t = tensors[0]
    fresh_compiler()
    fused = torch.compile(lambda t: fp8_train.quantize_rowwise(t.t())[0].contiguous())
    compiled = torch.compile(_columns)
    kernel_ms_, _ = kernel_ms(lambda: compiled(t))
    inductor_ms, _ = kernel_ms(lambda: fused(t))
    return {"differing_bytes": differing, "kernel_ms": kernel_ms_, "inductor_ms": inductor_ms,
            "shape": list(t.shape)}


def check_mlp(names: list[str], device: torch.device) -> None:
    import kdengine.models.fp8_train as fp8_train
    from kdengine.models import swiglu as swiglu_module

    fp8_train._load_kernels()
    swiglu_module.load_kernels()
    gen = torch.Generator(device=device).manual_seed(1)
    for name in names:
        check_mlp_of(name, MODELS[name], device, gen)


def check_mlp_of(name: str, cfg: dict, device: torch.device, gen: torch.Generator) -> None:
    from fp8_teacher import one_step_apart

    import kdengine.models.fp8_train as fp8_train
    from kdengine.models import swiglu as swiglu_module
    from kdengine.models.fp8_kernels import swiglu_backward_rows, swiglu_rows
    from kdengine.models.swiglu_kernels import swiglu as swiglu_op
    from kdengine.models.swiglu_kernels import swiglu_backward

    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    gate_up = torch.randn(ROWS, 2 * inter, device=device, generator=gen,
                          dtype=torch.bfloat16)
    gate_up[:64] *= 40  # rows with outliers, as a trained MLP has
    dh = torch.randn(ROWS, inter, device=device, generator=gen, dtype=torch.bfloat16) * 1e-3
    dh[64:128] *= 1e-4  # rows whose gradient is small: their own scales
    # the kernels against torch's ops (fp8_train's CPU path) and kdengine::swiglu's
    fresh_compiler()
    unfused_forward = torch.compile(lambda g: fp8_train._rows(swiglu_op(g)))
    unfused_backward = torch.compile(lambda g, d: fp8_train._rows(swiglu_backward(g, d)))
    kernels = fp8_train._kernels
    fwd, bwd = swiglu_rows(gate_up), swiglu_backward_rows(gate_up, dh)
    fp8_train._kernels = None
    try:
        fwd_ops, bwd_ops = fp8_train._swiglu_rows(gate_up), \
            fp8_train._swiglu_backward_rows(gate_up, dh)
    finally:
        fp8_train._kernels = kernels
    kernels_row = {
        "forward_hidden_differing_vs_swiglu_op": float(
            (fwd[0] != swiglu_op(gate_up)).float().mean()),
        "forward_hidden_rel_vs_ops": rel(fwd[0], fwd_ops[0]),
        "forward_values_vs_ops": one_step_apart(fwd[1:], fwd_ops[1:]),
        "backward_grads_differing_vs_swiglu_backward": float(
            (bwd[0] != swiglu_backward(gate_up, dh)).float().mean()),
        "backward_grads_rel_vs_ops": rel(bwd[0], bwd_ops[0]),
        "backward_values_vs_ops": one_step_apart(bwd[1:], bwd_ops[1:]),
        "forward_ms": kernel_ms(lambda: swiglu_rows(gate_up))[0],
        "backward_ms": kernel_ms(lambda: swiglu_backward_rows(gate_up, dh))[0],
        # what the per-projection path runs: kdengine's SwiGLU kernel, then Inductor's
        # quantization of its output as a pass of its own
        "forward_unfused_ms": kernel_ms(lambda: unfused_forward(gate_up))[0],
        "backward_unfused_ms": kernel_ms(lambda: unfused_backward(gate_up, dh))[0]}
    # the whole MLP, forward + backward, compiled, from fp32 masters under bf16 autocast
    w_gate_up = torch.randn(2 * inter, h, device=device, generator=gen) * 0.02
    w_down = torch.randn(h, inter, device=device, generator=gen) * 0.02
    x = torch.randn(ROWS, h, device=device, generator=gen, dtype=torch.bfloat16)
    grad = torch.randn(ROWS, h, device=device, generator=gen, dtype=torch.bfloat16) * 1e-3

    def bf16(x, gu, d):
        return F.linear(swiglu_module.swiglu(F.linear(x, gu)), d)

    fresh_compiler()
    variants = {"bf16": torch.compile(bf16),
                "fp8_one_function": torch.compile(fp8_train.fp8_swiglu_mlp)}

    def step(fn):
        leaves = [t.detach().requires_grad_() for t in (x, w_gate_up, w_down)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(*leaves)
        out.backward(grad)
        return [out.detach()] + [t.grad for t in leaves]

    results = {k: step(fn) for k, fn in variants.items()}
    eager = step(fp8_train.fp8_swiglu_mlp)
    errors = {k: {part: rel(a, b) for part, a, b in zip(
        ("out", "dx", "d_gate_up", "d_down"), results[k], results["bf16"], strict=True)}
        for k in ("fp8_one_function",)}
    errors["compiled_vs_eager"] = {part: rel(a, b) for part, a, b in zip(
        ("out", "dx", "d_gate_up", "d_down"), results["fp8_one_function"], eager,
        strict=True)}
    ms = {k: kernel_ms(partial(step, fn)) for k, fn in variants.items()}
    columns = columns_kernel_check(w_gate_up, w_down)
    flops = 6 * ROWS * 3 * inter * h
    emit(phase="mlp", model=name, shape=[ROWS, h, inter], kernels=kernels_row,
         columns_kernel=columns,
         errors=errors, gpu_ms={k: v[0] for k, v in ms.items()},
         tflops={k: flops / v[0] / 1e9 for k, v in ms.items()},
         one_function_kernels=ms["fp8_one_function"][1],
         speedup_vs_bf16=ms["bf16"][0] / ms["fp8_one_function"][0],
         ok=(kernels_row["forward_values_vs_ops"]["beyond_one_step"] == 0
             and kernels_row["backward_values_vs_ops"]["beyond_one_step"] == 0
             and kernels_row["backward_grads_differing_vs_swiglu_backward"] < 1e-3
             and kernels_row["forward_hidden_differing_vs_swiglu_op"] < 1e-2
             and all(v < 0.1 for v in errors["fp8_one_function"].values())
             and all(v < 2e-2 for v in errors["compiled_vs_eager"].values())
             and columns["differing_bytes"] == 0))


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
    parser.add_argument("--phases", default="mlp,curve")
    parser.add_argument("--curve-steps", type=int, default=400)
    args = parser.parse_args()
    device = torch.device("cuda")
    names = [n for n in args.students.split(",") if n]
    phases = args.phases.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    emit(phase="env", torch=torch.__version__, gpu=torch.cuda.get_device_name(device))
    return run_phases({"mlp": lambda: check_mlp(names, device),
                       "curve": lambda: curve(args.curve_steps, device)},
                      phases, args.out / "fp8_student.json")

if __name__ == "__main__":
    sys.exit(main())
