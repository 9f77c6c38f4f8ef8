"""The hand-written Triton KD kernels (kdengine.kd_kernels) against the float64 reference.

They run on the CPU under Triton's interpreter (TRITON_INTERPRET=1), so where Triton is
installed the same kernels the GPU runs are checked here; without Triton the module is skipped
(the GPU benchmark's correctness phase checks them on the device). Same bounds as the compiled
path: fp32 within 1e-5, bf16 logits within 1e-2, norm-relative.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported
pytest.importorskip("triton")

from kdengine import losses  # noqa: E402
from kdengine.losses import KDLossSpec, fused_kd_loss  # noqa: E402

from .test_fused_loss import make_case, reference, rel  # noqa: E402


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch: pytest.MonkeyPatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before the interpreter could be selected")
    monkeypatch.setattr(losses, "KD_KERNEL", True)
    monkeypatch.setattr(losses, "_KD_KERNELS", {})
    yield
    assert "broken" not in losses._KD_KERNELS, losses._KD_KERNELS.get("broken")
    assert losses._KD_KERNELS.get("used"), "the Triton kernels did not run"


def run(h, w, th, tw, labels, spec, chunk, cd):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    parts = fused_kd_loss(h, w, th, tw, labels, spec, chunk, compute_dtype=cd, compile_math=True)
    parts.loss.backward()
    return parts, h.grad, w.grad


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (2.0, 0.3), (0.7, 1.0)])
def test_kernel_fp32_equals_float64_reference_within_1e_5(kind, temperature, alpha) -> None:
    h, w, th, tw, labels = make_case(3)
    spec = KDLossSpec(temperature, alpha, kind)
    ref_loss, ref_gh, ref_gw = reference(h, w, th, tw, labels, spec)
    parts, gh, gw = run(h, w, th, tw, labels, spec, 16, torch.float32)  # ragged last chunk
    assert rel(parts.loss, ref_loss) < 1e-5
    assert rel(gh, ref_gh) < 1e-5 and rel(gw, ref_gw) < 1e-5
    # the CE and KD terms are reported even when alpha gives CE no weight
    spec_ce = KDLossSpec(temperature, 1.0, kind)
    spec_kd = KDLossSpec(temperature, 0.0, kind)
    assert abs(parts.ce - float(reference(h, w, th, tw, labels, spec_ce)[0])) < 1e-4
    assert abs(parts.kd * temperature**2 - float(reference(h, w, th, tw, labels, spec_kd)[0])
               ) < 1e-4


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("into_logits", [False, True])
def test_kernel_bf16_and_in_place_gradient_within_1e_2(kind, into_logits, monkeypatch) -> None:
    monkeypatch.setattr(losses, "GRAD_INTO_LOGITS", into_logits)
    h, w, th, tw, labels = make_case(4)
    th, tw = th.bfloat16(), tw.bfloat16()
    spec = KDLossSpec(2.0, 0.3, kind)
    ref_loss, ref_gh, ref_gw = reference(h, w, th, tw, labels, spec)
    parts, gh, gw = run(h, w, th, tw, labels, spec, 16, torch.bfloat16)
    assert rel(parts.loss, ref_loss) < 1e-2
    assert rel(gh, ref_gh) < 1e-2 and rel(gw, ref_gw) < 1e-2
