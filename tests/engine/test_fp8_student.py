"""FP8 matmuls for the trained student's MLP (kdengine.models.fp8_train, `--student-matmuls
float8`): the MLP as one autograd function, its forward and input gradients against the same
products written out from dequantized operands and its weight gradients against the
compute-dtype products they are, on the CPU through torch's reference FP8 kernel; a model and a
real run through the CLI that trains, passes and resumes exactly. The GPU side (its SwiGLU
kernels against these torch ops, compiled, at the pairs' shapes, and its speed) is checked by
benchmarks/fp8_student.py and timed end to end by benchmarks/kd_pairs.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdengine.config import ConfigError
from kdengine.events import read_events
from kdengine.models import Decoder, DecoderConfig
from kdengine.models.fp8 import quantize_rowwise
from kdengine.models.fp8_train import fp8_swiglu_mlp, reference_swiglu_mlp, use_fp8_matmuls


def _deq(t: torch.Tensor) -> torch.Tensor:
    values, scale = quantize_rowwise(t)
    return values.float() * scale


def _operands(rows: int, seed: int = 0, hidden: int = 64, inter: int = 96):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=gen)
    x[3] *= 300.0  # an outlier token: its own scale in gate/up's forward
    gate_up = torch.randn(2 * inter, hidden, generator=gen) / hidden ** 0.5
    gate_up[:, 7] *= 200.0  # an outlier input column: its own scale in dx's gate/up
    down = torch.randn(hidden, inter, generator=gen) / inter ** 0.5
    grad = torch.randn(rows, hidden, generator=gen)
    grad[5] *= 1e-3  # a token whose gradient is small: its own scale too
    return x.requires_grad_(), gate_up.requires_grad_(), down.requires_grad_(), grad


def _written_out(x, gate_up, down, grad):
    """Each product of the function, in fp32, from the operands it quantizes (forward and the
    input gradients) or the compute-dtype tensors it keeps (the weight gradients)."""
    projected = _deq(x) @ _deq(gate_up).T
    gate, up = projected.chunk(2, dim=-1)
    hidden = F.silu(gate) * up
    out = _deq(hidden) @ _deq(down).T
    grad_hidden = _deq(grad) @ _deq(down.t()).T  # down quantized over its output rows
    sig = torch.sigmoid(gate)
    grad_projected = torch.cat([grad_hidden * up * sig * (1 + gate * (1 - sig)),
                                grad_hidden * gate * sig], dim=-1)
    grad_x = _deq(grad_projected) @ _deq(gate_up.t()).T  # over the 2 I outputs
    return out, grad_x, grad_projected.T @ x, grad.T @ hidden


@pytest.mark.parametrize("rows", [32, 26])  # 26: padded to 32 inside, zero rows add nothing
def test_the_mlp_forward_and_gradients_are_the_products_of_their_operands(rows: int) -> None:
    x, gate_up, down, grad = _operands(rows)
    out = fp8_swiglu_mlp(x, gate_up, down)
    out.backward(grad)
    expected = _written_out(x.detach(), gate_up.detach(), down.detach(), grad)
    torch.testing.assert_close(out, expected[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out, reference_swiglu_mlp(x.detach(), gate_up.detach(),
                                                         down.detach()), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, expected[1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gate_up.grad, expected[2], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(down.grad, expected[3], rtol=1e-5, atol=1e-3)
    assert gate_up.grad.dtype == down.grad.dtype == torch.float32  # the masters', for AdamW


def test_the_mlp_stays_near_full_precision_despite_outlier_tokens_and_columns():
    x, gate_up, down, grad = _operands(64, seed=1)
    fp8_swiglu_mlp(x, gate_up, down).backward(grad)
    exact = [t.detach().clone().requires_grad_() for t in (x, gate_up, down)]
    gate, up = (exact[0] @ exact[1].T).chunk(2, dim=-1)
    (F.silu(gate) * up @ exact[2].T).backward(grad)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    # e4m3's 3 mantissa bits, twice in dx's chain (here 6 %), once in the forward that the
    # weight gradients read (2 % and 4 %): a few per cent, whatever the outliers, because
    # every row of every FP8 sum has its own scale
    assert rel(x.grad, exact[0].grad) < 0.08
    assert rel(down.grad, exact[2].grad) < 0.05
    assert rel(gate_up.grad, exact[1].grad) < 0.08


def test_under_bf16_autocast_the_mlp_computes_in_bf16_and_keeps_the_masters_gradients_fp32():
    x, gate_up, down, _ = _operands(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fp8_swiglu_mlp(x, gate_up, down)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert x.grad.dtype == gate_up.grad.dtype == down.grad.dtype == torch.float32


def _decoder(mlp_bias: bool = False, hidden: int = 64, inter: int = 96) -> Decoder:
    config = DecoderConfig(vocab_size=256, hidden_size=hidden, intermediate_size=inter,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           attention_bias=True, mlp_bias=mlp_bias, tie_word_embeddings=True)
    model = Decoder(config)
    model.init_weights(torch.Generator().manual_seed(3), std=0.1)
    return model


@pytest.mark.parametrize(("shape", "in_fp8"), [
    ({}, 2),  # one function a block
    ({"mlp_bias": True}, 0),  # a bias: no pair has one; the MLP stays in the compute dtype
    ({"hidden": 24, "inter": 48}, 0),  # 24 columns: torch._scaled_mm wants multiples of 16
])
def test_a_students_mlps_run_in_fp8_where_they_can_and_keep_parameters_and_gradients(
        shape: dict, in_fp8: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdengine.models import decoder

    calls = []
    monkeypatch.setattr(decoder, "fp8_swiglu_mlp",
                        lambda *a: calls.append(a) or fp8_swiglu_mlp(*a))
    plain = _decoder(**shape)
    fp8 = copy.deepcopy(plain)
    assert use_fp8_matmuls(fp8) == (in_fp8, 2 - in_fp8)
    assert fp8.state_dict().keys() == plain.state_dict().keys()  # checkpoints keep HF names
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(4))
    losses = []
    for model in (plain, fp8):
        loss = F.cross_entropy(model.logits(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        losses.append(float(loss.detach()))
    assert len(calls) == in_fp8
    assert abs(losses[0] - losses[1]) < 0.01 * losses[0]
    # e4m3 keeps 3 mantissa bits to bf16's 7: each gradient carries its rounding as noise, not
    # a new direction
    for (name, p), q in zip(plain.named_parameters(), fp8.parameters(), strict=True):
        cos = F.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.95, (name, float(cos))


def test_the_compiled_mlp_computes_what_the_eager_one_does():
    x, gate_up, down, grad = _operands(32, seed=2)
    again = [t.detach().clone().requires_grad_() for t in (x, gate_up, down)]
    fp8_swiglu_mlp(x, gate_up, down).backward(grad)
    torch._dynamo.reset()
    # one graph, forward and backward traced as the trainer's torch.compile traces them (no
    # break at the autograd function); Inductor's code for them is the GPU's, checked against
    # the eager function by benchmarks/fp8_student.py
    torch.compile(fp8_swiglu_mlp, fullgraph=True, backend="aot_eager")(*again).backward(grad)
    for eager, compiled in zip((x, gate_up, down), again, strict=True):
        torch.testing.assert_close(compiled.grad, eager.grad, rtol=1e-4, atol=1e-3)


def test_the_loader_refuses_a_device_without_fp8_matmuls_naming_the_field_and_the_way_out():
    from kdengine.loading import _student_fp8

    with pytest.raises(ConfigError) as refused:
        _student_fp8(_decoder(), torch.device("mps"), log=None)
    assert refused.value.field == "student_matmuls"
    assert "compute capability 8.9" in str(refused.value)
    assert "set it to auto" in str(refused.value)


# -- a real run through the CLI ---------------------------------------------------------------

RUN = ["--steps", "12", "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3",
       "--eval-every", "6", "--eval-batches", "2", "--log-every", "1", "--checkpoint-every", "6",
       "--temperature", "2", "--device", "cpu", "--seed", "3", "--student-matmuls", "float8"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_tiny_inputs

    # a 32-wide student: its MLP 16-aligned, so it runs in FP8
    return write_tiny_inputs(tmp_path_factory.mktemp("fp8_student"), student_hidden=32)


def _train(inputs: dict[str, str], run_dir: Path, *extra: str, launcher: list[str] | None = None,
           **env: str) -> subprocess.CompletedProcess:
    argv = ["train", "--teacher", inputs["teacher"], "--student", inputs["student"], "--data",
            inputs["data"], "--run-dir", str(run_dir), *RUN, *extra]
    return subprocess.run([*(launcher or [sys.executable, "-m", "kdengine"]), *argv],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _by_step(run_dir: Path, kind: str, *keys: str) -> dict[int, tuple]:
    return {e["step"]: tuple(e[k] for k in keys)
            for e in read_events(run_dir / "events.jsonl") if e["type"] == kind}


@pytest.fixture(scope="module")
def reference(inputs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("fp8_reference") / "run"
    out = _train(inputs, run_dir)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return run_dir


def test_a_run_on_fp8_student_matmuls_trains_passes_and_says_so(reference: Path) -> None:
    log = (reference / "launch.log").read_text()
    assert "student: 1 MLP of 1 through float8 e4m3 matmuls" in log
    assert json.loads((reference / "config.json").read_text())["student_matmuls"] == "float8"
    verdict = [e for e in read_events(reference / "events.jsonl") if e["type"] == "verdict"][-1]
    assert verdict["status"] == "pass"
    evals = _by_step(reference, "eval", "val_ce")
    assert evals[12][0] < evals[0][0]
    # the final student is plain HF layout: fp32 masters, no trace of FP8 in it
    from safetensors.torch import load_file

    weights = load_file(str(reference / "final" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} <= {torch.float32, torch.bfloat16}


def test_a_killed_fp8_student_run_resumes_to_exactly_the_same_losses(
        inputs: dict[str, str], reference: Path, tmp_path: Path, killed_at_step) -> None:
    killed = tmp_path / "killed"
    out = _train(inputs, killed, launcher=killed_at_step, KD_KILL_AT="9")
    assert out.returncode == -9, out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "kdengine", "train", "--resume", str(killed)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert _by_step(killed, "step", "loss", "kd", "ce") == \
        _by_step(reference, "step", "loss", "kd", "ce")  # exact: the checkpoint has what FP8 reads
    assert _by_step(killed, "eval", "val_loss", "val_ce") == \
        _by_step(reference, "eval", "val_loss", "val_ce")


@pytest.mark.parametrize("field", ["student_matmuls", "teacher_dtype"])
def test_the_preflight_refuses_float8_where_the_device_has_no_fp8_matmuls(monkeypatch, field):
    # before any run directory exists (`kdengine train --check` runs the same preflight)
    import kdengine.models.fp8 as fp8
    from kdengine.config import demo_config
    from kdengine.preflight import check_run_inputs

    check_run_inputs(demo_config().with_values(**{field: "float8"}))  # the CPU: reference FP8
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: False)
    with pytest.raises(ConfigError) as refused:
        check_run_inputs(demo_config().with_values(**{field: "float8"}))
    assert refused.value.field == field and "set it to auto" in str(refused.value)


def test_column_quantization_is_the_rowwise_quantization_of_the_transpose():
    # what the weight gradient's operands use (on the GPU through fp8_kernels' one-pass kernel,
    # checked against this by benchmarks/fp8_student.py)
    from kdengine.models.fp8_train import _columns

    x, _, _, _ = _operands(48, seed=5)
    values, scale = _columns(x.detach())
    expected, expected_scale = quantize_rowwise(x.detach().t())
    assert values.shape == (64, 48) and values.is_contiguous()
    assert torch.equal(values.view(torch.uint8), expected.contiguous().view(torch.uint8))
    assert torch.equal(scale, expected_scale)


@pytest.mark.parametrize("flag", ["--student-matmuls", "--teacher-dtype"])
def test_float8_on_a_gpu_without_fp8_matmuls_exits_2_with_one_line_and_no_run_directory(
        tmp_path: Path, flag: str, engine_in_process, monkeypatch: pytest.MonkeyPatch) -> None:
    # `kdengine train` where torch sees a GPU without FP8 matmuls (an A100, say): the CLI in this
    # process (a new interpreter's torch import checks nothing more), with only the capability
    # check answered as such a GPU would answer it
    import kdengine.models.fp8 as fp8

    monkeypatch.setattr(fp8, "fp8_supported", lambda device: False)
    run_dir = tmp_path / "run"
    out = engine_in_process("train", "--demo", flag, "float8", "--run-dir", str(run_dir))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert lines[0].startswith(f"kdengine train: error: {flag}: float8 needs FP8 matmuls")
    assert lines[0].endswith("has none: set it to auto")
    assert not run_dir.exists()
