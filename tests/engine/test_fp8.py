"""The FP8 teacher (kdengine.models.fp8): the quantization math on the CPU, the quantized
teacher against its full-precision self, and a real run with `--teacher-dtype float8`. The GPU
side (torch._scaled_mm on an H200, under torch.compile) is checked by benchmarks/fp8_teacher.py
(and timed end to end by benchmarks/kd_pairs.py)."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
import torch

from kdengine.config import ConfigError, RunConfig
from kdengine.events import read_events
from kdengine.models import Decoder, DecoderConfig
from kdengine.models.fp8 import (
    E4M3,
    E4M3_MAX,
    Fp8Head,
    Fp8Linear,
    dequantize,
    quantize_rowwise,
    quantize_teacher,
    reference_linear,
    rms_norm_quantize_rows,
    swiglu_quantize_rows,
)
from kdengine.models.norm import RMSNorm

# e4m3 keeps 3 mantissa bits: a value in the normal range rounds to within 2^-4 of itself
E4M3_REL = 2.0 ** -4


def test_rowwise_quantization_maps_each_rows_amax_to_448_and_rounds_within_e4m3_precision():
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    x[3] *= 1000.0  # an outlier row does not flatten the others: each row has its own scale
    x[5] = 0.0  # and an all-zero row stays zero
    values, scale = quantize_rowwise(x)
    assert values.dtype == E4M3 and scale.dtype == torch.float32 and scale.shape == (64, 1)
    assert torch.equal(values.float().abs().amax(dim=1)[x.abs().amax(dim=1) > 0],
                       torch.full((63,), E4M3_MAX))
    back = dequantize(values, scale)
    assert torch.equal(back[5], torch.zeros(96))
    normal = x.abs() >= scale * 2.0 ** -6  # e4m3's smallest normal, in each row's units
    rel = ((back - x).abs() / x.abs().clamp_min(1e-30))[normal]
    assert rel.max() <= E4M3_REL + 1e-6
    # below the normal range the error is at most half of the smallest subnormal step
    assert ((back - x).abs()[~normal] <= (scale * 2.0 ** -10).expand_as(x)[~normal]).all()


def test_fp8_linear_computes_the_dequantized_product_and_stays_near_the_full_precision_one():
    gen = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(48, 64, generator=gen), torch.randn(48, generator=gen)
    layer = Fp8Linear(weight, bias)
    assert layer.weight.dtype == E4M3 and not layer.weight.requires_grad
    x = torch.randn(2, 13, 64, generator=gen)  # 26 rows: not a multiple of 16 (padded inside)
    out = layer(x)
    assert out.shape == (2, 13, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference_linear(x, layer), rtol=1e-5, atol=1e-4)
    exact = x @ weight.T + bias
    assert (out - exact).norm() / exact.norm() < 0.05  # two e4m3 roundings, 64 terms a dot
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear(torch.randn(40, 64))


def test_casting_the_model_keeps_e4m3_weights_and_fp32_scales():
    layer = Fp8Linear(torch.randn(32, 32))
    values, scale = layer.weight.clone(), layer.weight_scale.clone()
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == E4M3 and torch.equal(layer.weight.float(), values.float())
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, scale)
    assert layer(torch.randn(16, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_the_kd_loss_through_an_fp8_head_is_the_loss_of_its_dequantized_head_and_rows():
    """The FP8 teacher's head: each chunk's hidden rows quantized per row, the head per vocab
    row, and a teacher vocabulary padded past the student's (272 ids against 260, not a multiple
    of 16) cut to the student's before the loss."""
    from kdengine.losses import KDLossSpec, fused_kd_loss

    gen = torch.Generator().manual_seed(5)
    h = torch.randn(40, 32, generator=gen, requires_grad=True)
    w = (torch.randn(260, 32, generator=gen) / 6).requires_grad_()
    th, tw = torch.randn(40, 48, generator=gen), torch.randn(272, 48, generator=gen) / 4
    th[7] *= 50.0  # an outlier row keeps its own scale
    labels = torch.randint(0, 260, (40,), generator=gen)
    spec = KDLossSpec(temperature=2.0, alpha=0.3)

    def loss_and_grads(teacher_hidden, teacher_head):
        h.grad = w.grad = None
        parts = fused_kd_loss(h, w, teacher_hidden, teacher_head, labels, spec, chunk_tokens=16,
                              compile_math=False)
        parts.loss.backward()
        return parts.loss.detach(), h.grad.clone(), w.grad.clone()

    got = loss_and_grads(th, Fp8Head(tw))
    want = loss_and_grads(dequantize(*quantize_rowwise(th)), dequantize(*quantize_rowwise(tw)))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    exact = loss_and_grads(th, tw)[0]
    assert abs(float(got[0] - exact)) < 0.01 * float(exact)


def test_a_head_whose_vocabulary_is_not_16_aligned_stays_in_the_compute_dtype():
    from kdengine.providers import ModelTeacher

    config = DecoderConfig(vocab_size=257, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           tie_word_embeddings=True)
    model = Decoder(config).requires_grad_(False).eval()
    assert quantize_teacher(model) == 4  # the block's projections, not the 257-row head
    assert getattr(model, "lm_head_fp8", None) is None
    assert ModelTeacher(model).loss_head is model.lm_head_weight


# Qwen3's attention: q/k norms, no bias, heads of a power-of-two width (fused_rope)
QK_NORMED = dict(hidden_size=128, attention_bias=False, qk_norm=True)


def _peaked_decoder(**overrides) -> Decoder:
    config = DecoderConfig(**{**dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, attention_bias=True,
                                     tie_word_embeddings=True), **overrides})
    model = Decoder(config)
    model.init_weights(torch.Generator().manual_seed(3), std=0.1)  # logits far from uniform
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return model.requires_grad_(False).eval()


def test_a_quantized_teacher_keeps_its_distribution_its_parameter_count_and_halves_its_weights():
    full = _peaked_decoder()
    fp8 = copy.deepcopy(full)
    params = sum(p.numel() for p in fp8.parameters())
    assert quantize_teacher(fp8) == 2 * 4 + 1  # q/k/v, o, gate/up, down in each block; the head
    assert isinstance(fp8.lm_head_fp8, Fp8Head)
    assert sum(p.numel() for p in fp8.parameters()) == params  # MFU counts stay bf16-equivalent
    assert not any(isinstance(m, torch.nn.Linear) for m in fp8.model.layers.modules())
    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        p_full = full.logits(ids).float().log_softmax(-1)
        p_fp8 = fp8.logits(ids).float().log_softmax(-1)
    kl = (p_full.exp() * (p_full - p_fp8)).sum(-1).mean()
    spread = (p_full.exp() * -p_full).sum(-1).mean()  # the teacher's own entropy, for scale
    assert kl < 0.01 * spread, (kl, spread)


def test_swiglu_and_its_quantization_in_one_step_are_the_quantized_product_of_gate_and_up():
    gen = torch.Generator().manual_seed(7)
    gate_up = torch.randn(24, 2 * 48, generator=gen).to(torch.bfloat16) * 3
    gate_up[5] = 0  # an all-zero row: zero values, a positive scale
    values, scale = swiglu_quantize_rows(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    hidden = torch.nn.functional.silu(gate) * up
    expected_values, expected_scale = quantize_rowwise(hidden)
    assert values.dtype == E4M3 and values.shape == (24, 48) and scale.shape == (24, 1)
    assert torch.equal(values.view(torch.uint8), expected_values.view(torch.uint8))
    assert torch.equal(scale, expected_scale) and bool((scale > 0).all())
    assert not bool(values[5].float().any())


def test_a_norm_and_its_quantization_in_one_step_are_the_quantized_normed_rows():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(24, 64, generator=gen).to(torch.bfloat16) * 5
    x[3] = 0  # an all-zero row: zero values, a positive scale
    norm = RMSNorm(64, 1e-6).to(torch.bfloat16)
    norm.weight.data = torch.rand(64, generator=gen).to(torch.bfloat16) + 0.5
    values, scale = rms_norm_quantize_rows(x, norm.weight, norm.eps)
    expected_values, expected_scale = quantize_rowwise(norm(x))
    assert values.dtype == E4M3 and values.shape == (24, 64) and scale.shape == (24, 1)
    assert torch.equal(values.view(torch.uint8), expected_values.view(torch.uint8))
    assert torch.equal(scale, expected_scale) and bool((scale > 0).all())
    assert not bool(values[3].float().any())


@pytest.mark.parametrize("tokens", [48, 13])  # 13: rows padded to the FP8 GEMM's 16
@pytest.mark.parametrize("attention", [{}, QK_NORMED], ids=["biased", "qk-normed"])
def test_a_teacher_whose_projections_norm_and_swiglu_their_own_inputs_computes_the_same_logits(
        tokens, attention):
    """The one-pass path (each block's norms handed to q/k/v and gate/up, gate and up handed
    whole to down, a block's last add left to the next block's norm, q/k norms and rope as one
    step where there is no bias) against the unfused one: on the CPU both run torch's ops, bit
    for bit, packed rows too."""
    fused, unfused = _peaked_decoder(**attention), _peaked_decoder(**attention)
    quantize_teacher(fused)
    quantize_teacher(unfused, one_pass=False)
    assert all(layer.mlp.fused_swiglu and layer.fused_norms for layer in fused.model.layers)
    assert all(layer.self_attn.fused_rope == bool(attention) for layer in fused.model.layers)
    assert not any(layer.mlp.fused_swiglu or layer.fused_norms or layer.self_attn.fused_rope
                   for layer in unfused.model.layers)
    ids = torch.randint(0, 256, (2, tokens), generator=torch.Generator().manual_seed(3))
    positions = torch.cat([torch.arange(5), torch.arange(tokens - 5)]).expand(2, tokens)
    with torch.no_grad():
        assert torch.equal(fused.logits(ids), unfused.logits(ids))
        assert torch.equal(fused(ids, positions), unfused(ids, positions))


def test_a_quantized_teacher_generates(tmp_path):
    from kdengine.generation import SamplingConfig, generate

    teacher = _peaked_decoder()
    quantize_teacher(teacher)
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([9, 10])]
    out = generate(teacher, prompts, SamplingConfig(max_new_tokens=4, temperature=0.0))
    first = teacher.logits(torch.tensor([[5, 6, 7]]))[0, -1].argmax()
    assert out.tokens.shape == (2, 4) and int(out.tokens[0, 0]) == int(first)


def test_a_run_with_a_float8_teacher_trains_and_passes(tmp_path, make_tiny_inputs, tiny_args,
                                                       engine_cmd):
    # a 272-id teacher head (16-aligned, padded past the tokenizer's 257): FP8 too
    inputs = make_tiny_inputs(tmp_path / "inputs", teacher_vocab=272)
    run_dir = tmp_path / "run"
    done = subprocess.run([*engine_cmd, *tiny_args(inputs, run_dir, teacher_dtype="float8",
                                                   steps=10, checkpoint_every=0)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "9 linear layers in float8 e4m3 (rowwise scales, the lm head's copy too)" in \
        done.stdout
    verdict = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "verdict"][-1]
    assert verdict["status"] == "pass"
    assert json.loads((run_dir / "config.json").read_text())["teacher_dtype"] == "float8"


def test_float8_with_a_teacher_cache_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="teacher_dtype.*live teacher"):
        RunConfig(teacher_cache="/x", student="s", data="d", teacher_dtype="float8").validate()


def test_a_device_without_fp8_matmuls_is_refused_naming_the_field_and_the_way_out():
    from kdengine.loading import _to_fp8

    with pytest.raises(ConfigError) as refused:
        _to_fp8(_peaked_decoder(), torch.device("mps"), log=None)
    assert refused.value.field == "teacher_dtype"
    assert "compute capability 8.9" in str(refused.value) and "set it to auto" in \
        str(refused.value)
