"""The hand-written GPU kernels of the FP8 paths, each a pass Inductor makes slower:

- `quantize_columns_t` (FP8 training, kdengine.models.fp8_train): quantize each column of a
  matrix to e4m3 and write the result transposed, in one pass.
- `swiglu_quantize_rows` (the FP8 teacher, kdengine.models.fp8): SwiGLU and the rowwise
  quantization of its output for the down projection, in one pass.

The weight gradient dW = dy^T x sums over tokens, and torch._scaled_mm (cuBLASLt's FP8 path on
Hopper takes only K-major operands) wants both operands with the token dimension contiguous,
i.e. dy and x transposed. Inductor fuses "amax over tokens, divide, cast, transpose" into one
reduction kernel whose loads stride across rows: on an H200 it took 0.345 ms for Llama-3.2-1B's
8192 x 8192 down-projection input (192 MB moved: 0.56 TB/s, a sixth of the HBM's bandwidth;
docs/performance.md, issue 16 round 3). Here the column
scales come from a plain reduction (which Inductor runs coalesced), and this kernel reads tiles
of rows and stores them transposed through the tile, both coalesced.

The FP8 teacher's down projection quantizes silu(gate) * up row by row, and a row of a large
teacher's MLP is 8,960-9,728 wide: past Inductor's limit for keeping a row in registers, so its
fused kernel loops over each row twice (the amax, then the cast), at ~1.5 TB/s (7.1 ms of
Qwen2.5-1.5B's 104 ms step, 9.4 ms of Qwen3-4B's 172 ms; docs/performance.md, issue 16).
`swiglu_quantize_rows` keeps the whole row in registers: one read of gate and up, one write of
the e4m3 row and its scale.

Imported only where CUDA and Triton are; everywhere else the callers run the same math in torch
ops. Registered as `triton_op`s, so torch.compile traces each as one node of the graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK = 64


@triton.jit
def _quantize_columns_t(x_ptr, scale_ptr, out_ptr, rows, cols, row_stride,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (r[:, None] < rows) & (c[None, :] < cols)
    x = tl.load(x_ptr + r[:, None] * row_stride + c[None, :], mask=inside, other=0.0)
    scale = tl.load(scale_ptr + c, mask=c < cols, other=1.0)
    q = tl.div_rn(x.to(tl.float32), scale[None, :])  # IEEE division, as torch's
    q = tl.minimum(tl.maximum(q, -448.0), 448.0).to(tl.float8e4nv)
    tl.store(out_ptr + c[:, None] * rows + r[None, :], tl.trans(q),
             mask=(c[:, None] < cols) & (r[None, :] < rows))


@triton_op("kdengine::quantize_columns_t", mutates_args=())
def quantize_columns_t(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3 values of x [rows, cols] (last dimension contiguous) / scale [cols] (fp32), clamped
    to +-448, laid out transposed: [cols, rows] row-major."""
    rows, cols = x.shape
    out = torch.empty((cols, rows), dtype=torch.float8_e4m3fn, device=x.device)
    grid = (triton.cdiv(rows, BLOCK), triton.cdiv(cols, BLOCK))
    wrap_triton(_quantize_columns_t)[grid](x, scale, out, rows, cols, x.stride(0),
                                           BLOCK_R=BLOCK, BLOCK_C=BLOCK)
    return out


@triton.jit
def _swiglu_quantize_rows(gate_up_ptr, out_ptr, scale_ptr, cols, row_stride,
                          BLOCK: tl.constexpr, MIN_AMAX: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    inside = c < cols
    base = gate_up_ptr + row * row_stride
    gate = tl.load(base + c, mask=inside, other=0.0)
    up = tl.load(base + cols + c, mask=inside, other=0.0).to(tl.float32)
    g = gate.to(tl.float32)
    # (MIN_AMAX and 448: kdengine.models.fp8's MIN_AMAX and E4M3_MAX)
    # silu(g) * up in fp32, rounded once to the activations' dtype: the tensor the unfused
    # graph hands to the quantization (masked lanes are 0 and leave the amax alone)
    hidden = (g / (1.0 + tl.exp(-g)) * up).to(gate.dtype, fp_downcast_rounding="rtne")
    hidden = hidden.to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(hidden), axis=0), MIN_AMAX)
    scale = amax / 448.0
    q = tl.div_rn(hidden, scale)  # IEEE division, as torch's
    q = tl.minimum(tl.maximum(q, -448.0), 448.0).to(tl.float8e4nv)
    tl.store(out_ptr + row * cols + c, q, mask=inside)
    tl.store(scale_ptr + row, scale)


@triton_op("kdengine::swiglu_quantize_rows", mutates_args=())
def swiglu_quantize_rows(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up [rows, 2 * cols] (gate, then up; last dimension contiguous) -> the e4m3 values
    of silu(gate) * up [rows, cols] row-major, and their fp32 scales [rows, 1]: the numbers of
    kdengine.models.fp8.quantize_rowwise of the product in gate_up's dtype."""
    rows, width = gate_up.shape
    cols = width // 2
    values = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=gate_up.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=gate_up.device)
    block = triton.next_power_of_2(cols)
    # a whole row in registers: 16 warps keep it at <= 32 values a thread up to 16,384 wide
    warps = 16 if block >= 8192 else 8 if block >= 2048 else 4
    wrap_triton(_swiglu_quantize_rows)[(rows,)](gate_up, values, scale, cols, gate_up.stride(0),
                                                BLOCK=block, MIN_AMAX=1e-12,
                                                num_warps=warps)
    return values, scale
