"""Hand-written Triton kernels for the per-chunk KD math (forward and reverse KL, with the
hard-label CE term): two passes over a [rows, vocab] chunk of student and teacher logits.

  pass 1 (one program per row): one read of both logit rows with online max / sum-exp for both
         softmaxes and an online sum for the divergence, so every row statistic (log-sum-exps,
         the divergence, the CE term) comes out of a single pass;
  pass 2 (a program per row x vocab block): one more read of both rows, the logit gradient
         written once (into a new buffer, or over the student's logits in place).

That is 5 block-sized memory passes per chunk (read s, t; read s, t; write g), the floor for
an exact two-softmax gradient. Inductor's code for the same function re-reads the rows once per
reduction. JSD needs log m = logaddexp(log p, log q) of the finished log-sum-exps inside its
sum, which one pass cannot give: it stays on the compiled path (kdengine.losses).

Only imported on CUDA with Triton present; the interpreter (TRITON_INTERPRET=1) runs the same
kernels on the CPU, which is how the tests check them against the float64 reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

KINDS = ("forward_kl", "reverse_kl")
IGNORE_INDEX = -100
_KIND_ID = {"forward_kl": 0, "reverse_kl": 1}


@triton.jit
def _kd_row_stats(s_ptr, t_ptr, labels_ptr, inv_n_ptr, stats_ptr, sums_ptr, V, stride_s, stride_t,
                  n_rows, inv_T, ignore_index,
                  KIND: tl.constexpr, NEED_CE: tl.constexpr, T_IS_ONE: tl.constexpr,
                  BLOCK: tl.constexpr):
    row = tl.program_id(0)
    s_row = s_ptr + row.to(tl.int64) * stride_s
    t_row = t_ptr + row.to(tl.int64) * stride_t
    cols = tl.arange(0, BLOCK)
    # a = s / T, b = t / T; running max and sum of exp for both, for s at T = 1 (CE) when
    # T != 1, and the divergence's sum: forward KL sum exp(b - m_b) (b - a), reverse KL
    # sum exp(a - m_a) (a - b)
    m_a = float("-inf")
    z_a = 0.0
    m_b = float("-inf")
    z_b = 0.0
    acc = 0.0
    m_1 = float("-inf")
    z_1 = 0.0
    for start in range(0, V, BLOCK):
        offs = start + cols
        mask = offs < V
        s = tl.load(s_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
        t = tl.load(t_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
        a = s * inv_T
        b = t * inv_T
        new_m_a = tl.maximum(m_a, tl.max(a, 0))
        new_m_b = tl.maximum(m_b, tl.max(b, 0))
        e_a = tl.exp(a - new_m_a)
        e_b = tl.exp(b - new_m_b)
        scale_a = tl.exp(m_a - new_m_a)
        scale_b = tl.exp(m_b - new_m_b)
        z_a = z_a * scale_a + tl.sum(e_a, 0)
        z_b = z_b * scale_b + tl.sum(e_b, 0)
        diff = tl.where(mask, b - a, 0.0)  # masked lanes: -inf - -inf would be NaN
        if KIND == 0:
            acc = acc * scale_b + tl.sum(e_b * diff, 0)
        else:
            acc = acc * scale_a - tl.sum(e_a * diff, 0)
        m_a = new_m_a
        m_b = new_m_b
        if NEED_CE:
            if not T_IS_ONE:
                new_m_1 = tl.maximum(m_1, tl.max(s, 0))
                z_1 = z_1 * tl.exp(m_1 - new_m_1) + tl.sum(tl.exp(s - new_m_1), 0)
                m_1 = new_m_1
    lse_a = m_a + tl.log(z_a)
    lse_b = m_b + tl.log(z_b)
    if KIND == 0:  # KL(p || q) = sum p (b - a) - lse_b + lse_a
        div = acc / z_b - lse_b + lse_a
    else:  # KL(q || p) = sum q (a - b) - lse_a + lse_b
        div = acc / z_a - lse_a + lse_b
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    row_w = tl.where(valid, tl.load(inv_n_ptr).to(tl.float32), 0.0)
    ce = 0.0
    lse_1 = lse_a
    if NEED_CE:
        if not T_IS_ONE:
            lse_1 = m_1 + tl.log(z_1)
        safe = tl.where(valid, label, 0)
        ce = lse_1 - tl.load(s_row + safe).to(tl.float32)
    # per row: log-sum-exps and the unweighted divergence for pass 2, the weighted terms for
    # the chunk's sums (summed by torch afterwards: a fixed order, no atomics)
    tl.store(stats_ptr + row * 4 + 0, lse_a)
    tl.store(stats_ptr + row * 4 + 1, lse_b)
    tl.store(stats_ptr + row * 4 + 2, lse_1)
    tl.store(stats_ptr + row * 4 + 3, div)
    tl.store(sums_ptr + row, ce * row_w)
    tl.store(sums_ptr + n_rows + row, div * row_w)


@triton.jit
def _kd_row_grad(s_ptr, t_ptr, g_ptr, labels_ptr, inv_n_ptr, stats_ptr, V, stride_s, stride_t,
                 stride_g, inv_T, kd_weight, alpha, ignore_index,
                 KIND: tl.constexpr, NEED_CE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < V
    s = tl.load(s_ptr + row.to(tl.int64) * stride_s + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + row.to(tl.int64) * stride_t + offs, mask=mask, other=0.0).to(tl.float32)
    lse_a = tl.load(stats_ptr + row * 4 + 0)
    lse_b = tl.load(stats_ptr + row * 4 + 1)
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    row_w = tl.where(valid, tl.load(inv_n_ptr).to(tl.float32), 0.0)
    log_q = s * inv_T - lse_a
    log_p = t * inv_T - lse_b
    q = tl.exp(log_q)
    if KIND == 0:  # T^2 d KL(p||q) / ds = T (q - p)
        g = q - tl.exp(log_p)
    else:  # T q (d - div), d = log q - log p
        div = tl.load(stats_ptr + row * 4 + 3)
        g = q * (log_q - log_p - div)
    g = g * kd_weight  # (1 - alpha) T
    if NEED_CE:
        lse_1 = tl.load(stats_ptr + row * 4 + 2)
        onehot = tl.where(offs == label, 1.0, 0.0)
        g += alpha * (tl.exp(s - lse_1) - onehot)
    g = g * row_w
    tl.store(g_ptr + row.to(tl.int64) * stride_g + offs, g.to(g_ptr.dtype.element_ty), mask=mask)


def supported(s: torch.Tensor, t: torch.Tensor, kind: str) -> bool:
    """Whether the kernels take this chunk: forward/reverse KL, fp16/bf16/fp32 logits with
    contiguous rows, on CUDA (or the CPU under the Triton interpreter, for tests)."""
    return (kind in KINDS and s.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and t.dtype == s.dtype and s.dim() == 2 and t.dim() == 2
            and s.stride(1) == 1 and t.stride(1) == 1 and s.shape[1] <= t.shape[1])


def kd_chunk(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, inv_n: torch.Tensor,
             temperature: float, alpha: float, kind: str, want_grad: bool,
             grad_dtype: torch.dtype, out: torch.Tensor | None = None):
    """_chunk_math of kdengine.losses for forward/reverse KL: (loss_sum, ce_sum, kd_sum, grad),
    sums already weighted by inv_n (0-dim tensor); grad in grad_dtype, written into `out` when
    given (which may be `s` itself: each element is read before it is written, by the same
    program). Teacher columns beyond s's vocab are never read."""
    rows, vocab = s.shape
    need_ce = alpha > 0.0  # the CE term's gradient; its value is always reported
    inv_t = 1.0 / temperature
    stats = torch.empty(rows, 4, dtype=torch.float32, device=s.device)
    sums = torch.empty(2, rows, dtype=torch.float32, device=s.device)
    inv_n32 = inv_n.reshape(1)
    if rows:
        _kd_row_stats[(rows,)](s, t, labels, inv_n32, stats, sums, vocab, s.stride(0),
                               t.stride(0), rows, inv_t, IGNORE_INDEX, KIND=_KIND_ID[kind],
                               NEED_CE=True, T_IS_ONE=temperature == 1.0, BLOCK=4096,
                               num_warps=8)
    ce_sum, kd_sum = sums.sum(1).to(inv_n.dtype).unbind(0)
    loss_sum = alpha * ce_sum + (1.0 - alpha) * temperature * temperature * kd_sum
    if not want_grad:
        return loss_sum, ce_sum, kd_sum, None
    g = out if out is not None else torch.empty(rows, vocab, dtype=grad_dtype, device=s.device)
    block = 4096
    if rows:
        _kd_row_grad[(rows, triton.cdiv(vocab, block))](
            s, t, g, labels, inv_n32, stats, vocab, s.stride(0), t.stride(0), g.stride(0), inv_t,
            (1.0 - alpha) * temperature, alpha, IGNORE_INDEX, KIND=_KIND_ID[kind],
            NEED_CE=need_ce, BLOCK=block, num_warps=8)
    return loss_sum, ce_sum, kd_sum, g
