"""The fused chunked lm-head + KD loss against the float64 reference, on the CPU.

The loss and the gradients of the student's hidden states and lm-head weight must equal plain
float64 autograd through full logits: within 1e-5 (norm-relative) when computed in fp32, within
1e-2 when the lm-head matmuls run in bf16 (softmaxes still fp32). Every loss kind, a teacher
with padded vocab, ignored labels and a last chunk shorter than the others are covered. The
same checks run on the GPU inside benchmarks/kd_throughput.py.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from kdengine.losses import IGNORE_INDEX, KDLossSpec, fused_kd_loss, kd_loss_reference

KINDS = ["forward_kl", "reverse_kl", "jsd"]


def make_case(seed: int, tokens: int = 37, hidden: int = 24, teacher_hidden: int = 40,
              vocab: int = 211, teacher_vocab: int = 227, logit_std: float = 2.0):
    """Student/teacher hidden states and heads whose logits have std ~logit_std; the teacher's
    head has `teacher_vocab - vocab` padding rows; every 4th label is ignored."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen) * (logit_std / hidden**0.5)
    th = torch.randn(tokens, teacher_hidden, generator=gen)
    tw = torch.randn(teacher_vocab, teacher_hidden, generator=gen)
    tw *= logit_std / teacher_hidden**0.5
    # padding rows with large logits: if they leaked into the softmax, the loss would change a lot
    tw[vocab:] = th.mean(0) * 10.0
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    labels[::4] = IGNORE_INDEX
    return h, w, th, tw, labels


def reference(h, w, th, tw, labels, spec):
    """float64 autograd through full logits, the teacher's padding ids dropped."""
    h64 = h.double().requires_grad_(True)
    w64 = w.double().requires_grad_(True)
    s = h64 @ w64.t()
    t = th.double() @ tw.double()[: w.shape[0]].t()
    loss = kd_loss_reference(s, t, labels, spec)
    loss.backward()
    return loss.detach(), h64.grad, w64.grad


def fused(h, w, th, tw, labels, spec, chunk, compute_dtype=None):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    parts = fused_kd_loss(h, w, th, tw, labels, spec, chunk, compute_dtype=compute_dtype)
    parts.loss.backward()
    return parts, h.grad, w.grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (2.0, 0.3), (0.7, 1.0)])
def test_fused_fp32_equals_float64_reference_within_1e_5(kind, temperature, alpha) -> None:
    h, w, th, tw, labels = make_case(1)
    spec = KDLossSpec(temperature, alpha, kind, beta=0.3)
    ref_loss, ref_gh, ref_gw = reference(h, w, th, tw, labels, spec)
    parts, gh, gw = fused(h, w, th, tw, labels, spec, chunk=16)  # 37 = 16 + 16 + 5
    assert parts.loss.dtype == torch.float32 and gh.dtype == torch.float32
    assert rel(parts.loss, ref_loss) < 1e-5
    assert rel(gh, ref_gh) < 1e-5
    assert rel(gw, ref_gw) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_fused_bf16_compute_equals_float64_reference_within_1e_2(kind) -> None:
    h, w, th, tw, labels = make_case(2)
    th, tw = th.bfloat16(), tw.bfloat16()  # a teacher loaded in the compute dtype
    spec = KDLossSpec(2.0, 0.3, kind, beta=0.4)
    ref_loss, ref_gh, ref_gw = reference(h, w, th, tw, labels, spec)
    parts, gh, gw = fused(h, w, th, tw, labels, spec, chunk=16, compute_dtype=torch.bfloat16)
    # fp32 master weights get fp32 gradients; the loss is accumulated in fp32
    assert gw.dtype == torch.float32 and gh.dtype == torch.float32
    assert parts.loss.dtype == torch.float32
    assert rel(parts.loss, ref_loss) < 1e-2
    assert rel(gh, ref_gh) < 1e-2
    assert rel(gw, ref_gw) < 1e-2


def test_autocast_region_selects_its_dtype_for_the_lm_head() -> None:
    h, w, th, tw, labels = make_case(3)
    spec = KDLossSpec(1.0, 0.5, "forward_kl")
    ref_loss, _, _ = reference(h, w, th, tw, labels, spec)
    exact = fused_kd_loss(h, w, th, tw, labels, spec, 16).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fused_kd_loss(h, w, th, tw, labels, spec, 16).loss
    assert rel(exact, ref_loss) < 1e-5
    assert 1e-6 < rel(mixed, ref_loss) < 1e-2  # bf16 matmuls: close, but not fp32-exact


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 4096])
def test_chunk_size_does_not_change_the_result(chunk: int) -> None:
    h, w, th, tw, labels = make_case(4)
    spec = KDLossSpec(2.0, 0.3, "jsd", beta=0.5)
    base, gh0, gw0 = fused(h, w, th, tw, labels, spec, chunk=37)
    parts, gh, gw = fused(h, w, th, tw, labels, spec, chunk=chunk)
    assert rel(parts.loss, base.loss) < 1e-6
    assert rel(gh, gh0) < 1e-6 and rel(gw, gw0) < 1e-6
    assert parts.ce == pytest.approx(base.ce, rel=1e-6)
    assert parts.kd == pytest.approx(base.kd, rel=1e-6)


def test_padded_teacher_ids_are_dropped_never_zero_padded() -> None:
    h, w, th, tw, labels = make_case(5)
    spec = KDLossSpec(1.0, 0.0, "forward_kl")
    padded, gh_p, gw_p = fused(h, w, th, tw, labels, spec, chunk=8)
    trimmed, gh_t, gw_t = fused(h, w, th, tw[: w.shape[0]].clone(), labels, spec, chunk=8)
    assert rel(padded.loss, trimmed.loss) < 1e-7
    assert rel(gh_p, gh_t) < 1e-7 and rel(gw_p, gw_t) < 1e-7
    # zero-padding the student instead gives the padding ids real mass: a different loss
    zero_pad = torch.cat([w, torch.zeros(tw.shape[0] - w.shape[0], w.shape[1])])
    wrong = fused_kd_loss(h, zero_pad, th, tw, labels, spec, 8).loss
    assert rel(wrong, padded.loss) > 1e-2


def test_ignored_tokens_get_zero_gradient_and_do_not_count() -> None:
    h, w, th, tw, labels = make_case(6)
    spec = KDLossSpec(2.0, 0.5, "reverse_kl")
    parts, gh, _ = fused(h, w, th, tw, labels, spec, chunk=10)
    ignored = labels == IGNORE_INDEX
    assert torch.all(gh[ignored] == 0)
    assert torch.all(gh[~ignored].abs().sum(-1) > 0)
    kept, _, _ = fused(h[~ignored], w, th[~ignored], tw, labels[~ignored], spec, chunk=10)
    assert rel(parts.loss, kept.loss) < 1e-6


def test_all_ignored_batch_gives_zero_loss_and_gradient_not_nan() -> None:
    h, w, th, tw, labels = make_case(7)
    labels[:] = IGNORE_INDEX
    parts, gh, gw = fused(h, w, th, tw, labels, KDLossSpec(), chunk=16)
    assert float(parts.loss) == 0.0
    assert torch.all(gh == 0) and torch.all(gw == 0)


def test_no_grad_path_gives_the_same_loss_and_terms() -> None:
    h, w, th, tw, labels = make_case(8)
    spec = KDLossSpec(4.0, 0.3, "forward_kl")
    with_grad, _, _ = fused(h, w, th, tw, labels, spec, chunk=16)
    with torch.no_grad():
        plain = fused_kd_loss(h, w, th, tw, labels, spec, 16)
    assert rel(plain.loss, with_grad.loss) < 1e-7
    assert plain.ce == pytest.approx(with_grad.ce) and plain.kd == pytest.approx(with_grad.kd)


def test_batched_hidden_states_and_upstream_gradient_scale() -> None:
    h, w, th, tw, labels = make_case(9, tokens=24)
    spec = KDLossSpec(1.5, 0.2, "jsd", beta=0.7)
    ref_loss, ref_gh, ref_gw = reference(h, w, th, tw, labels, spec)
    hb = h.reshape(3, 8, -1).clone().requires_grad_(True)
    wb = w.clone().requires_grad_(True)
    parts = fused_kd_loss(hb, wb, th.reshape(3, 8, -1), tw, labels.reshape(3, 8), spec, 5)
    (parts.loss * 3.0).backward()  # the backward multiplies by the upstream gradient
    assert rel(parts.loss, ref_loss) < 1e-5
    assert rel(hb.grad.reshape(h.shape), 3.0 * ref_gh) < 1e-5
    assert rel(wb.grad, 3.0 * ref_gw) < 1e-5


def test_teacher_with_smaller_vocab_is_refused_with_a_clear_error() -> None:
    h, w, th, tw, labels = make_case(10)
    with pytest.raises(ValueError, match="do not share a tokenizer"):
        fused_kd_loss(h, w, th, tw[:100], labels, KDLossSpec())


def test_explicit_normalizer_divides_the_sums_instead_of_the_local_count() -> None:
    h, w, th, tw, labels = make_case(11)
    spec = KDLossSpec(2.0, 0.3, "forward_kl")
    local, gh_local, gw_local = fused(h, w, th, tw, labels, spec, chunk=16)
    n_local = float((labels != IGNORE_INDEX).sum())
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    parts = fused_kd_loss(hh, ww, th, tw, labels, spec, 16, normalizer=2 * n_local)
    parts.loss.backward()
    assert rel(parts.loss, local.loss / 2) < 1e-6
    assert rel(hh.grad, gh_local / 2) < 1e-6 and rel(ww.grad, gw_local / 2) < 1e-6


def test_loss_terms_read_as_floats() -> None:
    h, w, th, tw, labels = make_case(12)
    parts, _, _ = fused(h, w, th, tw, labels, KDLossSpec(2.0, 0.3, "jsd"), chunk=16)
    assert isinstance(parts.ce, float) and isinstance(parts.kd, float)
    assert parts.ce > 0 and parts.kd > 0


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_compiled_chunk_math_is_the_same_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path the GPU takes (torch.compile of the chunk math, dynamic row count, gradient
    written into the logit block), here through Inductor's CPU backend."""
    from kdengine import losses

    monkeypatch.setattr(losses, "GRAD_INTO_LOGITS", True)
    h, w, th, tw, labels = make_case(13)
    spec = KDLossSpec(2.0, 0.3, "jsd", beta=0.3)
    ref_loss, ref_gh, ref_gw = reference(h, w, th, tw, labels, spec)
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    parts = fused_kd_loss(hh, ww, th, tw, labels, spec, 16, compile_math=True)
    parts.loss.backward()
    assert losses._COMPILED_MATH.get("broken") is None
    assert rel(parts.loss, ref_loss) < 1e-5
    assert rel(hh.grad, ref_gh) < 1e-5 and rel(ww.grad, ref_gw) < 1e-5
