"""SwiGLU for a trained model, forward and backward, as Triton kernels (kdengine.models.swiglu).

Inductor runs the student's SwiGLU backward (the gradients of gate and up from the gradient of
silu(gate) * up, into the halves of gate/up's gradient) as one pointwise kernel over the
concatenated [rows, 2 x inter] gradient, each element computing its own half: every element of
the up half loads gate and the incoming gradient again. On an H200 it ran at ~2.1 TB/s (3.35
ms of a Qwen3-0.6B student's step, 4.5 ms of Qwen2.5-0.5B's; docs/performance.md, issue 16
round 7). `swiglu_backward` loads gate, up and the gradient once per pair of outputs and
writes both halves. The forward is the same pass Inductor makes, here so that the backward can
be this one. Registered as `triton_op`s with autograd, so torch.compile traces each as one node.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK = 1024  # a program's columns of one row


@triton.jit
def _swiglu_forward(gate_up_ptr, out_ptr, cols, row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = c < cols
    gate = tl.load(gate_up_ptr + row * row_stride + c, mask=inside, other=0.0)
    up = tl.load(gate_up_ptr + row * row_stride + cols + c, mask=inside, other=0.0)
    g = gate.to(tl.float32)
    hidden = g * tl.sigmoid(g) * up.to(tl.float32)
    tl.store(out_ptr + row * cols + c, hidden.to(gate.dtype, fp_downcast_rounding="rtne"),
             mask=inside)


@triton.jit
def _swiglu_backward(gate_up_ptr, grad_ptr, out_ptr, cols, row_stride, grad_stride,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = c < cols
    gate = tl.load(gate_up_ptr + row * row_stride + c, mask=inside, other=0.0)
    g = gate.to(tl.float32)
    u = tl.load(gate_up_ptr + row * row_stride + cols + c, mask=inside, other=0.0).to(tl.float32)
    dh = tl.load(grad_ptr + row * grad_stride + c, mask=inside, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    d_gate = dh * u * sig * (1.0 + g * (1.0 - sig))  # d silu(g) / dg = sig (1 + g (1 - sig))
    out = out_ptr + row * (2 * cols)
    tl.store(out + c, d_gate.to(gate.dtype, fp_downcast_rounding="rtne"), mask=inside)
    tl.store(out + cols + c, (dh * silu).to(gate.dtype, fp_downcast_rounding="rtne"),
             mask=inside)


@triton_op("kdengine::swiglu", mutates_args=())
def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [rows, 2 * inter] (gate, then up; last dimension contiguous) -> silu(gate) * up
    [rows, inter], computed in fp32 and rounded once to gate_up's dtype."""
    rows, width = gate_up.shape
    cols = width // 2
    out = torch.empty((rows, cols), dtype=gate_up.dtype, device=gate_up.device)
    wrap_triton(_swiglu_forward)[(rows, triton.cdiv(cols, BLOCK))](
        gate_up, out, cols, gate_up.stride(0), BLOCK=BLOCK, num_warps=4)
    return out


@triton_op("kdengine::swiglu_backward", mutates_args=())
def swiglu_backward(gate_up: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient [rows, 2 * inter] of gate_up from the gradient [rows, inter] of
    swiglu(gate_up)."""
    rows, width = gate_up.shape
    cols = width // 2
    out = torch.empty((rows, width), dtype=gate_up.dtype, device=gate_up.device)
    wrap_triton(_swiglu_backward)[(rows, triton.cdiv(cols, BLOCK))](
        gate_up, grad, out, cols, gate_up.stride(0), grad.stride(0), BLOCK=BLOCK, num_warps=4)
    return out


def _save_input(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    (gate_up,) = ctx.saved_tensors
    return swiglu_backward(gate_up, grad.contiguous())


swiglu.register_autograd(_backward, setup_context=_save_input)
