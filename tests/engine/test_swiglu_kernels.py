"""A trained model's SwiGLU kernels (kdengine.models.swiglu_kernels), forward and backward,
against autograd through torch's ops, on the CPU under Triton's interpreter where Triton is
installed (skipped elsewhere; benchmarks/swiglu_kernel.py checks them on the GPU)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported
pytest.importorskip("triton")

from kdengine.models import swiglu_kernels  # noqa: E402


@pytest.fixture(autouse=True)
def _interpreted():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before the interpreter could be selected")


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("inter", [1024 + 320, 96])  # a ragged last block; under one block
def test_swiglu_kernels_give_torchs_values_and_gradients(dtype, tolerance, inter):
    gen = torch.Generator().manual_seed(inter)
    gate_up = (torch.randn(12, 2 * inter, generator=gen) * 3).to(dtype)
    grad = torch.randn(12, inter, generator=gen).to(dtype)
    ours = gate_up.clone().requires_grad_(True)
    out = swiglu_kernels.swiglu(ours)
    out.backward(grad)
    theirs = gate_up.float().requires_grad_(True)
    gate, up = theirs.chunk(2, dim=-1)
    want = F.silu(gate) * up
    want.backward(grad.float())

    def rel(a, b):
        return float((a.detach().float() - b.detach()).norm() / b.detach().norm())

    assert out.dtype == dtype and out.shape == (12, inter)
    assert rel(out, want) < tolerance
    assert ours.grad.dtype == dtype and rel(ours.grad, theirs.grad) < tolerance
