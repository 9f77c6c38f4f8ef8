"""The one hand-written GPU kernel of FP8 training (kdengine.models.fp8_train): quantize each
column of a matrix to e4m3 and write the result transposed, in one pass.

The weight gradient dW = dy^T x sums over tokens, and torch._scaled_mm (cuBLASLt's FP8 path on
Hopper takes only K-major operands) wants both operands with the token dimension contiguous,
i.e. dy and x transposed. Inductor fuses "amax over tokens, divide, cast, transpose" into one
reduction kernel whose loads stride across rows: on an H200 it took 0.345 ms for Llama-3.2-1B's
8192 x 8192 down-projection input (192 MB moved: 0.56 TB/s, a sixth of the HBM's bandwidth;
docs/performance.md, issue 16 round 3). Here the column
scales come from a plain reduction (which Inductor runs coalesced), and this kernel reads tiles
of rows and stores them transposed through the tile, both coalesced.

Imported only where CUDA and Triton are; everywhere else fp8_train runs the same math in torch
ops. Registered as a `triton_op`, so torch.compile traces it as one node of the graph.
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
