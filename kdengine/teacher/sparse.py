"""The KD loss against cached sparse teacher targets, fused with the student's lm-head.

A cached token holds K teacher ids with their log-probs at T = 1, log p_i, and the log of the
mass of every other id, log m (the tail). At the run's temperature T the live path uses
p_T = softmax(t / T), proportional to p^(1/T). The cache gives it exactly on the K ids; the tail
ids' own probabilities are gone, so the tail is tempered as if its mass were spread evenly over
its V - K ids (the maximum-entropy guess):

    tail_T = (V - K) * (m / (V - K))^(1/T)       (in logs: (log m - log(V-K)) / T + log(V-K))
    p_T,i  = p_i^(1/T) / Z,  p_T,tail = tail_T / Z,  Z = sum_i p_i^(1/T) + tail_T

With K = V there is no tail and p_T is the live path's, to rounding. At T = 1 the tail is exact
whatever K. The student is folded the same way: q_T on the K ids and q_T,tail = the rest of its
tempered mass, and the KD term is forward KL between the two (K+1)-outcome distributions:

    D = sum_i p_T,i log(p_T,i / q_T,i) + p_T,tail log(p_T,tail / q_T,tail)
    dD/d(s/T)_j = q_T,j - ptilde_j,  ptilde = p_T,i on the K ids, p_T,tail * q_T,j / q_T,tail
                                               on the tail ids (the tail's target follows the
                                               student's own shape there)

Sampled targets (Sparse Logit Sampling, Anshumann et al., ACL 2025): the K slots hold K ids
drawn with replacement from p (T = 1), each with its log p. The target is the empirical
distribution, weight 1/K a draw: at T = 1 an unbiased estimate of p, so the gradient
q - ptilde is unbiased too. At T != 1 the draws are reweighted by p^(1/T - 1), self-normalized
(consistent, slightly biased for small K). There is no tail bucket.

CE (alpha) is the hard-label term of the live path, unchanged. The batch loss, its gradient and
the chunking follow kdengine.losses.fused_kd_loss: only a [chunk, vocab] block of student logits
exists at a time, and the gradients of hidden states and lm-head are accumulated in the forward.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from kdengine.losses import (
    IGNORE_INDEX,
    KDLossSpec,
    LossParts,
    _at_least_fp32,
    _default_compute_dtype,
    chunk_loop,
    compile_default,
)

TOPK, SAMPLED = "topk", "sampled"
TARGET_KINDS = (TOPK, SAMPLED)


@dataclass
class SparseTargets:
    """Cached targets of N tokens: ids [N, K] int64, logp [N, K] and tail [N] (log of the rest's
    mass; unused for sampled targets), at T = 1, over a vocab of `vocab` ids."""

    ids: torch.Tensor
    logp: torch.Tensor
    tail: torch.Tensor
    kind: str
    vocab: int

    def to(self, device: torch.device) -> SparseTargets:
        return SparseTargets(self.ids.to(device, non_blocking=True),
                             self.logp.to(device, non_blocking=True),
                             self.tail.to(device, non_blocking=True), self.kind, self.vocab)


def tempered(targets: SparseTargets, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_T on the K slots [N, K], log p_T of the tail [N]) in fp32 (see the module doc).
    Sampled targets: the slots' self-normalized weights, log of; the tail is -inf."""
    T = temperature
    logp = _at_least_fp32(targets.logp)
    if targets.kind == SAMPLED:
        logw = (1.0 / T - 1.0) * logp  # 0 at T = 1: every draw weighs 1/K
        logw = logw - torch.logsumexp(logw, -1, keepdim=True)
        return logw, torch.full_like(logp[..., 0], -math.inf)
    k = logp.shape[-1]
    a = logp / T
    if targets.vocab > k:
        spread = math.log(targets.vocab - k)
        tail = (targets.tail.to(logp.dtype) - spread) / T + spread
    else:
        tail = torch.full_like(logp[..., 0], -math.inf)
    z = torch.logaddexp(torch.logsumexp(a, -1), tail)
    return a - z.unsqueeze(-1), tail - z


def _sparse_chunk_math(s: torch.Tensor, ids: torch.Tensor, log_pt: torch.Tensor,
                       log_pt_tail: torch.Tensor, teacher_logp_t: torch.Tensor,
                       labels: torch.Tensor, inv_n: torch.Tensor, temperature: float,
                       alpha: float, want_grad: bool, grad_dtype: torch.dtype):
    """One [rows, vocab] chunk of student logits against its rows' targets, in fp32: (loss_sum,
    ce_sum, kd_sum, d loss/d s) with the sums already times `inv_n`. `log_pt` are the slots'
    target weights (log), `teacher_logp_t` the teacher's tempered log-prob of each slot's id
    (equal to log_pt for top-K; for sampled draws, the estimate the KD value is reported with)."""
    s = s if s.dtype == torch.float64 else s.float()
    T = temperature
    valid = labels != IGNORE_INDEX
    safe_labels = torch.where(valid, labels, 0).unsqueeze(-1)
    row_w = valid.to(s.dtype) * inv_n.to(s.dtype)
    log_probs = torch.log_softmax(s, dim=-1)
    log_q = log_probs if T == 1.0 else torch.log_softmax(s / T, dim=-1)
    ce = -log_probs.gather(-1, safe_labels).squeeze(-1)
    p_slots = log_pt.exp()
    # the tail: every id not among the slots (scatter of False: repeated sampled ids are fine)
    in_tail = torch.ones_like(log_q, dtype=torch.bool).scatter_(-1, ids, False)
    log_q_tail = torch.logsumexp(log_q.masked_fill(~in_tail, -math.inf), -1)
    p_tail = log_pt_tail.exp()
    has_tail = p_tail > 0
    tail_term = torch.where(has_tail, p_tail * (log_pt_tail - log_q_tail), 0.0)
    div = (p_slots * (teacher_logp_t - log_q.gather(-1, ids))).sum(-1) + tail_term
    ce_sum = (ce * row_w).sum()
    kd_sum = (div * row_w).sum()
    loss_sum = alpha * ce_sum + (1.0 - alpha) * T * T * kd_sum
    if not want_grad:
        return loss_sum, ce_sum, kd_sum, None
    target = torch.zeros_like(log_q).scatter_add_(-1, ids, p_slots.to(log_q.dtype))
    spread = torch.where(in_tail & has_tail.unsqueeze(-1),
                         (log_q - log_q_tail.unsqueeze(-1)).exp() * p_tail.unsqueeze(-1), 0.0)
    grad = (1.0 - alpha) * T * (log_q.exp() - target - spread)
    if alpha > 0.0:
        onehot = torch.arange(s.shape[-1], device=s.device) == safe_labels
        grad = grad + alpha * (log_probs.exp() - onehot.to(s.dtype))
    grad = grad * row_w.unsqueeze(-1)
    return loss_sum, ce_sum, kd_sum, grad.to(grad_dtype)


_COMPILED: dict[str, object] = {}


def _run_math(compile_math: bool, *args):
    if compile_math and "broken" not in _COMPILED:
        fn = _COMPILED.get("math")
        if fn is None:
            fn = _COMPILED["math"] = torch.compile(_sparse_chunk_math, fullgraph=True,
                                                   dynamic=True)
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a compiler failure costs speed, not the run
            _COMPILED["broken"] = repr(exc)
            warnings.warn(f"torch.compile of the sparse KD math failed, running eager: {exc!r}",
                          RuntimeWarning, stacklevel=2)
    return _sparse_chunk_math(*args)


def _sparse_chunks(h, w, targets: SparseTargets, labels, spec: KDLossSpec, chunk: int,
                   compute_dtype, compile_math, normalizer, want_grad_h, want_grad_w,
                   loss_scale=None):
    """kdengine.losses.chunk_loop with cached targets in place of the teacher's logits."""
    log_pt, log_pt_tail = tempered(targets, spec.temperature)
    if targets.kind == SAMPLED:  # the KD value's estimate of log p_T at each draw
        logp = _at_least_fp32(targets.logp)
        log_z = torch.logsumexp((1.0 / spec.temperature - 1.0) * logp, -1, keepdim=True) \
            - math.log(logp.shape[-1])
        teacher_logp_t = logp / spec.temperature - log_z
    else:
        teacher_logp_t = log_pt
    ids = targets.ids

    def chunk_math(sl, s, inv_n, want_grad):
        return _run_math(compile_math, s, ids[sl], log_pt[sl], log_pt_tail[sl],
                         teacher_logp_t[sl], labels[sl], inv_n, spec.temperature, spec.alpha,
                         want_grad, compute_dtype)

    return chunk_loop(h, w, labels, chunk, compute_dtype, normalizer, want_grad_h, want_grad_w,
                      loss_scale, chunk_math)


class _SparseFusedKDLoss(torch.autograd.Function):
    """lm-head projection + KD loss against cached targets; gradients made in the forward."""

    @staticmethod
    def forward(ctx, h, w, targets, labels, spec, chunk, compute_dtype, compile_math,
                normalizer, loss_scale):
        loss, ce, kd, grad_h, grad_w = _sparse_chunks(
            h, w, targets, labels, spec, chunk, compute_dtype, compile_math, normalizer,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1], loss_scale)
        ctx.grads, ctx.loss_scale, ctx.dtypes = (grad_h, grad_w), loss_scale, (h.dtype, w.dtype)
        ctx.parts = (ce, kd)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.grads
        ctx.grads = (None, None)
        h_dtype, w_dtype = ctx.dtypes
        if ctx.loss_scale is not None:
            grad_out = grad_out / ctx.loss_scale
        gh = grad_h.to(h_dtype) * grad_out.to(h_dtype) if grad_h is not None else None
        gw = grad_w.mul_(grad_out.to(grad_w.dtype)).to(w_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None, None, None, None


def check_kind(kind: str) -> None:
    """Only forward KL has a sparse form: reverse KL and JSD weigh every id by the student's
    probability against the teacher's, which the cache does not hold."""
    if kind != "forward_kl":
        from kdengine.config import ConfigError

        raise ConfigError("loss", f"{kind} needs the teacher's full distribution, which a "
                          "teacher cache does not hold (top-K ids only): use loss=forward_kl "
                          "with --teacher-cache, or a live --teacher")


def sparse_kd_loss(student_hidden: torch.Tensor, student_head: torch.Tensor,
                   targets: SparseTargets, labels: torch.Tensor, spec: KDLossSpec,
                   chunk_tokens: int = 1024, *, compute_dtype: torch.dtype | None = None,
                   compile_math: bool | None = None, normalizer: float | None = None,
                   loss_scale: float | None = None) -> LossParts:
    """Batch-mean KD loss against cached targets (one per token of `labels`, flattened), from
    the student's final hidden states [..., H] and lm-head [vocab, H], chunk by chunk; the
    arguments are kdengine.losses.fused_kd_loss's."""
    check_kind(spec.kind)
    if targets.vocab != student_head.shape[0]:
        raise ValueError(f"the cache's vocab ({targets.vocab}) is not the student's "
                         f"({student_head.shape[0]})")
    h = student_hidden.reshape(-1, student_hidden.shape[-1])
    flat = labels.reshape(-1)
    cd = compute_dtype or _default_compute_dtype(h, student_head)
    compile_math = compile_default(h.device) if compile_math is None else compile_math
    with torch.autocast(h.device.type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or student_head.requires_grad):
            loss = _SparseFusedKDLoss.apply(h, student_head, targets, flat, spec, chunk_tokens,
                                            cd, compile_math, normalizer, loss_scale)
            ce, kd = loss.grad_fn.parts
        else:
            loss, ce, kd, _, _ = _sparse_chunks(h, student_head, targets, flat, spec,
                                                chunk_tokens, cd, compile_math, normalizer,
                                                False, False)
    return LossParts(loss, ce.detach(), kd.detach())
