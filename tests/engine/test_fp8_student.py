"""FP8 matmuls for the trained student (kdengine.models.fp8_train, `--student-matmuls float8`):
the three products of each projection against the same products written out from dequantized
operands, on the CPU through torch's reference FP8 kernel; a model and a real run through the CLI
that trains, passes and resumes exactly. The GPU side (compiled, at the pairs' shapes, and its
speed) is checked by benchmarks/fp8_student.py and timed end to end by benchmarks/kd_pairs.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdengine.config import ConfigError
from kdengine.events import read_events
from kdengine.models import Decoder, DecoderConfig
from kdengine.models.fp8_train import fp8_linear, reference_grads, use_fp8_matmuls


def _operands(rows: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 64, generator=gen)
    x[3] *= 500.0  # an outlier token: its own scale in the forward and in dx
    weight = torch.randn(48, 64, generator=gen)
    weight[:, 5] *= 300.0  # an outlier input column: its own scale in dx's W and in dW's x
    grad = torch.randn(rows, 48, generator=gen)
    return x.requires_grad_(), weight.requires_grad_(), grad


@pytest.mark.parametrize("rows", [32, 26])  # 26: padded to 32 inside, zeros add nothing
def test_forward_and_both_gradients_are_the_products_of_the_dequantized_operands(rows):
    x, weight, grad = _operands(rows)
    bias = torch.randn(48, requires_grad=True)
    out = fp8_linear(x, weight, bias)
    out.backward(grad)
    y, grad_x, grad_w = reference_grads(x.detach(), weight.detach(), grad)
    torch.testing.assert_close(out, y + bias, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, grad_x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(weight.grad, grad_w, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(bias.grad, grad.sum(0))
    assert weight.grad.dtype == torch.float32  # the master's own dtype, for AdamW


def test_each_product_stays_near_full_precision_despite_outlier_rows_and_columns():
    x, weight, grad = _operands(64, seed=1)
    fp8_linear(x, weight).backward(grad)
    xs, ws = x.detach(), weight.detach()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    # two e4m3 roundings per product (3 mantissa bits each): a few per cent, whatever the
    # outliers, because every row of every sum has its own scale
    assert rel(fp8_linear(xs, ws), xs @ ws.T) < 0.05
    assert rel(x.grad, grad @ ws) < 0.05
    assert rel(weight.grad, grad.T @ xs) < 0.05


def test_under_bf16_autocast_the_output_is_bf16_and_gradients_keep_their_tensors_dtypes():
    x, weight, _ = _operands(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fp8_linear(x, weight)
    assert out.dtype == torch.bfloat16  # as F.linear under autocast
    out.float().square().sum().backward()
    assert x.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_the_compiled_matmul_computes_what_the_eager_one_does():
    x, weight, grad = _operands(32, seed=2)
    x2, w2 = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    fp8_linear(x, weight).backward(grad)
    torch._dynamo.reset()
    compiled = torch.compile(fp8_linear)
    compiled(x2, w2).backward(grad)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(w2.grad, weight.grad, rtol=1e-4, atol=1e-2)


def _decoder(hidden: int = 64) -> Decoder:
    config = DecoderConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           attention_bias=True, tie_word_embeddings=True)
    model = Decoder(config)
    model.init_weights(torch.Generator().manual_seed(3), std=0.1)
    return model


def test_a_student_on_fp8_matmuls_keeps_its_parameters_and_follows_the_same_gradient():
    plain = _decoder()
    fp8 = copy.deepcopy(plain)
    assert use_fp8_matmuls(fp8) == (2 * 7, 0)  # q, k, v, o, gate, up, down in each block
    assert fp8.state_dict().keys() == plain.state_dict().keys()  # checkpoints keep HF names
    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(4))
    losses = []
    for model in (plain, fp8):
        loss = torch.nn.functional.cross_entropy(model.logits(ids[:, :-1]).flatten(0, 1),
                                                 ids[:, 1:].flatten())
        loss.backward()
        losses.append(float(loss.detach()))
    assert abs(losses[0] - losses[1]) < 0.01 * losses[0]
    # e4m3 keeps 3 mantissa bits to bf16's 7, so each gradient carries ~16x bf16's rounding
    # error (here 6-22 % of its norm against bf16's 0.5-2 %): noise, not a new direction
    for (name, p), q in zip(plain.named_parameters(), fp8.parameters(), strict=True):
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.95, (name, float(cos))


def test_projections_without_16_aligned_shapes_stay_in_the_compute_dtype():
    model = _decoder(hidden=32)  # k/v: 2 heads x 8 = 16 rows; all fit
    assert use_fp8_matmuls(model) == (14, 0)
    odd = Decoder(DecoderConfig(vocab_size=64, hidden_size=24, intermediate_size=48,
                                num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=2))
    assert use_fp8_matmuls(odd) == (0, 7)  # 24 columns: every projection stays as it was
    odd.logits(torch.tensor([[1, 2, 3]])).sum().backward()


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

    # a 32-wide student: every projection 16-aligned, so all seven run in FP8
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
    assert "student: 7 linear layers through float8 e4m3 matmuls" in log
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
    from kdengine.models.fp8 import quantize_rowwise
    from kdengine.models.fp8_train import _columns

    x, _, _ = _operands(48, seed=5)
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
