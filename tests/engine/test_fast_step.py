"""The GPU fast paths of the trainer, checked on the CPU: the clip folded into fused AdamW,
the frozen teacher's fused projections, the student's concatenated projections, and the
compile options leaving parameter names (and so HF-layout checkpoints) unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from kdengine.compiled import CompileOptions, compile_student, compile_teacher, fused_clipped_step
from kdengine.models import Decoder, DecoderConfig


def tiny_decoder(seed: int = 0) -> Decoder:
    cfg = DecoderConfig(vocab_size=101, hidden_size=48, intermediate_size=96,
                        num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                        attention_bias=True, tie_word_embeddings=True, model_type="qwen2")
    model = Decoder(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def params_and_grads(seed: int, scale: float = 1.0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (7, 33, 128)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * scale
    return params


@pytest.mark.parametrize("scale,max_norm", [(10.0, 1.0), (0.01, 1.0), (3.0, float("inf"))])
def test_fused_clipped_step_equals_clip_grad_norm_then_step(scale, max_norm) -> None:
    want = params_and_grads(0, scale)
    got = [torch.nn.Parameter(p.detach().clone()) for p in want]
    for g, w in zip(got, want, strict=True):
        g.grad = w.grad.clone()
    opt_want = torch.optim.AdamW(want, lr=0.1, weight_decay=0.1, fused=True)
    opt_got = torch.optim.AdamW(got, lr=0.1, weight_decay=0.1, fused=True)
    for _ in range(3):  # several steps: the moments carry the clipped gradients
        norm_want = torch.nn.utils.clip_grad_norm_(want, max_norm)
        opt_want.step()
        norm_got = fused_clipped_step(opt_got, got, torch.tensor(1.5), max_norm)
        assert torch.allclose(norm_got, norm_want, rtol=1e-6)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
        for g, w, p in zip(got, want, params_and_grads(1, scale), strict=True):
            g.grad, w.grad = p.grad.clone(), p.grad.clone()


@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_fused_clipped_step_skips_the_update_on_a_non_finite_loss_or_gradient(bad) -> None:
    params = params_and_grads(0)
    opt = torch.optim.AdamW(params, lr=0.1, fused=True)
    fused_clipped_step(opt, params, torch.tensor(1.0), 1.0)  # one good step: state exists
    before = [p.detach().clone() for p in params]
    step_before = [opt.state[p]["step"].clone() for p in params]
    for p, q in zip(params, params_and_grads(2), strict=True):
        p.grad = q.grad
    loss = torch.tensor(float("nan") if bad == "loss" else 1.0)
    if bad == "grad":
        params[1].grad[3] = float("inf")
    norm = fused_clipped_step(opt, params, loss, 1.0)
    assert torch.isfinite(norm) == (bad == "loss")
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)
    for p, s in zip(params, step_before, strict=True):
        assert torch.equal(opt.state[p]["step"], s)  # the step count does not move either


def test_fused_teacher_computes_the_same_and_keeps_hf_names_and_values() -> None:
    model = tiny_decoder().requires_grad_(False)
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    want = model(ids)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fused = copy.deepcopy(model).fuse_for_inference()
    torch.testing.assert_close(fused(ids), want, rtol=1e-5, atol=1e-6)
    state = fused.state_dict()
    assert list(state) == list(saved)  # the fused buffers are not saved
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    # the HF-named parameters are views into the fused weight: no second copy
    attn = fused.model.layers[0].self_attn
    nq = attn.q_proj.weight.shape[0]
    assert attn.k_proj.weight.data_ptr() == attn.qkv_weight[nq:].data_ptr()
    assert (sum(p.numel() for p in fused.parameters())
            == sum(p.numel() for p in model.parameters()))
    with pytest.raises(ValueError, match="frozen"):
        tiny_decoder().fuse_for_inference()


def test_concatenated_projections_give_the_same_output_and_gradients() -> None:
    model = tiny_decoder()
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    other = copy.deepcopy(model).concat_projections()
    out_a, out_b = model(ids), other(ids)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    (out_a ** 2).mean().backward()
    (out_b ** 2).mean().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compile_options_keep_the_student_parameter_names() -> None:
    from kdengine.providers import ModelStudent, ModelTeacher

    student, teacher = tiny_decoder(1), tiny_decoder(2).requires_grad_(False)
    names = [n for n, _ in student.named_parameters()]
    keys = list(student.state_dict())
    teacher_keys = list(teacher.state_dict())
    opts = CompileOptions(teacher="model", student="model", concat_projections=True)
    assert compile_teacher(ModelTeacher(teacher), opts) == "model"
    assert compile_student(ModelStudent(student), opts) == "model"
    assert [n for n, _ in student.named_parameters()] == names
    assert list(student.state_dict()) == keys and list(teacher.state_dict()) == teacher_keys


@pytest.mark.parametrize(("env", "graphs"), [(None, "layers"), ("model", "model")])
def test_the_teacher_compiles_block_by_block_unless_the_environment_asks_for_one_graph(
        monkeypatch, env, graphs) -> None:
    """By default one trace serves every block (a start that does not grow with depth), with
    the fused projections the whole-model graph uses; KDENGINE_TEACHER_COMPILE=model traces the
    whole forward."""
    from torch._dynamo.utils import counters

    from kdengine.providers import ModelTeacher

    compile_module = torch.nn.Module.compile
    # Dynamo alone: what is traced, not Inductor's kernels (the CPU tests run no C++ compiler)
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kw: compile_module(self, backend="eager", **kw))
    if env is None:
        monkeypatch.delenv("KDENGINE_TEACHER_COMPILE", raising=False)
    else:
        monkeypatch.setenv("KDENGINE_TEACHER_COMPILE", env)
    model = tiny_decoder(3).requires_grad_(False)
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(ids)
    torch._dynamo.reset()
    counters.clear()
    teacher = ModelTeacher(model)
    assert compile_teacher(teacher, CompileOptions.from_env()) == graphs
    assert model.model.layers[0].self_attn.qkv_weight is not None  # fused either way
    with torch.inference_mode():
        first, second = teacher.hidden_states(ids), teacher.hidden_states(ids)
    assert counters["stats"]["unique_graphs"] == 1  # one block's graph for both, or the model's
    one_block = 60  # ops in a block's graph (~54 here); the whole model's holds both blocks
    assert (counters["stats"]["calls_captured"] < one_block) == (graphs == "layers")
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(first, second)


def test_graphs_in_the_environment_replays_the_whole_teacher_graph_as_a_cuda_graph(
        monkeypatch) -> None:
    monkeypatch.setenv("KDENGINE_TEACHER_COMPILE", "graphs")
    options = CompileOptions.from_env()
    assert (options.teacher, options.teacher_cudagraphs) == ("model", True)
    monkeypatch.setenv("KDENGINE_TEACHER_COMPILE", "model")
    assert not CompileOptions.from_env().teacher_cudagraphs


@pytest.mark.parametrize(("env", "expected"), [
    (None, ("layers", False)), ("layers", ("layers", False)), ("model", ("model", False)),
    ("graphs", ("model", True))])
def test_the_student_compiles_as_the_environment_says(monkeypatch, env, expected) -> None:
    if env is None:
        monkeypatch.delenv("KDENGINE_STUDENT_COMPILE", raising=False)
    else:
        monkeypatch.setenv("KDENGINE_STUDENT_COMPILE", env)
    options = CompileOptions.from_env()
    assert (options.student, options.student_cudagraphs) == expected
    assert (options.teacher, options.teacher_cudagraphs) == ("layers", False)


def test_a_run_that_samples_completions_keeps_the_students_graph_off_cuda_graphs(
        monkeypatch) -> None:
    """Sampled batches vary in shape: a CUDA graph of each would be recorded and kept."""
    monkeypatch.setenv("KDENGINE_STUDENT_COMPILE", "graphs")
    options, warning = CompileOptions.from_env().for_sampled_batches()
    assert (options.student, options.student_cudagraphs) == ("model", False)
    assert "KDENGINE_STUDENT_COMPILE=graphs" in warning
    monkeypatch.setenv("KDENGINE_STUDENT_COMPILE", "model")
    options = CompileOptions.from_env()
    assert options.for_sampled_batches() == (options, None)


@pytest.mark.parametrize(("name", "advice"), [
    ("KDENGINE_TEACHER_COMPILE", "set it to model (the teacher's whole forward as one graph), "
     "graphs (that graph as a CUDA graph) or layers (each block), or unset it"),
    ("KDENGINE_STUDENT_COMPILE", "set it to model (the student's whole forward and backward as "
     "one graph), graphs (those graphs as CUDA graphs) or layers (each block), or unset it")])
def test_an_unknown_compile_in_the_environment_is_refused_naming_it(
        tmp_path, engine_cmd, name, advice) -> None:
    import os
    import subprocess

    run_dir = tmp_path / "run"
    out = subprocess.run([*engine_cmd, "train", "--demo", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, name: "blocks"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"kdengine train: error: {name}: is 'blocks': {advice}"]
    assert not run_dir.exists()


def test_compiling_leaves_room_for_every_variant_a_run_sees_and_no_inductor_note(
        monkeypatch) -> None:
    """Teacher and student blocks share one frame (DecoderLayer.forward), and an on-policy run
    with the FP8 teacher compiled 11 variants of it on an H200 (training and evaluation, sampled
    and packed rows, an FP8 block's tensor or Pending input): torch's default limit of 8 ran the
    rest eager and printed dynamo's warning into the run's log (benchmarks/gpu_features.py)."""
    import warnings

    import torch._dynamo.config as dynamo

    from kdengine.compiled import RECOMPILE_LIMIT
    from kdengine.providers import ModelStudent, ModelTeacher

    monkeypatch.setattr(dynamo, "recompile_limit", 8)  # torch's default
    compile_teacher(ModelTeacher(tiny_decoder(2).requires_grad_(False)), CompileOptions())
    assert dynamo.recompile_limit == RECOMPILE_LIMIT >= 11 + 8
    monkeypatch.setattr(dynamo, "recompile_limit", 8)
    compile_student(ModelStudent(tiny_decoder(1)), CompileOptions())
    assert dynamo.recompile_limit == RECOMPILE_LIMIT
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compile_student(ModelStudent(tiny_decoder(1)), CompileOptions())
        warnings.warn("\nOnline softmax is disabled on the fly since Inductor decides to\n"
                      "split the reduction. Cut an issue to PyTorch if this is an\n"
                      "important use case and you want to speed it up with online\nsoftmax.\n",
                      UserWarning, stacklevel=1)
        warnings.warn("TensorFloat32 tensor cores for float32 matrix multiplication available "
                      "but not enabled. Consider setting `torch.set_float32_matmul_precision("
                      "'high')` for better performance.", UserWarning, stacklevel=1)
        warnings.warn("a warning the user should see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a warning the user should see"]


def test_a_run_on_cuda_n_makes_that_gpu_the_current_one(monkeypatch) -> None:
    """Triton launches its kernels on the current CUDA device: a run on cuda:1 with cuda:0
    current had its KD kernel fail (the GPU matrix, benchmarks/gpu_features.py) and fall back
    to the slower compiled math."""
    from kdengine.config import RunConfig
    from kdengine.trainer import pick_device

    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert pick_device(RunConfig(device="cuda:1")) == torch.device("cuda", 1)
    assert made_current == [torch.device("cuda", 1)]
    pick_device(RunConfig(device="cuda"))  # torch's current device: nothing to change
    assert made_current == [torch.device("cuda", 1)]
