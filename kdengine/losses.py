"""KD losses with analytic logit gradients, and the fused chunked lm-head + loss.

Per valid token (label != -100), with T the temperature and p = softmax(t/T), q = softmax(s/T):

    loss = alpha * CE(s, label) + (1 - alpha) * T^2 * D(p, q)

    forward_kl  D = KL(p || q)                                 dD-part/ds = T (q - p)
    reverse_kl  D = KL(q || p)                                 T q (d - <q, d>),  d = log q - log p
    jsd(beta)   D = beta KL(p || m) + (1-beta) KL(q || m),     T q (g - <q, g>),  g = (1-beta) log(q/m)
                m = beta p + (1-beta) q

and the CE part's gradient is alpha (softmax(s) - onehot). `alpha` always weighs the hard-label CE
term (the seed's scripts used it both ways). The batch loss is the mean over the valid tokens of
the whole batch. A teacher whose vocab is padded beyond the student's has its extra logits dropped.

Shapes: logits [..., vocab]; labels [...]; hidden [..., hidden]; lm-head weight [vocab, hidden].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmaxes run in fp32 (fp64 stays fp64, for the reference tests)."""
    return x if x.dtype == torch.float64 else x.float()


@dataclass(frozen=True)
class KDLossSpec:
    temperature: float = 1.0
    alpha: float = 0.5
    kind: str = "forward_kl"
    beta: float = 0.5  # jsd only

    @classmethod
    def from_config(cls, config) -> KDLossSpec:
        return cls(config.temperature, config.alpha, config.loss, config.jsd_beta)


@dataclass
class LossParts:
    """The batch-mean loss and its two terms (ce and kd are the unweighted means)."""

    loss: torch.Tensor
    ce: float
    kd: float


def align_teacher_vocab(teacher_logits: torch.Tensor, student_vocab: int) -> torch.Tensor:
    """Drop the padding ids a teacher's larger embedding carries (152064 vs 151936).

    Zero-padding the student instead would give those ids real probability mass (exp(0)).
    """
    teacher_vocab = teacher_logits.shape[-1]
    if teacher_vocab == student_vocab:
        return teacher_logits
    if teacher_vocab < student_vocab:
        raise ValueError(
            f"teacher vocab ({teacher_vocab}) is smaller than the student's ({student_vocab}): "
            "they do not share a tokenizer"
        )
    return teacher_logits[..., :student_vocab]


def _divergence_and_grad(s: torch.Tensor, t: torch.Tensor, spec: KDLossSpec):
    """Per-row D(p, q) at temperature T and T * dD/d(s/T) (i.e. T^2 dD/ds), in s's dtype."""
    T = spec.temperature
    log_q = F.log_softmax(s / T, dim=-1)
    log_p = F.log_softmax(t / T, dim=-1)
    q = log_q.exp()
    p = log_p.exp()
    if spec.kind == "forward_kl":
        div = (p * (log_p - log_q)).sum(-1)
        grad = q - p
    elif spec.kind == "reverse_kl":
        d = log_q - log_p
        div = (q * d).sum(-1)
        grad = q * (d - div.unsqueeze(-1))
    elif spec.kind == "jsd":
        b = spec.beta
        log_m = torch.logaddexp(log_p + torch.log(torch.tensor(b, dtype=s.dtype)),
                                log_q + torch.log(torch.tensor(1 - b, dtype=s.dtype)))
        div = b * (p * (log_p - log_m)).sum(-1) + (1 - b) * (q * (log_q - log_m)).sum(-1)
        g = (1 - b) * (log_q - log_m)
        grad = q * (g - (q * g).sum(-1, keepdim=True))
    else:
        raise ValueError(f"loss kind {spec.kind!r} is not one of forward_kl, reverse_kl, jsd")
    return div, grad * T


def kd_sums_and_grad(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, spec: KDLossSpec,
                     normalizer: float):
    """Loss terms summed over the valid rows of a [rows, vocab] chunk, divided by `normalizer`
    (the valid-token count of the whole batch), and d(loss)/ds for the chunk.

    Returns (loss_sum, ce_sum, kd_sum, grad_s) with the sums already divided by `normalizer`.
    """
    t = align_teacher_vocab(t, s.shape[-1])
    valid = labels != IGNORE_INDEX
    safe_labels = torch.where(valid, labels, 0)
    mask = valid.to(s.dtype)

    log_probs = F.log_softmax(s, dim=-1)
    ce = -log_probs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    ce_grad = log_probs.exp()
    ce_grad.scatter_add_(-1, safe_labels.unsqueeze(-1),
                         -torch.ones_like(safe_labels, dtype=s.dtype).unsqueeze(-1))
    div, div_grad = _divergence_and_grad(s, t, spec)

    a, T2 = spec.alpha, spec.temperature**2
    ce_sum = (ce * mask).sum() / normalizer
    kd_sum = (div * mask).sum() / normalizer
    loss_sum = a * ce_sum + (1 - a) * T2 * kd_sum
    grad = (a * ce_grad + (1 - a) * div_grad) * (mask / normalizer).unsqueeze(-1)
    return loss_sum, ce_sum, kd_sum, grad


def kd_loss_reference(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                      spec: KDLossSpec) -> torch.Tensor:
    """The loss by plain autograd-able ops, the way TRL-style trainers write it (tests, naive)."""
    t = align_teacher_vocab(t, s.shape[-1])
    valid = labels != IGNORE_INDEX
    s, t, labels = s[valid], t[valid], labels[valid]
    T = spec.temperature
    ce = F.cross_entropy(s, labels, reduction="sum")
    log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    if spec.kind == "forward_kl":
        div = F.kl_div(log_q, log_p, log_target=True, reduction="sum")
    elif spec.kind == "reverse_kl":
        div = F.kl_div(log_p, log_q, log_target=True, reduction="sum")
    else:
        b = spec.beta
        log_m = torch.logsumexp(torch.stack([log_p + torch.log(torch.tensor(b, dtype=s.dtype)),
                                             log_q + torch.log(torch.tensor(1 - b, dtype=s.dtype))]), 0)
        div = b * F.kl_div(log_m, log_p, log_target=True, reduction="sum") + (1 - b) * F.kl_div(
            log_m, log_q, log_target=True, reduction="sum")
    n = max(int(valid.sum()), 1)
    return (spec.alpha * ce + (1 - spec.alpha) * T**2 * div) / n


class _KDLogitsLoss(torch.autograd.Function):
    """Loss from full logits whose backward is the analytic gradient (no autograd graph of the
    softmaxes is kept: one [tokens, vocab] gradient instead of several activations)."""

    @staticmethod
    def forward(ctx, s, t, labels, spec, normalizer):
        loss, ce, kd, grad = kd_sums_and_grad(_at_least_fp32(s), _at_least_fp32(t), labels, spec, normalizer)
        ctx.save_for_backward(grad.to(s.dtype))
        ctx.parts = (float(ce), float(kd))
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            spec: KDLossSpec) -> LossParts:
    """Batch-mean KD loss from full logits [..., vocab] (teacher logits carry no grad)."""
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v)
    t = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    flat = labels.reshape(-1)
    n = float(max(int((flat != IGNORE_INDEX).sum()), 1))
    if torch.is_grad_enabled() and s.requires_grad:
        loss = _KDLogitsLoss.apply(s, t, flat, spec, n)
        ce, kd = loss.grad_fn.parts
    else:
        loss, ce, kd, _ = kd_sums_and_grad(_at_least_fp32(s), _at_least_fp32(t), flat, spec, n)
    return LossParts(loss, float(ce), float(kd))


def _fused_chunks(h, w, th, tw, labels, spec, chunk, want_grad_h, want_grad_w, normalizer=None):
    """The chunk loop: per chunk of tokens, project both lm-heads, take the loss and its logit
    gradient, and fold that gradient into d/dh and d/dW at once."""
    n = float(max(int((labels != IGNORE_INDEX).sum()), 1)) if normalizer is None else normalizer
    student_vocab = w.shape[0]
    tw = tw[:student_vocab]  # padded teacher ids dropped before the projection
    grad_h = torch.empty_like(h) if want_grad_h else None
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if want_grad_w else None
    loss = torch.zeros((), dtype=acc, device=h.device)
    ce_total = torch.zeros_like(loss)
    kd_total = torch.zeros_like(loss)
    for start in range(0, h.shape[0], chunk):
        sl = slice(start, start + chunk)
        s = _at_least_fp32(h[sl] @ w.t())
        t = _at_least_fp32(th[sl] @ tw.t())
        part, ce, kd, g = kd_sums_and_grad(s, t, labels[sl], spec, n)
        loss += part
        ce_total += ce
        kd_total += kd
        g = g.to(h.dtype)
        if grad_h is not None:
            grad_h[sl] = g @ w
        if grad_w is not None:
            grad_w += (g.t() @ h[sl]).to(acc)
    return loss, ce_total, kd_total, grad_h, grad_w


class _FusedLinearKDLoss(torch.autograd.Function):
    """lm-head projection + KD loss + gradients, chunk by chunk over tokens.

    Only a [chunk, vocab] block of student and teacher logits exists at a time; the gradients of
    the student's hidden states and lm-head weight are accumulated in the forward pass (as
    Liger-Kernel's fused linear losses do), so backward is a multiply.
    """

    @staticmethod
    def forward(ctx, h, w, th, tw, labels, spec, chunk, normalizer=None):
        loss, ce, kd, grad_h, grad_w = _fused_chunks(
            h, w, th, tw, labels, spec, chunk, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            normalizer)
        ctx.grads = (grad_h, grad_w)
        ctx.w_dtype = w.dtype
        ctx.parts = (ce, kd)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.grads
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.w_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None, None


def fused_kd_loss(student_hidden: torch.Tensor, student_head: torch.Tensor,
                  teacher_hidden: torch.Tensor, teacher_head: torch.Tensor,
                  labels: torch.Tensor, spec: KDLossSpec, chunk_tokens: int = 1024,
                  normalizer: float | None = None) -> LossParts:
    """Batch-mean KD loss from final hidden states and lm-head weights, never materialising the
    full [tokens, vocab] logits. hidden [..., H]; head [vocab, H]; labels [...].

    `normalizer` replaces the divisor (these labels' valid-token count): data-parallel ranks pass
    one derived from the global batch's count (kdengine.distributed.Dist.normalizer)."""
    if teacher_head.shape[0] < student_head.shape[0]:
        raise ValueError(
            f"teacher vocab ({teacher_head.shape[0]}) is smaller than the student's "
            f"({student_head.shape[0]}): they do not share a tokenizer")
    h = student_hidden.reshape(-1, student_hidden.shape[-1])
    th = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    flat = labels.reshape(-1)
    tw = teacher_head.detach()
    if torch.is_grad_enabled() and (h.requires_grad or student_head.requires_grad):
        loss = _FusedLinearKDLoss.apply(h, student_head, th, tw, flat, spec, chunk_tokens,
                                        normalizer)
        ce, kd = loss.grad_fn.parts
    else:
        loss, ce, kd, _, _ = _fused_chunks(h, student_head, th, tw, flat, spec, chunk_tokens,
                                           False, False, normalizer)
    return LossParts(loss, float(ce), float(kd))
