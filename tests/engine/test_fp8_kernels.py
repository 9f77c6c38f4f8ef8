"""The FP8 teacher's hand-written attention kernels (kdengine.models.fp8_kernels) against the
torch ops they replace, on the CPU under Triton's interpreter where Triton is installed (the
module is skipped elsewhere; the GPU benchmark's check phase runs them on the device).

The interpreter's own e4m3 cast can drop a carry (a known defect of it), so quantized values
are compared as numbers (within two e4m3 steps) rather than bytes; the scales and the rotated
heads, which involve no e4m3 cast, are compared to the bf16 rounding.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported
pytest.importorskip("triton")

from kdengine.models import fp8_kernels  # noqa: E402
from kdengine.models.decoder import Attention, Decoder, DecoderConfig  # noqa: E402
from kdengine.models.fp8 import dequantize, qk_norm_rope_reference, quantize_rowwise  # noqa: E402


@pytest.fixture(autouse=True)
def _interpreted():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before the interpreter could be selected")


@pytest.mark.parametrize("cols", [4096, 1536, 96])  # one block; a head and a tail; small
def test_one_pass_rowwise_quantization_gives_torchs_scales_and_values(cols):
    gen = torch.Generator().manual_seed(cols)
    x = (torch.randn(40, cols, generator=gen) * 3).to(torch.bfloat16)
    x[7] = 0  # an all-zero row: zeros and a positive scale
    values, scale = fp8_kernels.quantize_rows(x)
    expected_values, expected_scale = quantize_rowwise(x)
    assert values.shape == (40, cols) and scale.shape == (40, 1)
    torch.testing.assert_close(scale, expected_scale, rtol=1e-6, atol=0)
    got, want = dequantize(values, scale), dequantize(expected_values, expected_scale)
    step = 2.0**-3 * want.abs() + 2.0**-9 * expected_scale  # relative; subnormals' absolute
    close = (got - want).abs() <= 2 * step
    # the interpreter's cast rounding up into a new binade: half the value (within a step)
    dropped_carry = (2 * got - want).abs() <= 2 * step
    assert bool((close | dropped_carry).all())
    assert float(close.float().mean()) > 0.95
    assert not bool(values[7].float().any())


@pytest.mark.parametrize("qk_norm", [True, False], ids=["qk-normed", "rope-only"])
@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed-rows"])
def test_q_k_norms_and_rope_in_one_pass_match_the_attentions_own_ops(qk_norm, packed):
    """Heads that do not fill a power of two (6 q, 3 kv), rope from the model's tables."""
    config = DecoderConfig(vocab_size=64, hidden_size=6 * 64, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=6, num_key_value_heads=3,
                           head_dim=64, qk_norm=qk_norm)
    model = Decoder(config).to(torch.bfloat16)
    attn: Attention = model.model.layers[0].self_attn
    gen = torch.Generator().manual_seed(5)
    if qk_norm:
        attn.q_norm.weight.data = (torch.rand(64, generator=gen) + 0.5).to(torch.bfloat16)
        attn.k_norm.weight.data = (torch.rand(64, generator=gen) + 0.5).to(torch.bfloat16)
    b, t = 2, 24
    qkv = (torch.randn(b, t, (6 + 2 * 3) * 64, generator=gen) * 2).to(torch.bfloat16)
    if packed:
        positions = torch.cat([torch.arange(9), torch.arange(t - 9)]).expand(b, t)
        cos, sin = model.packed_rope(positions, torch.bfloat16)
    else:
        cos, sin = model.rope(t, qkv.device, torch.bfloat16)
    rows = qkv.reshape(b * t, -1)
    q, k = fp8_kernels.qk_norm_rope(
        rows, attn.q_norm.weight if qk_norm else rows, attn.k_norm.weight if qk_norm else rows,
        cos.contiguous(), sin.contiguous(), 6, 3, t, attn.q_norm.eps if qk_norm else 0.0,
        qk_norm)
    want_q, want_k = qk_norm_rope_reference(qkv, attn, cos, sin, b, t)
    # the kernel rounds the rotation once, torch's ops after each product: a bf16 step or two
    torch.testing.assert_close(q.view(b, t, 6, 64), want_q, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(k.view(b, t, 3, 64), want_k, rtol=2e-2, atol=2e-2)
