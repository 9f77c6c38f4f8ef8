"""FP8 weights for a frozen teacher: rowwise-scaled e4m3 linear layers (`teacher_dtype float8`).

A linear layer's weight W [out, in] is kept as float8 e4m3 with one fp32 scale per output row,
s_w = amax|W_row| / 448 (e4m3's largest finite value), so every row uses the format's whole
range. Each activation row is quantized the same way as it enters the matmul (s_x = amax|x_row| /
448) and `torch._scaled_mm` multiplies the e4m3 operands with fp32 accumulation, applying both
scales in its epilogue: y = (x_q @ W_q^T) * s_x * s_w^T, in the activations' dtype.

Why rowwise: one scale for a whole tensor lets a single outlier row flatten every other row
into a few e4m3 values; per-row scales cost one fp32 number a row and nothing per element.
Why the activation's quantization needs no pass of its own: the teacher's blocks are compiled
(kdengine.compiled.compile_teacher), so Inductor folds the row amax and the cast into the
kernel that makes the activation (attention's output before o). Where Inductor's fusion reads
each row more than once, one Triton kernel on the GPU makes and quantizes the rows instead
(kdengine.models.fp8_kernels): SwiGLU before down, whose rows are too wide for Inductor's
one-pass reductions (`Fp8Linear.swiglu`), and RMSNorm before q/k/v and gate/up, whose mean
square and amax Inductor runs as a looped reduction (`Fp8Linear.normed`). Eager (the CPU,
tests) runs the same ops unfused.

What stays in the compute dtype: embeddings, norms and attention itself. The lm head has an
FP8 copy (`Fp8Head`) for the KD loss's teacher logits, whose hidden rows are quantized chunk by
chunk; everything else that reads the head (the teacher's own val_ce, sampling, a teacher cache)
uses the compute-dtype weight, which the embedding ties to anyway (docs/performance.md has both
drifts). The teacher's parameter count is unchanged (the e4m3 weights are frozen parameters), so
FLOP counts and MFU count FP8 matmuls as bf16-equivalent.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdengine.models.norm import rms_norm
from kdengine.models.rope import apply_rope

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
MIN_AMAX = 1e-12  # an all-zero row gets a positive scale (and quantizes to zeros)


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, fp32 scales [..., 1]) with x ~= values * scales, one scale per row of the
    last dimension; amax maps to 448 exactly, so nothing saturates."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(MIN_AMAX)
    scale = amax / E4M3_MAX
    values = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return values, scale


def dequantize(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return values.float() * scale


# kdengine.models.fp8_kernels where CUDA and Triton are (loaded by quantize_teacher, outside
# any traced code), else None: torch ops compute the same math (each kernel's values are
# within one e4m3 step of theirs: SwiGLU's rounds the product once, in fp32; RMSNorm's sums
# the mean square in another order)
_kernels = None


def swiglu_quantize_rows(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rowwise(silu(gate) * up) for gate_up [n, 2 * inter] (gate, then up): one pass
    over the rows on the GPU, each value within one e4m3 step of the torch ops'."""
    if _kernels is not None and gate_up.is_cuda:
        return _kernels.swiglu_quantize_rows(gate_up.contiguous())
    return quantize_rowwise_of_swiglu(gate_up)


def quantize_rowwise_of_swiglu(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same numbers in torch ops (the CPU; the reference the kernel is checked against)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return quantize_rowwise(F.silu(gate) * up)


def rms_norm_quantize_rows(x: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rowwise(rms_norm(x, weight, eps)) for x [n, hidden]: one pass over the rows on
    the GPU, each value within one e4m3 step of the torch ops'."""
    if _kernels is not None and x.is_cuda:
        return _kernels.rms_norm_quantize_rows(x.contiguous(), weight, eps)
    return quantize_rowwise_of_rms_norm(x, weight, eps)


def quantize_rowwise_of_rms_norm(x: torch.Tensor, weight: torch.Tensor,
                                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same numbers in torch ops (the CPU; the reference the kernel is checked against)."""
    return quantize_rowwise(rms_norm(x, weight, eps))


def add_rms_norm_quantize_rows(x: torch.Tensor, add: torch.Tensor, weight: torch.Tensor,
                               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x + add, and rms_norm_quantize_rows of it): the residual stream's add made in the same
    pass on the GPU (the sum bit for bit torch's)."""
    if _kernels is not None and x.is_cuda:
        return _kernels.add_rms_norm_quantize_rows(x.contiguous(), add.contiguous(), weight, eps)
    total = x + add
    return (total, *quantize_rowwise_of_rms_norm(total, weight, eps))


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rowwise of x [n, cols]: one pass over the rows on the GPU (Inductor's reduction
    reads each row twice), each value within one e4m3 step of the torch ops'."""
    if _kernels is not None and x.is_cuda:
        return _kernels.quantize_rows(x.contiguous())
    return quantize_rowwise(x)


def qk_norm_rope(qkv: torch.Tensor, attn: nn.Module, cos: torch.Tensor, sin: torch.Tensor,
                 batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention's q and k [batch, seq, heads, head_dim] from its projection qkv [batch,
    seq, q + 2 kv]: each head normed by the attention's q_norm/k_norm (if it has them) and
    rotated by cos/sin ([seq, head_dim], or [batch, 1, seq, head_dim] for packed rows). One
    pass on the GPU (values within a rounding of the torch ops': the rotation is summed in
    fp32 and rounded once, as Inductor's fused kernel does); torch's ops elsewhere."""
    heads, kv, dim = attn.n_heads, attn.n_kv, attn.head_dim
    if _kernels is not None and qkv.is_cuda:
        norm = attn.q_norm is not None
        rows = qkv.reshape(batch * seq, -1)
        q, k = _kernels.qk_norm_rope(
            rows if rows.stride(-1) == 1 else rows.contiguous(),
            attn.q_norm.weight if norm else rows, attn.k_norm.weight if norm else rows,
            cos.contiguous(), sin.contiguous(), heads, kv, seq,
            attn.q_norm.eps if norm else 0.0, norm)
        return q.view(batch, seq, heads, dim), k.view(batch, seq, kv, dim)
    return qk_norm_rope_reference(qkv, attn, cos, sin, batch, seq)


def qk_norm_rope_reference(qkv: torch.Tensor, attn: nn.Module, cos: torch.Tensor,
                           sin: torch.Tensor, batch: int,
                           seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """qk_norm_rope in torch ops: the unfused attention's own (decoder.Attention._heads)."""
    heads, kv, dim = attn.n_heads, attn.n_kv, attn.head_dim
    q, k, _ = qkv.split((heads * dim, kv * dim, kv * dim), dim=-1)
    q, k = q.view(batch, seq, heads, dim), k.view(batch, seq, kv, dim)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [b, heads, t, d], as apply_rope takes them
    return (apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2))


def load_kernels() -> None:
    """The one-pass kernels, where CUDA and Triton are."""
    global _kernels
    if _kernels is None and torch.cuda.is_available():
        try:
            from kdengine.models import fp8_kernels
        except ImportError:  # no Triton: torch ops do the same math
            return
        _kernels = fp8_kernels


def fp8_supported(device: torch.device) -> bool:
    """Whether `device` multiplies e4m3 matrices natively (CUDA compute capability 8.9+: Ada,
    Hopper and later). The CPU runs the same op through torch's reference kernel: the same
    numbers, for tests, without the speed."""
    if device.type != "cuda":
        return device.type == "cpu"
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantizable(weight: torch.Tensor) -> bool:
    """`torch._scaled_mm` needs both dimensions of the weight to be multiples of 16."""
    out_features, in_features = weight.shape
    return out_features % 16 == 0 and in_features % 16 == 0


class Fp8Linear(nn.Module):
    """y = x @ W^T + b with W in rowwise-scaled e4m3 (frozen) and x quantized per row on the fly.

    `weight` is an e4m3 parameter that takes no gradient (the teacher is frozen), `weight_scale`
    [1, out] its per-row scales laid out as `_scaled_mm` takes them; the bias (if any) stays in
    the compute dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if not quantizable(weight):
            raise ValueError(f"an FP8 weight needs both dimensions divisible by 16, not "
                             f"{tuple(weight.shape)}")
        values, scale = quantize_rowwise(weight.detach())
        self.weight = nn.Parameter(values, requires_grad=False)
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())
        self.bias = (nn.Parameter(bias.detach().clone(), requires_grad=False)
                     if bias is not None else None)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = self._rows(x.reshape(-1, shape[-1]), self.out_features)
        return self._finish(out, shape[:-1])

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        """self(silu(gate) * up) from a gate/up projection's output [..., 2 * in_features]:
        SwiGLU and its rows' quantization in one pass on the GPU (swiglu_quantize_rows)."""
        shape = gate_up.shape
        out = self._rows(gate_up.reshape(-1, shape[-1]), self.out_features,
                         quantize=swiglu_quantize_rows)
        return self._finish(out, shape[:-1])

    def normed(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """self(norm(x)) for an RMSNorm `norm` (its `weight` and `eps`): the norm and its rows'
        quantization in one pass on the GPU (rms_norm_quantize_rows)."""
        shape = x.shape
        quantize = partial(rms_norm_quantize_rows, weight=norm.weight, eps=norm.eps)
        out = self._rows(x.reshape(-1, shape[-1]), self.out_features, quantize=quantize)
        return self._finish(out, shape[:-1])

    def add_normed(self, x: torch.Tensor, add: torch.Tensor,
                   norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + add, self(norm(x + add))): the residual stream's sum and this projection of it
        normed; the sum, the norm and the rows' quantization in one pass on the GPU."""
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if rows.shape[0] % 16:  # rows the FP8 GEMM wants padded (decode steps): two passes
            total = x + add
            return total, self.normed(total, norm)
        total, values, scale = add_rms_norm_quantize_rows(rows, add.reshape(-1, shape[-1]),
                                                          norm.weight, norm.eps)
        out = self._matmul(values, scale, self.out_features, x.dtype)
        return total.reshape(shape), self._finish(out, shape[:-1])

    def _finish(self, out: torch.Tensor, leading: torch.Size) -> torch.Tensor:
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*leading, self.out_features)

    def _rows(self, rows: torch.Tensor, outputs: int, quantize=quantize_rows) -> torch.Tensor:
        """quantize(rows) [n, in] @ the first `outputs` rows of W, transposed: [n, outputs]."""
        count = rows.shape[0]
        if count % 16:  # some FP8 GEMM kernels want 16-aligned rows (decode steps): zero rows
            rows = F.pad(rows, (0, 0, 0, 16 - count % 16))
        values, scale = quantize(rows)
        return self._matmul(values, scale, outputs, rows.dtype)[:count]

    def _matmul(self, values: torch.Tensor, scale: torch.Tensor, outputs: int,
                dtype: torch.dtype) -> torch.Tensor:
        """Quantized rows [n, in] (and their scales [n, 1]) @ the first `outputs` rows of W,
        transposed: [n, outputs] in `dtype`."""
        return torch._scaled_mm(values, self.weight[:outputs].t(), scale_a=scale,
                                scale_b=self.weight_scale[:, :outputs], out_dtype=dtype,
                                use_fast_accum=True)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # `.to(dtype)`, `.half()` and the like cast every floating tensor: the e4m3 values come
        # back exactly (any 16/32-bit float holds every e4m3 number), the fp32 scales are kept
        # as they were (a bf16 scale would move each row by up to 0.4%)
        scale = self.weight_scale
        super()._apply(fn, recurse)
        if self.weight.dtype != E4M3:
            self.weight.data = self.weight.data.to(E4M3)
        if self.weight_scale.dtype != torch.float32:
            self.weight_scale = scale.to(self.weight_scale.device)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, e4m3 rowwise")


class Fp8Head(Fp8Linear):
    """The frozen teacher's lm head in rowwise e4m3, for the KD loss's teacher logits
    (kdengine.losses): `logits(rows, vocab)` projects onto the first `vocab` ids (a teacher's
    padded vocabulary is cut to the student's before the matmul, not after)."""

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    def logits(self, rows: torch.Tensor, vocab: int) -> torch.Tensor:
        """rows [n, hidden] in the compute dtype -> [n, vocab] logits in that dtype."""
        aligned = -(-vocab // 16) * 16  # the FP8 GEMM's columns come in multiples of 16
        out = self._rows(rows, aligned)
        return out if aligned == vocab else out[:, :vocab].contiguous()


def reference_linear(x: torch.Tensor, layer: Fp8Linear) -> torch.Tensor:
    """What `layer` computes, written out in fp32 from the dequantized operands (tests)."""
    values, scale = quantize_rowwise(x.reshape(-1, x.shape[-1]))
    w = dequantize(layer.weight, layer.weight_scale.reshape(-1, 1))
    out = dequantize(values, scale) @ w.T
    if layer.bias is not None:
        out = out + layer.bias.float()
    return out.reshape(*x.shape[:-1], layer.out_features)


@torch.no_grad()
def quantize_teacher(model: nn.Module, one_pass: bool = True) -> int:
    """Replace a frozen Decoder's block projections by `Fp8Linear`s, in place, and give it an
    FP8 copy of its lm head (`lm_head_fp8`); returns how many FP8 layers.

    q/k/v and gate/up are fused first (Decoder.fuse_for_inference: one FP8 matmul each). The
    compute-dtype copies are released, so the teacher's weights take about half the memory. The
    model is inference-only afterwards: its state_dict no longer has the HF layout.
    one_pass: each block's norms and SwiGLU make and quantize their projections' input rows in
    one pass (`Fp8Linear.normed`, `Fp8Linear.swiglu`); False leaves them to the compiler
    (benchmarks compare the two)."""
    model.fuse_for_inference()
    if one_pass:
        load_kernels()
    count = 0
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if attn.qkv_weight is not None and quantizable(attn.qkv_weight):
            attn.qkv_linear = Fp8Linear(attn.qkv_weight, attn.qkv_bias)
            attn.qkv_weight = attn.qkv_bias = None
            attn.q_proj = attn.k_proj = attn.v_proj = None  # views of the fused copy: freed
            count += 1
        if mlp.gate_up_weight is not None and quantizable(mlp.gate_up_weight):
            mlp.gate_up_linear = Fp8Linear(mlp.gate_up_weight, mlp.gate_up_bias)
            mlp.gate_up_weight = mlp.gate_up_bias = None
            mlp.gate_proj = mlp.up_proj = None
            count += 1
        for owner, name in ((attn, "o_proj"), (mlp, "down_proj")):
            linear = getattr(owner, name)
            if isinstance(linear, nn.Linear) and quantizable(linear.weight):
                setattr(owner, name, Fp8Linear(linear.weight, linear.bias))
                count += 1
        mlp.fused_swiglu = (one_pass and mlp.gate_up_linear is not None
                            and isinstance(mlp.down_proj, Fp8Linear))
        layer.fused_norms = (one_pass and attn.qkv_linear is not None
                             and mlp.gate_up_linear is not None)
        # q/k norms and rope in one pass where v needs nothing added (no bias: the kernel
        # leaves v where the projection put it) and a head splits into two power-of-two halves
        attn.fused_rope = (one_pass and attn.qkv_linear is not None
                           and attn.qkv_linear.bias is None
                           and attn.head_dim >= 32 and attn.head_dim & (attn.head_dim - 1) == 0)
    head = model.lm_head_weight
    if quantizable(head):  # a copy: the embedding (tied) and sampling keep the weight itself
        # outside the module tree: not a second lm head in the parameter count (MFU) or the
        # state_dict; the teacher is quantized where it stays, on its device
        vars(model)["lm_head_fp8"] = Fp8Head(head)
        count += 1
    model.fp8 = True
    return count


def is_fp8(model: nn.Module) -> bool:
    return bool(getattr(model, "fp8", False))
