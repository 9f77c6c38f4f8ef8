"""A trained model's SwiGLU on the GPU, forward and backward: the Triton kernels
(kdengine.models.swiglu) against what Inductor makes of torch's ops, on the students' shapes
(8192 rows of Qwen3-0.6B's, Qwen2.5-0.5B's and Llama-3.2-1B's gate/up): their values and
gradients against an fp32 reference, and the profiler's kernel time (not the host's).

    python3 benchmarks/swiglu_kernel.py
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from norm_kernel import kernel_ms  # benchmarks/, the script's own folder

from kdengine.models import swiglu as swiglu_module

STUDENTS = {"Qwen3-0.6B": 3072, "Qwen2.5-0.5B": 4864, "Llama-3.2-1B": 8192}


def torch_ops(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def step(fn, gate_up: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = gate_up.detach().requires_grad_(True)
    out = fn(x)
    out.backward(grad)
    return out, x.grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b).norm() / b.norm())


def main() -> None:
    assert swiglu_module.load_kernels(), "Triton kernels not loadable"
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, inter in STUDENTS.items():
        gate_up = torch.randn(8192, 2 * inter, device="cuda", generator=gen,
                              dtype=torch.bfloat16) * 2
        grad = torch.randn(8192, inter, device="cuda", generator=gen, dtype=torch.bfloat16)
        ref_out, ref_grad = step(torch_ops, gate_up.float(), grad.float())
        variants = {"kernels": torch.compile(swiglu_module.swiglu),
                    "inductor": torch.compile(torch_ops)}
        row = {"student": name, "shape": [8192, 2 * inter]}
        for label, fn in variants.items():
            out, g = step(fn, gate_up, grad)
            row[f"{label}_err"] = max(rel(out, ref_out), rel(g, ref_grad))
            row[f"{label}_ms"] = kernel_ms(lambda fn=fn, x=gate_up, dy=grad: step(fn, x, dy), 30)
        # bytes a step must move at least: forward reads gate/up, writes h; backward reads
        # gate/up and dh, writes dgate/dup
        moved = 2 * (2 * inter * 8192) * 2 + 2 * (inter * 8192) * 2
        row["kernels_tb_s"] = moved / row["kernels_ms"] / 1e9
        row["ok"] = row["kernels_err"] < 1e-2
        print(json.dumps(row), flush=True)
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
