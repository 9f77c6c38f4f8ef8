"""KD losses with analytic logit gradients, and the fused chunked lm-head + loss.

Per valid token (label != -100), with T the temperature and p = softmax(t/T), q = softmax(s/T):

    loss = alpha * CE(s, label) + (1 - alpha) * T^2 * D(p, q)

    forward_kl  D = KL(p || q)                              T^2 dD/ds = T (q - p)
    reverse_kl  D = KL(q || p)                              T q (d - <q, d>),  d = log q - log p
    jsd(beta)   D = beta KL(p || m) + (1-beta) KL(q || m),  T q (g - <q, g>),  g = (1-beta) log(q/m)
                m = beta p + (1-beta) q

and the CE part's gradient is alpha (softmax(s) - onehot). `alpha` always weighs the hard-label CE
term (the seed's scripts used it both ways). The batch loss is the mean over the valid tokens of
the whole batch. A teacher whose vocab is padded beyond the student's has its extra logits dropped.

Shapes: logits [..., vocab]; labels [...]; hidden [..., hidden]; lm-head weight [vocab, hidden].
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdengine.models.fp8 import Fp8Head

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
        kind = config.loss
        if kind == "jsd" and config.beta in (0.0, 1.0):
            # the JSD's limits, as TRL's GKD takes them (the formula itself is 0 there)
            kind = "forward_kl" if config.beta == 0.0 else "reverse_kl"
        return cls(config.temperature, config.alpha, kind, config.beta)


class LossParts:
    """The batch-mean loss and its two terms (ce and kd are the unweighted means, floats).

    ce and kd may be given as 0-dim device tensors: they become floats when first read, so a
    training step can queue its backward before it waits for the GPU. `value` is the loss to
    report and guard, a 0-dim tensor: `loss` itself, or under torchrun the global batch's,
    while `loss` (what the backward runs on) stays this rank's own, so the backward never
    waits for the other ranks."""

    __slots__ = ("loss", "_ce", "_kd", "_value")

    def __init__(self, loss: torch.Tensor, ce: float | torch.Tensor,
                 kd: float | torch.Tensor, value: torch.Tensor | None = None) -> None:
        self.loss, self._ce, self._kd, self._value = loss, ce, kd, value

    @property
    def value(self) -> torch.Tensor:
        return self.loss.detach() if self._value is None else self._value

    @property
    def ce(self) -> float:
        if isinstance(self._ce, torch.Tensor):
            self._ce = float(self._ce)
        return self._ce

    @property
    def kd(self) -> float:
        if isinstance(self._kd, torch.Tensor):
            self._kd = float(self._kd)
        return self._kd

    def raw_terms(self) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """ce and kd as held (device tensors stay tensors: reading them does not sync)."""
        return self._ce, self._kd

    def __repr__(self) -> str:
        return f"LossParts(loss={self.loss!r}, ce={self.ce}, kd={self.kd})"


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


def _chunk_math(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, inv_n: torch.Tensor,
                temperature: float, alpha: float, kind: str, beta: float, want_grad: bool,
                grad_dtype: torch.dtype):
    """The per-row math of one [rows, vocab] chunk, in fp32 (fp64 stays fp64) whatever the
    logits' dtype: returns (loss_sum, ce_sum, kd_sum, grad) with the sums already multiplied by
    `inv_n` (1 / valid tokens of the whole batch) and grad = d(loss)/ds in `grad_dtype`.

    Written as one chain of row-wise ops so torch.compile fuses it into a few passes over the
    chunk (the upcast of bf16 logits included); eager on the CPU computes the same function.
    """
    s = _at_least_fp32(s)
    t = _at_least_fp32(t)
    T = temperature
    valid = labels != IGNORE_INDEX
    safe_labels = torch.where(valid, labels, 0).unsqueeze(-1)
    row_w = valid.to(s.dtype) * inv_n.to(s.dtype)  # per-row weight: 0 for ignored, 1/n else

    # log_softmax(s) is shared by the CE term and, at T == 1, the KD term
    log_probs = torch.log_softmax(s, dim=-1)
    log_q = log_probs if T == 1.0 else torch.log_softmax(s / T, dim=-1)
    log_p = torch.log_softmax(t / T, dim=-1)
    q = log_q.exp()
    p = log_p.exp()
    ce = -log_probs.gather(-1, safe_labels).squeeze(-1)
    if kind == "forward_kl":
        div = (p * (log_p - log_q)).sum(-1)
        div_grad = q - p if want_grad else None
    elif kind == "reverse_kl":
        d = log_q - log_p
        div = (q * d).sum(-1)
        div_grad = q * (d - div.unsqueeze(-1)) if want_grad else None
    elif kind == "jsd":
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1.0 - beta))
        div = beta * (p * (log_p - log_m)).sum(-1) + (1.0 - beta) * (q * (log_q - log_m)).sum(-1)
        if want_grad:
            g = (1.0 - beta) * (log_q - log_m)
            div_grad = q * (g - (q * g).sum(-1, keepdim=True))
        else:
            div_grad = None
    else:
        raise ValueError(f"loss kind {kind!r} is not one of forward_kl, reverse_kl, jsd")

    ce_sum = (ce * row_w).sum()
    kd_sum = (div * row_w).sum()
    loss_sum = alpha * ce_sum + (1.0 - alpha) * T * T * kd_sum
    if not want_grad:
        return loss_sum, ce_sum, kd_sum, None
    # d/ds of alpha*CE + (1-alpha)*T^2*D: alpha (softmax(s) - onehot) + (1-alpha) T (dD/d(s/T))
    grad = (1.0 - alpha) * T * div_grad
    if alpha > 0.0:
        onehot = torch.arange(s.shape[-1], device=s.device) == safe_labels
        grad = grad + alpha * (log_probs.exp() - onehot.to(s.dtype))
    grad = grad * row_w.unsqueeze(-1)
    return loss_sum, ce_sum, kd_sum, grad.to(grad_dtype)


def _check_kind(spec: KDLossSpec) -> None:
    if spec.kind not in ("forward_kl", "reverse_kl", "jsd"):
        raise ValueError(f"loss kind {spec.kind!r} is not one of forward_kl, reverse_kl, jsd")


def kd_sums_and_grad(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, spec: KDLossSpec,
                     normalizer: float):
    """Loss terms summed over the valid rows of a [rows, vocab] chunk, divided by `normalizer`
    (the valid-token count of the whole batch), and d(loss)/ds for the chunk.

    Returns (loss_sum, ce_sum, kd_sum, grad_s) with the sums already divided by `normalizer`;
    computed in fp32 at least (fp64 inputs stay fp64), grad_s in that dtype.
    """
    _check_kind(spec)
    t = align_teacher_vocab(t, s.shape[-1])
    work = torch.float64 if s.dtype == torch.float64 else torch.float32
    inv_n = torch.tensor(1.0 / normalizer, dtype=work, device=s.device)
    return _chunk_math(s, t, labels, inv_n, spec.temperature, spec.alpha, spec.kind, spec.beta,
                       True, work)


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
        log_m = torch.logsumexp(torch.stack([log_p + math.log(b), log_q + math.log(1 - b)]), 0)
        div = b * F.kl_div(log_m, log_p, log_target=True, reduction="sum") + (1 - b) * F.kl_div(
            log_m, log_q, log_target=True, reduction="sum")
    n = max(int(valid.sum()), 1)
    return (spec.alpha * ce + (1 - spec.alpha) * T**2 * div) / n


class _KDLogitsLoss(torch.autograd.Function):
    """Loss from full logits whose backward is the analytic gradient (no autograd graph of the
    softmaxes is kept: one [tokens, vocab] gradient instead of several activations)."""

    @staticmethod
    def forward(ctx, s, t, labels, spec, normalizer):
        loss, ce, kd, grad = kd_sums_and_grad(_at_least_fp32(s), _at_least_fp32(t), labels, spec,
                                              normalizer)
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


# -- the fused chunked lm-head + loss -----------------------------------------------------------

_COMPILED_MATH: dict[str, object] = {}


def compile_default(device: torch.device) -> bool:
    """torch.compile the per-chunk math where it pays: CUDA, unless KDENGINE_COMPILE=0.

    On the CPU the eager ops are used (no compiler toolchain needed, and CI stays fast)."""
    return device.type == "cuda" and os.environ.get("KDENGINE_COMPILE", "1") != "0"


def _chunk_math_into_logits(s, t, labels, inv_n, temperature, alpha, kind, beta):
    """_chunk_math whose gradient overwrites the student's logit block `s` (same dtype): one
    [chunk, vocab] buffer fewer at the loss's memory peak."""
    loss_sum, ce_sum, kd_sum, grad = _chunk_math(s, t, labels, inv_n, temperature, alpha, kind,
                                                 beta, True, s.dtype)
    s.copy_(grad)
    return loss_sum, ce_sum, kd_sum


# Where the compiled math writes the gradient into the logit block instead of a new buffer.
GRAD_INTO_LOGITS = os.environ.get("KDENGINE_GRAD_INTO_LOGITS", "0") == "1"


def _math_fn(name: str):
    """The chunk math, compiled once per process on the first GPU call."""
    fn = _COMPILED_MATH.get(name)
    if fn is None:
        target = _chunk_math if name == "math" else _chunk_math_into_logits
        fn = torch.compile(target, fullgraph=True)
        _COMPILED_MATH[name] = fn
    return fn


# The hand-written Triton kernels (kdengine.kd_kernels) for forward/reverse KL on CUDA:
# KDENGINE_KD_KERNEL=0 sends those kinds to the torch.compile'd math instead.
KD_KERNEL = os.environ.get("KDENGINE_KD_KERNEL", "1") != "0"
_KD_KERNELS: dict[str, object] = {}


def _kd_kernels(s: torch.Tensor):
    """kdengine.kd_kernels if the chunk can use it here (CUDA, Triton importable, not broken;
    the CPU only under the Triton interpreter, for tests), else None."""
    if not KD_KERNEL or "broken" in _KD_KERNELS:
        return None
    if s.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    if "module" not in _KD_KERNELS:
        try:
            from kdengine import kd_kernels
        except Exception as exc:  # noqa: BLE001 - no Triton: the compiled math does the work
            _KD_KERNELS["broken"] = f"import: {exc!r}"
            return None
        _KD_KERNELS["module"] = kd_kernels
    return _KD_KERNELS["module"]


def kd_kernel_status() -> str:
    """What ran the forward/reverse-KL chunk math in this process (for benchmarks and logs)."""
    if "broken" in _KD_KERNELS:
        return f"compiled math (Triton kernel unavailable: {_KD_KERNELS['broken']})"
    return "triton kernels" if _KD_KERNELS.get("used") else "compiled math"


def _run_math(s, t, labels, inv_n, spec, want_grad, grad_dtype, compile_math):
    kernels = _kd_kernels(s) if compile_math else None
    if kernels is not None and kernels.supported(s, t, spec.kind) and s.dtype != torch.float64:
        into = GRAD_INTO_LOGITS and want_grad and s.dtype == grad_dtype
        try:
            out = kernels.kd_chunk(s, t, labels, inv_n, spec.temperature, spec.alpha, spec.kind,
                                   want_grad, grad_dtype, out=s if into else None)
            _KD_KERNELS["used"] = True
            return out
        except Exception as exc:  # noqa: BLE001 - a kernel failure costs speed, never the run
            _KD_KERNELS["broken"] = repr(exc)[:500]
            warnings.warn(f"the Triton KD kernel failed, using the compiled math: {exc!r}",
                          RuntimeWarning, stacklevel=2)
    if compile_math and _COMPILED_MATH.get("broken") is None:
        # The row count varies (last chunk, other batch sizes): one graph for any row count
        # instead of a recompile per shape.
        torch._dynamo.maybe_mark_dynamic(s, 0)
        torch._dynamo.maybe_mark_dynamic(t, 0)
        torch._dynamo.maybe_mark_dynamic(labels, 0)
        args = (spec.temperature, spec.alpha, spec.kind, spec.beta)
        try:
            if GRAD_INTO_LOGITS and want_grad and s.dtype == grad_dtype:
                loss_sum, ce_sum, kd_sum = _math_fn("into_logits")(s, t, labels, inv_n, *args)
                return loss_sum, ce_sum, kd_sum, s
            return _math_fn("math")(s, t, labels, inv_n, *args, want_grad, grad_dtype)
        except Exception as exc:  # a compiler failure must cost speed, never the run
            _COMPILED_MATH["broken"] = repr(exc)
            warnings.warn(f"torch.compile of the KD chunk math failed, running eager: {exc!r}",
                          RuntimeWarning, stacklevel=2)
    return _chunk_math(s, t, labels, inv_n, spec.temperature, spec.alpha, spec.kind, spec.beta,
                       want_grad, grad_dtype)


_MIXED_ADDMM: dict[str, bool] = {}


def _mixed_addmm_works(device: torch.device) -> bool:
    """Whether addmm(fp32 acc, bf16, bf16, out_dtype=fp32) runs and is right on this device
    (CUDA, torch >= 2.8): then grad_w accumulates in fp32 inside the matmul's epilogue."""
    key = str(device)
    if key not in _MIXED_ADDMM:
        ok = False
        if device.type == "cuda":
            try:
                gen = torch.Generator(device=device).manual_seed(0)
                acc = torch.randn(64, 32, device=device, generator=gen)
                a = torch.randn(64, 48, device=device, generator=gen).to(torch.bfloat16)
                b = torch.randn(48, 32, device=device, generator=gen).to(torch.bfloat16)
                want = acc.double() + a.double() @ b.double()
                got = acc.clone()
                torch.addmm(got, a, b, out_dtype=torch.float32, out=got)
                ok = bool(((got.double() - want).norm() / want.norm()) < 1e-3)
            except Exception:  # noqa: BLE001 - any failure: the portable path
                ok = False
        _MIXED_ADDMM[key] = ok
    return _MIXED_ADDMM[key]


def _accumulate_grad_w(grad_w: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> None:
    """grad_w += g^T x, accumulated in grad_w's dtype (fp32 for bf16 compute)."""
    if g.dtype == grad_w.dtype:
        grad_w.addmm_(g.t(), x)
    elif _mixed_addmm_works(g.device):
        torch.addmm(grad_w, g.t(), x, out_dtype=grad_w.dtype, out=grad_w)
    else:
        grad_w.add_(g.t() @ x)


def chunk_loop(h, w, labels, chunk, compute_dtype, normalizer, want_grad_h, want_grad_w,
               loss_scale, chunk_math):
    """The chunk loop every fused lm-head loss shares: per chunk of tokens, project the student's
    lm-head in the compute dtype, let `chunk_math(sl, s, inv_n, want_grad)` take the loss terms
    and the logit gradient (in fp32) of those rows, and fold that gradient into d/dh and d/dW at
    once. Returns (loss, ce, kd, grad_h, grad_w).

    Memory: one [chunk, vocab] block of student logits and of gradient (plus what chunk_math
    holds: the teacher's block) in the compute dtype; grad_w accumulates in fp32 (fp64 for fp64
    inputs). `loss_scale` (fp16's dynamic loss scale, a power of two): the logit gradient is
    computed for the scaled loss before it is rounded to the compute dtype, or fp16 would flush
    its small entries (about 1/tokens each) to zero; grad_h and grad_w come back scaled, the
    loss terms do not."""
    cd = compute_dtype
    acc = torch.float64 if cd == torch.float64 else torch.float32
    hc, wc = h.to(cd), w.to(cd)  # one cast of each operand per call (not per chunk)
    if normalizer is None:
        valid_count = (labels != IGNORE_INDEX).sum().clamp_min(1)
        inv_n = 1.0 / valid_count.to(acc)  # a device tensor: no host sync, no recompiles
    else:
        inv_n = torch.tensor(1.0 / normalizer, dtype=acc, device=h.device)
    if loss_scale is not None:  # powers of two: exact, the same numbers scaled
        inv_n = inv_n * loss_scale
    want_grad = want_grad_h or want_grad_w
    grad_h = torch.empty(h.shape, dtype=cd, device=h.device) if want_grad_h else None
    grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if want_grad_w else None
    loss = torch.zeros((), dtype=acc, device=h.device)
    ce_total = torch.zeros_like(loss)
    kd_total = torch.zeros_like(loss)
    for start in range(0, h.shape[0], chunk):
        sl = slice(start, start + chunk)
        s = hc[sl] @ wc.t()
        part, ce, kd, g = chunk_math(sl, s, inv_n, want_grad)
        del s  # free the logit block before the gradient matmuls
        loss += part
        ce_total += ce
        kd_total += kd
        if grad_h is not None:
            torch.mm(g, wc, out=grad_h[sl])
        if grad_w is not None:
            _accumulate_grad_w(grad_w, g, hc[sl])
        del g
    if loss_scale is not None:
        unscale = 1.0 / loss_scale
        loss, ce_total, kd_total = loss * unscale, ce_total * unscale, kd_total * unscale
    return loss, ce_total, kd_total, grad_h, grad_w


def _fused_chunks(h, w, th, tw, labels, spec, chunk, compute_dtype, compile_math, normalizer,
                  want_grad_h, want_grad_w, loss_scale=None):
    """chunk_loop with the live teacher: each chunk's teacher logits are projected beside the
    student's (its padded ids dropped before the projection, so they never get logits)."""
    _check_kind(spec)
    cd = compute_dtype
    thc, teacher_logits = th.to(cd), _teacher_projection(tw, w.shape[0], cd)

    def chunk_math(sl, s, inv_n, want_grad):
        t = teacher_logits(thc[sl])
        return _run_math(s, t, labels[sl], inv_n, spec, want_grad, cd, compile_math)

    return chunk_loop(h, w, labels, chunk, cd, normalizer, want_grad_h, want_grad_w,
                      loss_scale, chunk_math)


def _teacher_projection(tw, vocab: int, cd: torch.dtype):
    """rows -> the teacher's logits over the student's `vocab` ids, in the compute dtype: a
    matmul with the head weight, or an FP8 teacher's e4m3 head (kdengine.models.fp8.Fp8Head)."""
    if isinstance(tw, Fp8Head):
        return lambda rows: tw.logits(rows, vocab)
    twc = tw[:vocab].to(cd)
    return lambda rows: rows @ twc.t()


class _FusedLinearKDLoss(torch.autograd.Function):
    """lm-head projection + KD loss + gradients, chunk by chunk over tokens.

    Only a [chunk, vocab] block of student and teacher logits exists at a time; the gradients of
    the student's hidden states and lm-head weight are accumulated in the forward pass (as
    Liger-Kernel's fused linear losses do), so backward is a multiply.
    """

    @staticmethod
    def forward(ctx, h, w, th, tw, labels, spec, chunk, compute_dtype, compile_math, normalizer,
                loss_scale):
        loss, ce, kd, grad_h, grad_w = _fused_chunks(
            h, w, th, tw, labels, spec, chunk, compute_dtype, compile_math, normalizer,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1], loss_scale)
        ctx.grads = (grad_h, grad_w)
        ctx.loss_scale = loss_scale
        ctx.dtypes = (h.dtype, w.dtype)
        ctx.parts = (ce, kd)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.grads
        ctx.grads = (None, None)
        h_dtype, w_dtype = ctx.dtypes
        if ctx.loss_scale is not None:  # the stored gradients are of the scaled loss already
            grad_out = grad_out / ctx.loss_scale
        gh = gw = None
        if grad_h is not None:
            gh = grad_h.to(h_dtype) * grad_out.to(h_dtype)
        if grad_w is not None:
            # in place: no second [vocab, hidden] fp32 buffer
            gw = grad_w.mul_(grad_out.to(grad_w.dtype)).to(w_dtype)
        return gh, gw, None, None, None, None, None, None, None, None, None


def _default_compute_dtype(h: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """Inside an autocast region its dtype; otherwise the wider of the student's tensors."""
    if torch.is_autocast_enabled(h.device.type) and h.dtype != torch.float64:
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, w.dtype)


def fused_kd_loss(student_hidden: torch.Tensor, student_head: torch.Tensor,
                  teacher_hidden: torch.Tensor, teacher_head: torch.Tensor | Fp8Head,
                  labels: torch.Tensor, spec: KDLossSpec, chunk_tokens: int = 1024, *,
                  compute_dtype: torch.dtype | None = None,
                  compile_math: bool | None = None,
                  normalizer: float | None = None,
                  loss_scale: float | None = None) -> LossParts:
    """Batch-mean KD loss from final hidden states and lm-head weights, never materialising the
    full [tokens, vocab] logits. hidden [..., H]; head [vocab, H] (the teacher's may be an FP8
    teacher's `Fp8Head`); labels [...].

    The lm-head matmuls run in `compute_dtype` (default: the autocast dtype inside autocast,
    else the student's dtype), the softmaxes in fp32, grad of the head in fp32 (the dtype of an
    fp32 master weight). `compile_math` (default: on CUDA) runs the per-chunk math through
    torch.compile; the CPU path is the same function, eager. `normalizer` replaces the batch's
    own valid-token count as the divisor (data parallel: the global count / world size).
    `loss_scale` (fp16 training: GradScaler's scale, a power of two) is the factor the
    caller will scale the loss's backward by; see _fused_chunks.
    """
    if teacher_head.shape[0] < student_head.shape[0]:
        raise ValueError(
            f"teacher vocab ({teacher_head.shape[0]}) is smaller than the student's "
            f"({student_head.shape[0]}): they do not share a tokenizer")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    h = student_hidden.reshape(-1, student_hidden.shape[-1])
    th = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    flat = labels.reshape(-1)
    tw = teacher_head if isinstance(teacher_head, Fp8Head) else teacher_head.detach()
    cd = compute_dtype or _default_compute_dtype(h, student_head)
    compile_math = compile_default(h.device) if compile_math is None else compile_math
    # the loss's own autocast would re-cast per op; the casts are explicit below instead
    with torch.autocast(h.device.type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or student_head.requires_grad):
            loss = _FusedLinearKDLoss.apply(h, student_head, th, tw, flat, spec, chunk_tokens,
                                            cd, compile_math, normalizer, loss_scale)
            ce, kd = loss.grad_fn.parts
        else:
            loss, ce, kd, _, _ = _fused_chunks(h, student_head, th, tw, flat, spec, chunk_tokens,
                                               cd, compile_math, normalizer, False, False)
    return LossParts(loss, ce.detach(), kd.detach())  # floats on first read: no sync here
