"""FP8 matmuls for a trained student's MLP (`student_matmuls float8`): rowwise-scaled e4m3
operands in the forward and in the input gradient's products, the weight gradients in the
compute dtype, the fp32 master weights and AdamW unchanged.

Each projection y = x @ W^T of the MLP (gate/up concatenated, then down) runs three matmuls a
step. The two whose outputs are activations take e4m3 operands, each quantized along the
dimension its product sums over, one fp32 scale per row of that sum (kdengine.models.fp8's rule,
amax -> 448):

  forward  y  = x  @ W^T    x per token (over in),   W per output row (over in)
  backward dx = dy @ W      dy per token (over out),  W per input column (over out)
  backward dW = dy^T @ x    in the compute dtype, from the activation the MLP saved

dW stays in the compute dtype because its operands would have to be quantized along the tokens,
i.e. written transposed: passes over the activations that cost about what the FP8 product saves
(docs/performance.md, issue 16 rounds 3, 8 and 9), and a sum over all 8,192 tokens of a batch is
where e4m3's rounding costs the most. The forward uses Hopper's fast accumulation, as the FP8
teacher does; dx does not.

The MLP is one autograd function, so that each quantization rides a pass that already reads its
row: on the GPU the SwiGLU forward writes its product in the compute dtype (for down's dW) and
in e4m3 (for down's forward), and the SwiGLU backward writes gate/up's gradient in both (for
gate/up's dW and dx; kdengine.models.fp8_kernels). The rows of x and dy are quantized by torch
ops that Inductor folds into the norm and the residual's gradient before them; the weights' two
layouts come from the fp32 masters each step (no bf16 copy is kept).

Only the MLP: it holds ~85 % of a block's matmul FLOPs, and the attention's q/k/v and o
projections, narrower, ran 0.76x and 0.82x their bf16 time in FP8 on Qwen2.5-0.5B (their
quantization passes cost more than the matmuls save; round 9), about even on Llama-3.2-1B
(round 3). Embeddings, norms, attention and the lm head stay in the compute dtype too (the KD
loss reads the logits directly), so the only change to what is trained is the e4m3 rounding of
the MLP's forward and input-gradient operands (docs/models.md has the measured loss curves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdengine.models.fp8 import E4M3, E4M3_MAX, MIN_AMAX, quantize_rowwise

# kdengine.models.fp8_kernels where CUDA and Triton are (set by use_fp8_matmuls, outside any
# traced code), else None: torch ops compute the same numbers
_kernels = None


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rowwise, the values laid out row-major (as torch._scaled_mm wants them)."""
    values, scale = quantize_rowwise(x)
    return values.contiguous(), scale


def _columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rowwise(x.t()) for a weight x [N, K]: each column's e4m3 values over N, laid
    out as rows [K, N], and the scales [K, 1] (dx's operand, which sums over the outputs). On
    the GPU the cast and the transpose are one kernel whose reads and writes both run along
    memory (fp8_kernels.quantize_columns_t)."""
    scale = x.abs().amax(dim=0).float().clamp_min(MIN_AMAX) / E4M3_MAX
    if _kernels is not None and x.is_cuda:
        values = _kernels.quantize_columns_t(x.contiguous(), scale)
    else:
        values = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).t().contiguous()
    return values, scale.unsqueeze(1)


def _mm(a: torch.Tensor, b_rows: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
        dtype: torch.dtype, fast: bool) -> torch.Tensor:
    """a @ b_rows^T from two row-quantized operands: [M, K] x [N, K] -> [M, N] in `dtype`."""
    return torch._scaled_mm(a, b_rows.t(), scale_a=scale_a, scale_b=scale_b.t(),
                            out_dtype=dtype, use_fast_accum=fast)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dW = grad^T @ x in the compute dtype (grad's and x's, as autocast's F.linear computes it),
    in the master weight's dtype."""
    return (grad.t() @ x).to(weight.dtype)


def _swiglu_rows(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(silu(gate) * up in gate_up's dtype, and its rowwise e4m3 values and scales)."""
    if _kernels is not None and gate_up.is_cuda:
        return _kernels.swiglu_rows(gate_up)
    gate, up = gate_up.float().chunk(2, dim=-1)
    hidden = (F.silu(gate) * up).to(gate_up.dtype)  # rounded once, as the kernel does
    return hidden, *_rows(hidden)


def _swiglu_backward_rows(gate_up: torch.Tensor,
                          grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate_up's gradient in its dtype from silu(gate) * up's, and its rowwise e4m3 values
    and scales)."""
    if _kernels is not None and gate_up.is_cuda:
        return _kernels.swiglu_backward_rows(gate_up, grad.contiguous())
    gate, up = gate_up.float().chunk(2, dim=-1)
    sig = torch.sigmoid(gate)
    grad = grad.float()
    grads = torch.cat([grad * up * sig * (1 + gate * (1 - sig)), grad * gate * sig], dim=-1)
    grads = grads.to(gate_up.dtype)
    return grads, *_rows(grads)


class _Fp8SwiGLU(torch.autograd.Function):
    """down(silu(gate(x)) * up(x)) for x [M, K] (compute dtype, M a multiple of 16), gate_up
    [2 I, K] (gate's rows, then up's) and down [K, I] (fp32 masters), no biases."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gate_up: torch.Tensor,  # noqa: ANN001
                down: torch.Tensor) -> torch.Tensor:
        xq, sx = _rows(x)
        wq, sw = _rows(gate_up)
        projected = _mm(xq, wq, sx, sw, x.dtype, fast=True)
        hidden, hq, sh = _swiglu_rows(projected)
        wq, sw = _rows(down)
        ctx.save_for_backward(x, projected, hidden, gate_up, down)
        return _mm(hq, wq, sh, sw, x.dtype, fast=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205 - autograd's signature
        x, projected, hidden, gate_up, down = ctx.saved_tensors
        gq, sg = _rows(grad)  # [M, K], over K
        wq, sw = _columns(down)  # [I, K], over K
        grad_hidden = _mm(gq, wq, sg, sw, grad.dtype, fast=False)
        grad_down = _weight_grad(grad, hidden, down)
        grad_projected, gq, sg = _swiglu_backward_rows(projected, grad_hidden)  # over 2 I
        grad_x = None
        if ctx.needs_input_grad[0]:
            wq, sw = _columns(gate_up)  # [K, 2 I], over 2 I
            grad_x = _mm(gq, wq, sg, sw, grad.dtype, fast=False)
        return grad_x, _weight_grad(grad_projected, x, gate_up), grad_down


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What F.linear would compute `x` in here: autocast's dtype when it is on."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _token_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x as rows [M, K] in the compute dtype, M padded to a multiple of 16 (torch._scaled_mm's
    fast paths want aligned shapes; zero rows add nothing to dW), and the real row count."""
    rows = x.reshape(-1, x.shape[-1]).to(compute_dtype(x))
    count = rows.shape[0]
    if count % 16:
        rows = F.pad(rows, (0, 0, 0, 16 - count % 16))
    return rows, count


def fp8_swiglu_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)) with gate_up = cat(gate, up) weights [2 I, K] and down
    [K, I], each projection's forward and input gradient in FP8 (the class above): the output
    in the compute dtype, the weights' gradients in their own."""
    rows, count = _token_rows(x)
    return _Fp8SwiGLU.apply(rows, gate_up, down)[:count].reshape(*x.shape[:-1], down.shape[0])


def reference_swiglu_mlp(x: torch.Tensor, gate_up: torch.Tensor,
                         down: torch.Tensor) -> torch.Tensor:
    """fp8_swiglu_mlp's forward written out in fp32 from the dequantized operands (tests)."""
    gate, up = (_dequantized(x) @ _dequantized(gate_up).T).chunk(2, dim=-1)
    return _dequantized(F.silu(gate) * up) @ _dequantized(down).T


def _dequantized(t: torch.Tensor) -> torch.Tensor:
    values, scale = quantize_rowwise(t)
    return values.float() * scale


def use_fp8_matmuls(model: nn.Module, on: bool = True) -> tuple[int, int]:
    """Run a native Decoder's MLPs through FP8 matmuls (parameters, names and checkpoints
    unchanged); returns (MLPs in FP8, MLPs left in the compute dtype: a bias, or a dimension
    not a multiple of 16)."""
    if on and torch.cuda.is_available():
        _load_kernels()
    fp8 = kept = 0
    for layer in model.model.layers:
        mlp = layer.mlp
        mlp.fp8_matmuls = on and mlp.fp8_as_one()
        fp8 += mlp.fp8_matmuls
        kept += not mlp.fp8_matmuls
    model.fp8_matmuls = on
    return fp8, kept


def _load_kernels() -> None:
    global _kernels
    if _kernels is None:
        try:
            from kdengine.models import fp8_kernels
        except ImportError:  # no Triton: torch ops compute the same values
            return
        _kernels = fp8_kernels
