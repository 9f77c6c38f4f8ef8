"""The hand-written GPU kernels of the FP8 paths, each a pass Inductor makes slower:

- `quantize_columns_t` (FP8 training, kdengine.models.fp8_train): quantize each column of a
  matrix to e4m3 and write the result transposed, in one pass.
- `swiglu_rows` and `swiglu_backward_rows` (FP8 training's MLP): SwiGLU forward and backward,
  each writing its result both in the compute dtype (what the weight gradients read) and as
  rowwise e4m3 (what the next FP8 matmul reads), from one read of its inputs.
- `swiglu_quantize_rows` (the FP8 teacher, kdengine.models.fp8): SwiGLU and the rowwise
  quantization of its output for the down projection, in one pass.
- `rms_norm_quantize_rows` (the FP8 teacher): RMSNorm and the rowwise quantization of its
  output for the q/k/v and gate/up projections, in one pass (before gate/up with the residual
  add: `add_rms_norm_quantize_rows`).

A trained student's weight gradient dW = dy^T x stays in bf16 today (fp8_train says why); what
follows is why the transposed quantization this file still has for it (and for the weights'
columns) is a kernel of its own. dW sums over tokens, and torch._scaled_mm (cuBLASLt's FP8 path on
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
the e4m3 row and its scale. Its first version (a single power-of-two block a row, IEEE
divisions) was slower than Inductor's (0.34 against 0.29 ms, 1.2 TB/s): the pass is bound by
its arithmetic and its masked lanes, not by memory, so the row is two blocks and the divisions
are one a row and the sigmoid's fast one.

Before q/k/v and gate/up the same holds for RMSNorm: its rows (1,536-3,072 wide) would fit in
registers, but the quantization adds a second reduction (the amax of the normed row) after the
first (the mean square), and Inductor runs the pair as a looped reduction that reads each row
several times: 0.063 ms for Qwen3-4B's 8192 x 2560 (63 MB moved, ~1 TB/s), 4.5 ms of its step
(docs/performance.md, issue 16 round 6). `rms_norm_quantize_rows` holds a few rows in registers
(each as two power-of-two blocks, as SwiGLU's), rounds as RMSNorm does (the normed row, then its
product with the weight, to the activations' dtype), and multiplies by one division's 448 / amax
a row, so its values are within one e4m3 step of torch's. It also makes the residual stream's
sum before the norm (`add_rms_norm_quantize_rows`): the attention's output before the MLP, and
the last block's MLP output before q/k/v (kdengine.models.decoder.Pending), adds that would
otherwise be passes of their own.

Two more passes of the FP8 teacher's attention were Inductor's looped reductions at ~2 TB/s
(docs/performance.md, issue 16 round 7): the rowwise quantization of the attention's output
before the o projection (`quantize_rows`: the row held in registers, one read), and Qwen3's
q/k norms with the rotary embedding after them (`qk_norm_rope`: a token's q and k heads in one
program, each head normed and rotated in registers, written once in the layout SDPA reads).

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
def _swiglu_quantize_rows(gate_up_ptr, out_ptr, scale_ptr, hidden_ptr, cols, row_stride,
                          HEAD: tl.constexpr, TAIL: tl.constexpr, HIDDEN: tl.constexpr):
    # (1e-12 and 448: kdengine.models.fp8's MIN_AMAX and E4M3_MAX)
    row = tl.program_id(0).to(tl.int64)
    gate = gate_up_ptr + row * row_stride
    up = gate + cols
    head = tl.arange(0, HEAD)  # HEAD <= cols: no mask
    tail = HEAD + tl.arange(0, TAIL)
    h_head = _swiglu(tl.load(gate + head), tl.load(up + head))
    h_tail = _swiglu(tl.load(gate + tail, mask=tail < cols, other=0.0),
                     tl.load(up + tail, mask=tail < cols, other=0.0))  # masked lanes: 0
    if HIDDEN:  # a trained student's: the product itself too, which down's dW reads
        hidden = hidden_ptr + row * cols
        tl.store(hidden + head, h_head.to(hidden_ptr.dtype.element_ty))  # exact: _swiglu
        tl.store(hidden + tail, h_tail.to(hidden_ptr.dtype.element_ty), mask=tail < cols)
    amax = tl.maximum(tl.maximum(tl.max(tl.abs(h_head), axis=0),
                                 tl.max(tl.abs(h_tail), axis=0)), 1e-12)
    tl.store(scale_ptr + row, amax / 448.0)
    inv = 448.0 / amax  # one division a row; each value is multiplied
    out = out_ptr + row * cols
    tl.store(out + head, _e4m3(h_head * inv))
    tl.store(out + tail, _e4m3(h_tail * inv), mask=tail < cols)


@triton.jit
def _swiglu(gate, up):
    """silu(gate) * up in fp32, rounded once to the inputs' dtype (the tensor the unfused graph
    quantizes) and returned in fp32; the sigmoid's division is the fast one (2 ulp in fp32,
    far below the bf16 rounding that follows)."""
    g = gate.to(tl.float32)
    hidden = tl.fdiv(g, 1.0 + tl.exp(-g), ieee_rounding=False) * up.to(tl.float32)
    return hidden.to(gate.dtype, fp_downcast_rounding="rtne").to(tl.float32)


@triton.jit
def _e4m3(x):
    return tl.minimum(tl.maximum(x, -448.0), 448.0).to(tl.float8e4nv)


def swiglu_row_blocks(cols: int) -> tuple[int, int]:
    """A row of `cols` as two power-of-two blocks held in registers together: the largest
    power of two not above it, and the rest rounded up (at least 16): 9,728 = 8,192 + 2,048
    with 512 lanes masked, where one block would be 16,384 with 6,656 masked."""
    head = 1 << (cols.bit_length() - 1)
    return head, max(16, triton.next_power_of_2(cols - head))


SWIGLU_WARPS = 8  # threads per row: the H200 sweep in benchmarks/fp8_teacher.py (check)


def launch_swiglu_quantize_rows(gate_up: torch.Tensor, values: torch.Tensor, scale: torch.Tensor,
                                warps: int = SWIGLU_WARPS,
                                hidden: torch.Tensor | None = None) -> None:
    rows, width = gate_up.shape
    cols = width // 2
    head, tail = swiglu_row_blocks(cols)
    wrap_triton(_swiglu_quantize_rows)[(rows,)](
        gate_up, values, scale, values if hidden is None else hidden, cols, gate_up.stride(0),
        HEAD=head, TAIL=tail, HIDDEN=hidden is not None, num_warps=warps)


@triton_op("kdengine::swiglu_quantize_rows", mutates_args=())
def swiglu_quantize_rows(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up [rows, 2 * cols] (gate, then up; last dimension contiguous) -> the e4m3 values
    of silu(gate) * up [rows, cols] row-major, and their fp32 scales [rows, 1]: the numbers of
    kdengine.models.fp8.quantize_rowwise of the product in gate_up's dtype, each value within
    one e4m3 step of them (the rounding of the product and of x / scale can differ)."""
    rows, width = gate_up.shape
    values = torch.empty((rows, width // 2), dtype=torch.float8_e4m3fn, device=gate_up.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=gate_up.device)
    launch_swiglu_quantize_rows(gate_up, values, scale)
    return values, scale


@triton_op("kdengine::swiglu_rows", mutates_args=())
def swiglu_rows(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A trained FP8 student's SwiGLU (kdengine.models.fp8_train): silu(gate) * up [rows, cols]
    in gate_up's dtype (as kdengine::swiglu computes it), and its rowwise e4m3 values and fp32
    scales [rows, 1] as swiglu_quantize_rows makes them, from one read of gate_up."""
    rows, width = gate_up.shape
    hidden = torch.empty((rows, width // 2), dtype=gate_up.dtype, device=gate_up.device)
    values = torch.empty((rows, width // 2), dtype=torch.float8_e4m3fn, device=gate_up.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=gate_up.device)
    launch_swiglu_quantize_rows(gate_up, values, scale, hidden=hidden)
    return hidden, values, scale


@triton.jit
def _swiglu_grads(gate, up, grad, c, inside):
    """The gradients of gate and up at columns c from the gradient of silu(gate) * up, each
    computed in fp32 and rounded once to the inputs' dtype (kdengine::swiglu_backward's
    numbers), returned in fp32."""
    g = tl.load(gate + c, mask=inside, other=0.0)
    dtype = g.dtype
    g = g.to(tl.float32)
    u = tl.load(up + c, mask=inside, other=0.0).to(tl.float32)
    dh = tl.load(grad + c, mask=inside, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    d_gate = dh * u * sig * (1.0 + g * (1.0 - sig))  # d silu(g) / dg = sig (1 + g (1 - sig))
    d_up = dh * (g * sig)
    return (d_gate.to(dtype, fp_downcast_rounding="rtne").to(tl.float32),
            d_up.to(dtype, fp_downcast_rounding="rtne").to(tl.float32))


@triton.jit
def _swiglu_backward_quantize_rows(gate_up_ptr, grad_ptr, out_ptr, values_ptr, scale_ptr, cols,
                                   row_stride, grad_stride, HEAD: tl.constexpr,
                                   TAIL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    gate = gate_up_ptr + row * row_stride
    up = gate + cols
    grad = grad_ptr + row * grad_stride
    head = tl.arange(0, HEAD)  # HEAD <= cols
    tail = HEAD + tl.arange(0, TAIL)
    in_tail = tail < cols
    gate_head, up_head = _swiglu_grads(gate, up, grad, head, head < cols)
    gate_tail, up_tail = _swiglu_grads(gate, up, grad, tail, in_tail)  # masked lanes: 0
    out = out_ptr + row * (2 * cols)
    dtype = out_ptr.dtype.element_ty
    tl.store(out + head, gate_head.to(dtype))  # exact: each is already rounded
    tl.store(out + tail, gate_tail.to(dtype), mask=in_tail)
    tl.store(out + cols + head, up_head.to(dtype))
    tl.store(out + cols + tail, up_tail.to(dtype), mask=in_tail)
    amax = tl.maximum(tl.maximum(tl.max(tl.abs(gate_head), axis=0),
                                 tl.max(tl.abs(gate_tail), axis=0)),
                      tl.maximum(tl.max(tl.abs(up_head), axis=0),
                                 tl.max(tl.abs(up_tail), axis=0)))
    amax = tl.maximum(amax, 1e-12)
    tl.store(scale_ptr + row, amax / 448.0)
    inv = 448.0 / amax
    values = values_ptr + row * (2 * cols)
    tl.store(values + head, _e4m3(gate_head * inv))
    tl.store(values + tail, _e4m3(gate_tail * inv), mask=in_tail)
    tl.store(values + cols + head, _e4m3(up_head * inv))
    tl.store(values + cols + tail, _e4m3(up_tail * inv), mask=in_tail)


SWIGLU_BACKWARD_WARPS = 16  # a row's two gradients in registers: twice the forward's values


@triton_op("kdengine::swiglu_backward_rows", mutates_args=())
def swiglu_backward_rows(gate_up: torch.Tensor,
                         grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A trained FP8 student's SwiGLU backward (kdengine.models.fp8_train): gate_up's gradient
    [rows, 2 * cols] in its dtype from the gradient [rows, cols] of silu(gate) * up (the numbers
    of kdengine::swiglu_backward), and that gradient's rowwise e4m3 values and fp32 scales
    [rows, 1] for the input gradient's FP8 product, from one read of gate_up and grad (the
    gradient is not read back to be quantized)."""
    rows, width = gate_up.shape
    head, tail = swiglu_row_blocks(width // 2)
    out = torch.empty((rows, width), dtype=gate_up.dtype, device=gate_up.device)
    values = torch.empty((rows, width), dtype=torch.float8_e4m3fn, device=gate_up.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=gate_up.device)
    wrap_triton(_swiglu_backward_quantize_rows)[(rows,)](
        gate_up, grad, out, values, scale, width // 2, gate_up.stride(0), grad.stride(0),
        HEAD=head, TAIL=tail, num_warps=SWIGLU_BACKWARD_WARPS)
    return out, values, scale


@triton.jit
def _rms_norm_quantize_rows(x_ptr, add_ptr, sum_ptr, weight_ptr, out_ptr, scale_ptr, rows, cols,
                            x_stride, add_stride, eps, ROWS: tl.constexpr, HEAD: tl.constexpr,
                            TAIL: tl.constexpr, ADD: tl.constexpr, X_DTYPE: tl.constexpr,
                            OUT_DTYPE: tl.constexpr):
    # ROWS rows a program, each as two power-of-two blocks (HEAD <= cols: unmasked columns)
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    live = (row < rows)[:, None]
    head = tl.arange(0, HEAD)[None, :]
    tail = HEAD + tl.arange(0, TAIL)[None, :]
    in_tail = live & (tail < cols)
    x_head = tl.load(x_ptr + row[:, None] * x_stride + head, mask=live, other=0.0)
    x_tail = tl.load(x_ptr + row[:, None] * x_stride + tail, mask=in_tail, other=0.0)
    if ADD:  # the residual stream's add first, rounded as torch's (x + add in x's dtype)
        x_head = (x_head.to(tl.float32) + tl.load(add_ptr + row[:, None] * add_stride + head,
                                                  mask=live, other=0.0).to(tl.float32))
        x_tail = (x_tail.to(tl.float32) + tl.load(add_ptr + row[:, None] * add_stride + tail,
                                                  mask=in_tail, other=0.0).to(tl.float32))
        x_head = x_head.to(X_DTYPE, fp_downcast_rounding="rtne")
        x_tail = x_tail.to(X_DTYPE, fp_downcast_rounding="rtne")
        tl.store(sum_ptr + row[:, None] * cols + head, x_head, mask=live)
        tl.store(sum_ptr + row[:, None] * cols + tail, x_tail, mask=in_tail)
    x_head, x_tail = x_head.to(tl.float32), x_tail.to(tl.float32)  # masked lanes: 0
    mean_square = (tl.sum(x_head * x_head, axis=1) + tl.sum(x_tail * x_tail, axis=1)) / cols
    r = tl.rsqrt(mean_square + eps)[:, None]  # the approximate rsqrt, as CUDA's torch.rsqrt
    h_head = _normed(x_head, r, tl.load(weight_ptr + head), X_DTYPE, OUT_DTYPE)
    h_tail = _normed(x_tail, r, tl.load(weight_ptr + tail, mask=tail < cols, other=0.0),
                     X_DTYPE, OUT_DTYPE)
    amax = tl.maximum(tl.maximum(tl.max(tl.abs(h_head), axis=1),
                                 tl.max(tl.abs(h_tail), axis=1)), 1e-12)
    tl.store(scale_ptr + row, tl.div_rn(amax, 448.0), mask=row < rows)
    inv = tl.div_rn(448.0, amax)[:, None]  # one division a row; each value is multiplied
    out = out_ptr + row[:, None] * cols
    tl.store(out + head, _e4m3(h_head * inv), mask=live)
    tl.store(out + tail, _e4m3(h_tail * inv), mask=in_tail)


@triton.jit
def _normed(x, r, weight, X_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """RMSNorm's rounding (kdengine.models.decoder.rms_norm): the normed row to the activations'
    dtype, times the weight, rounded to the product's dtype; returned in fp32."""
    normed = (x * r).to(X_DTYPE, fp_downcast_rounding="rtne").to(tl.float32)
    product = normed * weight.to(tl.float32)
    return product.to(OUT_DTYPE, fp_downcast_rounding="rtne").to(tl.float32)


_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def rows_a_program(row_width: int, elements: int) -> int:
    """The most rows of `row_width` (their blocks' width) a program holds in `elements` values
    at most, a power of two, at least one."""
    per_program = max(1, elements // row_width)
    return 1 << (per_program.bit_length() - 1)


NORM_ELEMENTS = 4096  # a program's rows together, at most (benchmarks/norm_kernel.py on an H200)


def launch_rms_norm_quantize_rows(x: torch.Tensor, weight: torch.Tensor, eps: float,
                                  values: torch.Tensor, scale: torch.Tensor,
                                  add: torch.Tensor | None = None,
                                  total: torch.Tensor | None = None) -> None:
    rows, cols = x.shape
    head, tail = swiglu_row_blocks(cols)
    per_program = rows_a_program(head + tail, NORM_ELEMENTS)
    wrap_triton(_rms_norm_quantize_rows)[(triton.cdiv(rows, per_program),)](
        x, add if add is not None else x, total if total is not None else x, weight, values,
        scale, rows, cols, x.stride(0), add.stride(0) if add is not None else 0, eps,
        ROWS=per_program, HEAD=head, TAIL=tail, ADD=add is not None,
        X_DTYPE=_DTYPES[x.dtype], OUT_DTYPE=_DTYPES[torch.promote_types(x.dtype, weight.dtype)],
        num_warps=8)


@triton_op("kdengine::rms_norm_quantize_rows", mutates_args=())
def rms_norm_quantize_rows(x: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, cols] (last dimension contiguous), the norm's weight [cols] -> the e4m3 values
    of rms_norm(x, weight, eps) [rows, cols] row-major and their fp32 scales [rows, 1]: the
    numbers of kdengine.models.fp8.quantize_rowwise of the normed rows in the dtype RMSNorm
    gives (x's and the weight's promoted), each value within one e4m3 step of them (the mean
    square is summed in another order, and each value is multiplied by 448 / amax where torch
    divides by amax / 448)."""
    rows, cols = x.shape
    values = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    launch_rms_norm_quantize_rows(x, weight, eps, values, scale)
    return values, scale


@triton_op("kdengine::add_rms_norm_quantize_rows", mutates_args=())
def add_rms_norm_quantize_rows(x: torch.Tensor, add: torch.Tensor, weight: torch.Tensor,
                               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x + add (the residual stream and a sublayer's output, both [rows, cols] in one dtype),
    and rms_norm_quantize_rows of that sum: (sum, e4m3 values, fp32 scales), in one pass."""
    rows, cols = x.shape
    total = torch.empty_like(x)
    values = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    launch_rms_norm_quantize_rows(x, weight, eps, values, scale, add=add, total=total)
    return total, values, scale


QUANTIZE_ELEMENTS = 4096  # a program's rows together, at most (as NORM_ELEMENTS)


@triton.jit
def _quantize_rows(x_ptr, out_ptr, scale_ptr, rows, cols, x_stride, ROWS: tl.constexpr,
                   HEAD: tl.constexpr, TAIL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    live = (row < rows)[:, None]
    head = tl.arange(0, HEAD)[None, :]
    tail = HEAD + tl.arange(0, TAIL)[None, :]
    in_tail = live & (tail < cols)
    x_head = tl.load(x_ptr + row[:, None] * x_stride + head, mask=live, other=0.0)
    x_tail = tl.load(x_ptr + row[:, None] * x_stride + tail, mask=in_tail, other=0.0)
    x_head, x_tail = x_head.to(tl.float32), x_tail.to(tl.float32)  # masked lanes: 0
    amax = tl.maximum(tl.maximum(tl.max(tl.abs(x_head), axis=1),
                                 tl.max(tl.abs(x_tail), axis=1)), 1e-12)
    tl.store(scale_ptr + row, tl.div_rn(amax, 448.0), mask=row < rows)
    inv = tl.div_rn(448.0, amax)[:, None]
    out = out_ptr + row[:, None] * cols
    tl.store(out + head, _e4m3(x_head * inv), mask=live)
    tl.store(out + tail, _e4m3(x_tail * inv), mask=in_tail)


@triton_op("kdengine::quantize_rows", mutates_args=())
def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, cols] (last dimension contiguous) -> the e4m3 values [rows, cols] row-major and
    fp32 scales [rows, 1] of kdengine.models.fp8.quantize_rowwise, each value within one e4m3
    step of its (x is multiplied by 448 / amax where torch divides by amax / 448)."""
    rows, cols = x.shape
    values = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    head, tail = swiglu_row_blocks(cols)
    per_program = rows_a_program(head + tail, QUANTIZE_ELEMENTS)
    wrap_triton(_quantize_rows)[(triton.cdiv(rows, per_program),)](
        x, values, scale, rows, cols, x.stride(0), ROWS=per_program, HEAD=head, TAIL=tail,
        num_warps=8)
    return values, scale


@triton.jit
def _norm_rope_heads(src, dst, weight_ptr, cos_ptr, sin_ptr, heads, eps, BLOCK: tl.constexpr,
                     HALF: tl.constexpr, NORM: tl.constexpr, X_DTYPE: tl.constexpr):
    """`heads` heads of one token (each 2 * HALF wide, from `src`, to `dst` contiguous): each
    RMSNormed (as kdengine.models.norm.rms_norm rounds) when NORM, then rotated
    (decoder.apply_rope's math in fp32, rounded once, as Inductor's fused kernel does)."""
    h = tl.arange(0, BLOCK)[:, None]
    c = tl.arange(0, HALF)[None, :]
    live = h < heads
    x1 = tl.load(src + h * (2 * HALF) + c, mask=live, other=0.0).to(tl.float32)
    x2 = tl.load(src + h * (2 * HALF) + HALF + c, mask=live, other=0.0).to(tl.float32)
    if NORM:
        mean_square = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF)
        r = tl.rsqrt(mean_square + eps)[:, None]
        w1 = tl.load(weight_ptr + c).to(tl.float32)
        w2 = tl.load(weight_ptr + HALF + c).to(tl.float32)
        x1 = (x1 * r).to(X_DTYPE, fp_downcast_rounding="rtne").to(tl.float32) * w1
        x2 = (x2 * r).to(X_DTYPE, fp_downcast_rounding="rtne").to(tl.float32) * w2
        x1 = x1.to(X_DTYPE, fp_downcast_rounding="rtne").to(tl.float32)
        x2 = x2.to(X_DTYPE, fp_downcast_rounding="rtne").to(tl.float32)
    cos1 = tl.load(cos_ptr + c).to(tl.float32)
    cos2 = tl.load(cos_ptr + HALF + c).to(tl.float32)
    sin1 = tl.load(sin_ptr + c).to(tl.float32)
    sin2 = tl.load(sin_ptr + HALF + c).to(tl.float32)
    out1 = x1 * cos1 - x2 * sin1
    out2 = x2 * cos2 + x1 * sin2
    tl.store(dst + h * (2 * HALF) + c, out1.to(X_DTYPE, fp_downcast_rounding="rtne"), mask=live)
    tl.store(dst + h * (2 * HALF) + HALF + c, out2.to(X_DTYPE, fp_downcast_rounding="rtne"),
             mask=live)


@triton.jit
def _qk_norm_rope(qkv_ptr, q_ptr, k_ptr, q_weight_ptr, k_weight_ptr, cos_ptr, sin_ptr, seq,
                  row_stride, trig_b_stride, trig_t_stride, eps, HEADS: tl.constexpr,
                  KV_HEADS: tl.constexpr, Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr,
                  HALF: tl.constexpr, NORM: tl.constexpr, X_DTYPE: tl.constexpr):
    # a program a token: its q heads, then its k heads (v is left where the projection put it)
    row = tl.program_id(0).to(tl.int64)
    trig = (row // seq) * trig_b_stride + (row % seq) * trig_t_stride
    src = qkv_ptr + row * row_stride
    _norm_rope_heads(src, q_ptr + row * (HEADS * 2 * HALF), q_weight_ptr, cos_ptr + trig,
                     sin_ptr + trig, HEADS, eps, Q_BLOCK, HALF, NORM, X_DTYPE)
    _norm_rope_heads(src + HEADS * 2 * HALF, k_ptr + row * (KV_HEADS * 2 * HALF), k_weight_ptr,
                     cos_ptr + trig, sin_ptr + trig, KV_HEADS, eps, KV_BLOCK, HALF, NORM,
                     X_DTYPE)


@triton_op("kdengine::qk_norm_rope", mutates_args=())
def qk_norm_rope(qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, seq: int,
                 eps: float, norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv [batch * seq, (heads + 2 kv_heads) * head_dim] (q, k, v; last dimension contiguous)
    -> q [batch * seq, heads, head_dim] and k [.., kv_heads, ..]: each head RMSNormed by its
    weight (q_weight, k_weight [head_dim]) when `norm`, then rotated by cos/sin ([seq,
    head_dim], or [batch, 1, seq, head_dim] for packed rows; last dimension contiguous)."""
    rows = qkv.shape[0]
    head_dim = cos.shape[-1]
    q = torch.empty((rows, heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty((rows, kv_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    b_stride = 0 if cos.dim() == 2 else cos.stride(0)
    wrap_triton(_qk_norm_rope)[(rows,)](
        qkv, q, k, q_weight, k_weight, cos, sin, seq, qkv.stride(0), b_stride, cos.stride(-2),
        eps, HEADS=heads, KV_HEADS=kv_heads, Q_BLOCK=triton.next_power_of_2(heads),
        KV_BLOCK=triton.next_power_of_2(kv_heads), HALF=head_dim // 2, NORM=norm,
        X_DTYPE=_DTYPES[qkv.dtype], num_warps=4)
    return q, k
