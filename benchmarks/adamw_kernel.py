"""kdengine's Triton AdamW (kdengine.adamw_kernel) on a GPU: is it torch's fused AdamW, how fast.

1. check: parameters of awkward sizes (1 element to 4M, none a multiple of the block), three
   steps through both kernels from the same state: a clipped step (grad_scale 2.5), a skipped
   one (found_inf: nothing may move, the step counters neither), an unclipped one. Parameters,
   both moments and the counters compared; the largest difference relative to each tensor's
   largest value printed (under 1e-6: an ulp or two of fp32).
2. speed: the update of a student's whole parameter set (default Llama-3.2-1B, fp32 masters as
   the trainer keeps them), GPU time from CUDA events, torch's fused kernel against the Triton
   one, and the gradient norm the trainer computes before either; GB/s over the bytes each
   must move (28 a parameter).

    python3 benchmarks/adamw_kernel.py --out DIR [--student Llama-3.2-1B]

Prints one JSON line per measurement and writes DIR/adamw_kernel.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fp8_teacher import emit, run_phases  # noqa: E402
from pairs import MODELS  # noqa: E402

from kdengine import adamw_kernel  # noqa: E402

SETTINGS = {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "eps": 1e-8}


def torch_step(optimizer, grad_scale, found_inf) -> None:
    optimizer.grad_scale, optimizer.found_inf = grad_scale, found_inf
    try:
        optimizer.step()
    finally:
        optimizer.grad_scale = optimizer.found_inf = None


def twin_optimizers(shapes, device, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, device=device, generator=gen)) for s in shapes]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twins, strict=True):
        p.grad = torch.randn(p.shape, device=device, generator=gen)
        q.grad = p.grad.clone()
    return (params, torch.optim.AdamW(params, fused=True, **SETTINGS),
            twins, torch.optim.AdamW(twins, fused=True, **SETTINGS))


def check(device: torch.device) -> None:
    shapes = [(1,), (7,), (2047,), (3, 683), (2048, 2048), (12293,), (1000, 4099)]
    params, reference, twins, ours = twin_optimizers(shapes, device)
    zero, one = (torch.tensor(v, device=device) for v in (0.0, 1.0))
    worst = {}
    for name, scale, found in (("clipped", torch.tensor(2.5, device=device), zero),
                               ("skipped", None, one), ("plain", None, zero)):
        before = [q.detach().clone() for q in twins]
        torch_step(reference, scale, found)
        adamw_kernel.adamw_step(ours, scale, found)
        for p, q in zip(params, twins, strict=True):
            p.grad.normal_()
            q.grad.copy_(p.grad)
        diffs = []
        for p, q in zip(params, twins, strict=True):
            a, b = reference.state[p], ours.state[q]
            for x, y in ((p, q), (a["exp_avg"], b["exp_avg"]), (a["exp_avg_sq"], b["exp_avg_sq"])):
                # relative to the tensor's largest value: an element the update brought to ~0
                # differs by an ulp of its operands, not of itself
                diffs.append(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30)))
            assert float(a["step"]) == float(b["step"]), (name, a["step"], b["step"])
        moved = any(not torch.equal(b, q) for b, q in zip(before, twins, strict=True))
        worst[name] = max(diffs)
        emit(phase="check", step=name, max_rel_diff=max(diffs), moved=moved,
             step_counter=float(ours.state[twins[0]]["step"]),
             ok=max(diffs) < 1e-6 and moved == (name != "skipped"))


def speed(device: torch.device, student: str, repeats: int = 10) -> None:
    from kdengine.models import Decoder, DecoderConfig

    with torch.device(device):
        model = Decoder(DecoderConfig(**MODELS[student]))  # fp32, as the trainer keeps it
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    n = sum(p.numel() for p in params)
    zero, scale = torch.tensor(0.0, device=device), torch.tensor(1.5, device=device)
    optimizers = {"torch fused": torch.optim.AdamW(params, fused=True, **SETTINGS),
                  "triton": torch.optim.AdamW(params, fused=True, **SETTINGS)}
    runs = {"torch fused": lambda o: torch_step(o, scale, zero),
            "triton": lambda o: adamw_kernel.adamw_step(o, scale, zero)}
    grads = [p.grad for p in params]
    results = {"grad norm": lambda: torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)}
    for name, optimizer in optimizers.items():
        results[name] = (lambda o=optimizer, run=runs[name]: run(o))
    for name, fn in results.items():
        fn()
        fn()  # the state made, Triton compiled
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / repeats
        moved = n * (4 if name == "grad norm" else 28)
        emit(phase="speed", student=student, kernel=name, params=n, tensors=len(params),
             ms=round(ms, 3), gb_per_s=round(moved / ms / 1e6, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--student", default="Llama-3.2-1B")
    parser.add_argument("--phases", default="check,speed")
    args = parser.parse_args()
    device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    return run_phases({"check": lambda: check(device),
                       "speed": lambda: speed(device, args.student)},
                      args.phases.split(","), args.out / "adamw_kernel.json")


if __name__ == "__main__":
    sys.exit(main())
