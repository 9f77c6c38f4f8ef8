"""FP8 matmuls for a trained student (`student_matmuls float8`): rowwise-scaled e4m3 operands in
the forward and in both backward products, the fp32 master weights and AdamW unchanged.

A linear layer y = x @ W^T runs three matmuls a step, each with its operands quantized along
the dimension it sums over, one fp32 scale per row of that sum (kdengine.models.fp8's rule,
amax -> 448):

  forward  y  = x  @ W^T    x per token (over in),   W per output row (over in)
  backward dx = dy @ W      dy per token (over out),  W per input column (over out)
  backward dW = dy^T @ x    dy per output feature (over tokens), x per input feature (over tokens)

so each product sees scales that fit the numbers it adds up, not a compromise between two
directions. Inputs are quantized from what the layer saved: the activation in the compute dtype
and the fp32 master weight itself (no bf16 copy is kept, so this saves the memory of autocast's
weight cast). The forward uses Hopper's fast accumulation, as the FP8 teacher does; the backward
products do not: dW sums over every token of the batch (8,192 at 4 x 2048), where the fast
path's periodic promotion loses the most.

Under torch.compile Inductor folds the row quantizations into the kernels that produce their
inputs (the RMSNorm before q/k/v, SwiGLU before down, the gradient's own producers). The
column quantizations of dW's operands (and of W for dx) must be written transposed, which
Inductor's fusion does at a sixth of the memory bandwidth; on the GPU they go through one
Triton kernel instead (kdengine.models.fp8_kernels), byte for byte the same values.

What stays in the compute dtype: embeddings, norms, attention and the lm head (the KD loss reads
the logits directly). Gradients flow in the compute dtype between layers, so the only change to
what is trained is the e4m3 rounding of the block projections' operands (docs/models.md has the
measured loss curves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdengine.models.fp8 import E4M3, E4M3_MAX, MIN_AMAX, quantizable, quantize_rowwise

# kdengine.models.fp8_kernels.quantize_columns_t where CUDA and Triton are (set by
# use_fp8_matmuls, outside any traced code), else None: the same numbers from torch ops
_columns_kernel = None


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rowwise, the values laid out row-major (as torch._scaled_mm wants them)."""
    values, scale = quantize_rowwise(x)
    return values.contiguous(), scale


def _columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rowwise(x.t()) for x [M, K]: each column's e4m3 values over M, laid out as
    rows [K, M], and the scales [K, 1]. On the GPU the cast and the transpose are one kernel
    whose reads and writes both run along memory (fp8_kernels: Inductor's own fusion of the
    two read across rows at a sixth of the bandwidth)."""
    scale = x.abs().amax(dim=0).float().clamp_min(MIN_AMAX) / E4M3_MAX
    if _columns_kernel is not None and x.is_cuda:
        values = _columns_kernel(x.contiguous(), scale)
    else:
        values = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).t().contiguous()
    return values, scale.unsqueeze(1)


def _mm(a: torch.Tensor, b_rows: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
        dtype: torch.dtype, fast: bool) -> torch.Tensor:
    """a @ b_rows^T from two row-quantized operands: [M, K] x [N, K] -> [M, N] in `dtype`."""
    return torch._scaled_mm(a, b_rows.t(), scale_a=scale_a, scale_b=scale_b.t(),
                            out_dtype=dtype, use_fast_accum=fast)


class _Fp8Matmul(torch.autograd.Function):
    """x [M, K] (compute dtype, M a multiple of 16) @ weight [N, K]^T (fp32 master) in e4m3."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        xq, sx = _rows(x)
        wq, sw = _rows(weight)
        return _mm(xq, wq, sx, sw, x.dtype, fast=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205 - autograd's signature
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gq, sg = _rows(grad)  # [M, N], over out
            wq, sw = _columns(weight)  # [K, N], over out
            grad_x = _mm(gq, wq, sg, sw, grad.dtype, fast=False)
        if ctx.needs_input_grad[1]:
            gq, sg = _columns(grad)  # [N, M], over tokens
            xq, sx = _columns(x)  # [K, M], over tokens
            grad_w = _mm(gq, xq, sg, sx, weight.dtype, fast=False)
        return grad_x, grad_w


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What F.linear would compute `x` in here: autocast's dtype when it is on."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def fp8_linear(x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) through FP8 matmuls forward and backward; the result (and the
    gradient that flows on to x) in the compute dtype, the weight's gradient in its own."""
    dtype = compute_dtype(x)
    shape = x.shape
    rows = x.reshape(-1, shape[-1]).to(dtype)
    count = rows.shape[0]
    if count % 16:  # dW sums over the rows: torch._scaled_mm wants that multiple of 16 (zeros
        rows = F.pad(rows, (0, 0, 0, 16 - count % 16))  # add nothing to it)
    out = _Fp8Matmul.apply(rows, weight)[:count]
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*shape[:-1], weight.shape[0])


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            fp8: bool) -> torch.Tensor:
    """A block projection: FP8 where asked and the weight's shape allows, else F.linear."""
    if fp8 and quantizable(weight):
        return fp8_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def reference_grads(x: torch.Tensor, weight: torch.Tensor,
                    grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, dx, dW) written out in fp32 from the dequantized operands of each product (tests)."""
    def deq(t: torch.Tensor) -> torch.Tensor:
        values, scale = quantize_rowwise(t)
        return values.float() * scale

    y = deq(x) @ deq(weight).T
    grad_x = deq(grad) @ deq(weight.t()).T
    grad_w = deq(grad.t()) @ deq(x.t()).T
    return y, grad_x, grad_w


def use_fp8_matmuls(model: nn.Module, on: bool = True) -> tuple[int, int]:
    """Run a native Decoder's block projections through FP8 matmuls (parameters, names and
    checkpoints unchanged); returns (FP8 projections, projections left in the compute dtype
    because a dimension is not a multiple of 16)."""
    if on and torch.cuda.is_available():
        _load_columns_kernel()
    fp8 = kept = 0
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.fp8_matmuls = mlp.fp8_matmuls = on
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj,
                       mlp.up_proj, mlp.down_proj):
            if quantizable(linear.weight):
                fp8 += 1
            else:
                kept += 1
    model.fp8_matmuls = on
    return (fp8, kept) if on else (0, fp8 + kept)


def _load_columns_kernel() -> None:
    global _columns_kernel
    if _columns_kernel is None:
        try:
            from kdengine.models.fp8_kernels import quantize_columns_t
        except ImportError:  # no Triton: torch ops compute the same values
            return
        _columns_kernel = quantize_columns_t
