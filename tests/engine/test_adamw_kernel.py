"""The hand-written Triton AdamW (kdengine.adamw_kernel) against torch's fused AdamW.

It runs on the CPU under Triton's interpreter (TRITON_INTERPRET=1), so where Triton is
installed the kernel the GPU runs is checked here against torch's own fused kernel; without
Triton the module is skipped (benchmarks/adamw_kernel.py checks it on the device).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported
pytest.importorskip("triton")

from kdengine import adamw_kernel  # noqa: E402

SETTINGS = {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "eps": 1e-8}


def _torch_step(optimizer, grad_scale, found_inf) -> None:
    optimizer.grad_scale, optimizer.found_inf = grad_scale, found_inf
    try:
        optimizer.step()
    finally:
        optimizer.grad_scale = optimizer.found_inf = None


def test_the_triton_update_is_torchs_fused_adamw_clipped_skipped_and_plain() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before the interpreter could be selected")
    gen = torch.Generator().manual_seed(0)
    shapes = [(1,), (7,), (2047,), (3, 683), (12293,)]  # none a multiple of the block
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = torch.optim.AdamW(params, fused=True, **SETTINGS)
    ours = torch.optim.AdamW(twins, fused=True, **SETTINGS)
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    for grad_scale, found_inf in ((torch.tensor(2.5), zero), (None, one), (None, zero)):
        for p, q in zip(params, twins, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        before = [q.detach().clone() for q in twins]
        _torch_step(reference, grad_scale, found_inf)
        adamw_kernel.adamw_step(ours, grad_scale, found_inf)
        for p, q, old in zip(params, twins, before, strict=True):
            a, b = reference.state[p], ours.state[q]
            assert torch.equal(a["step"], b["step"])
            for x, y in ((p, q), (a["exp_avg"], b["exp_avg"]), (a["exp_avg_sq"], b["exp_avg_sq"])):
                # an ulp or two of fp32, relative to the tensor's largest value
                assert float((x - y).abs().max() / y.abs().max()) < 1e-6
            assert torch.equal(q, old) == bool(found_inf)  # a skipped update moves nothing
    assert float(ours.state[twins[0]]["step"]) == 2.0  # the skipped step did not count
