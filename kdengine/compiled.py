"""Speed on the GPU without changing what is computed: torch.compile of the teacher, the
student's blocks and the fused AdamW step with clipping folded in.

Parameter names (and so checkpoints in HF layout) never change: blocks compile in place, the
teacher's fused projections are views built at load time, the student's concatenated ones are
computed from its own parameters. `KDTrainer` applies this on CUDA; the CPU runs eager.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch

from kdengine.config import student_compile_from_env, teacher_compile_from_env
from kdengine.models.swiglu import load_kernels as load_swiglu_kernels


@dataclass(frozen=True)
class CompileOptions:
    """What torch.compile covers when the trainer compiles (CUDA by default; the CPU runs eager).

    teacher: the frozen teacher's q/k/v and gate/up weights are fused at load time
    (Decoder.fuse_for_inference; its HF parameter names and values stay); "layers" compiles
    each block (one trace serves all), "model" its whole forward as one graph (with
    concat_projections off, "layers" leaves the projections unfused). teacher_cudagraphs: the
    whole-model teacher replays as a CUDA graph (static shapes, no autograd:
    mode="reduce-overhead").
    student: "layers" compiles each block, "model" the whole forward (and its backward) as one
    graph; student_cudagraphs: those graphs replay as CUDA graphs. concat_projections: the
    student runs one matmul over its concatenated q/k/v and one over gate/up weights
    (parameters unchanged).
    """

    teacher: str = "layers"
    teacher_cudagraphs: bool = False
    student: str = "layers"
    student_cudagraphs: bool = False
    concat_projections: bool = True

    @classmethod
    def from_env(cls) -> CompileOptions:
        """The defaults, with the teacher's compile from KDENGINE_TEACHER_COMPILE and the
        student's from KDENGINE_STUDENT_COMPILE if set ("graphs": the whole model's graph
        replayed as CUDA graphs)."""
        teacher, student = teacher_compile_from_env(), student_compile_from_env()
        return cls(teacher="model" if teacher == "graphs" else teacher,
                   teacher_cudagraphs=teacher == "graphs",
                   student="model" if student == "graphs" else student,
                   student_cudagraphs=student == "graphs")

    def for_sampled_batches(self) -> tuple[CompileOptions, str | None]:
        """These options for a run that samples completions (on-policy, seq_kd): its batches
        come in many shapes, and a CUDA graph of each would be recorded and kept, so the
        student's graph runs without them; the warning that says so, or None."""
        if not self.student_cudagraphs:
            return self, None
        return (replace(self, student_cudagraphs=False),
                "KDENGINE_STUDENT_COMPILE=graphs: sampled batches vary in shape, so the "
                "student's graph runs without CUDA graphs")


# Before issue 6's attempt 4: every block compiled on its own, nothing fused (benchmarks).
PER_BLOCK_COMPILE = CompileOptions(teacher="layers", teacher_cudagraphs=False, student="layers",
                                   concat_projections=False)


def _decoder_layers(provider: Any) -> Any:
    model = getattr(provider, "model", None)
    return getattr(getattr(model, "model", None), "layers", None)


def compile_decoder_layers(provider: Any) -> int:
    """torch.compile each block of a native decoder in place (parameter names, and so
    checkpoints, unchanged); returns how many blocks. Providers without blocks are left alone."""
    layers = _decoder_layers(provider)
    if layers is None:
        return 0
    for layer in layers:
        layer.compile()
    return len(layers)


def fused_clipped_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                       loss: torch.Tensor, max_norm: float,
                       grad_norm: Any = None) -> torch.Tensor:
    """clip_grad_norm_(params, max_norm) + optimizer.step() for a fused Adam/AdamW, with no
    host sync and no extra pass over the gradients: the fused kernel divides each gradient by
    `grad_scale` = max(1, (norm + 1e-6) / max_norm) (clip_grad_norm_'s factor) as it reads it,
    and skips the whole update on the device (`found_inf`, as for AMP's GradScaler) when the loss
    or the gradient norm is not finite. Returns the total gradient norm before clipping.
    `grad_norm(grads)` computes the norm (default: torch's get_total_norm; data parallel:
    Dist.grad_norm over the shards)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = (grad_norm(grads) if grad_norm is not None
            else torch.nn.utils.get_total_norm(grads, 2.0, foreach=True))
    finite = torch.isfinite(norm) & torch.isfinite(loss.detach())
    found_inf = (~finite).to(torch.float32)
    grad_scale = (((norm.float() + 1e-6) / max_norm).clamp_min(1.0)
                  if math.isfinite(max_norm) else None)
    optimizer.found_inf, optimizer.grad_scale = found_inf, grad_scale
    try:
        optimizer.step()
    finally:
        optimizer.found_inf = optimizer.grad_scale = None
    return norm


# How many compiled variants one block's forward may keep before dynamo gives up on it and runs
# it eager. Every block of a model shares one frame, and a run sees a bounded set of variants:
# training and evaluation (grad mode), the training, held-out and sampled rows' shapes, packed
# rows' masks or none, and an FP8 teacher's first block (a tensor) against the rest (a Pending
# add). An on-policy run with the FP8 teacher saw 9 and hit torch's default of 8: the rest of its
# teacher's calls ran eager, with a warning in the run's log.
RECOMPILE_LIMIT = 64


def compiler_settings() -> None:
    """The engine's settings for torch.compile, made before anything compiles: room for the
    variants above, and none of Inductor's notes that read as a problem in a run's log: that
    it split a softmax's reduction (asking the user to file a PyTorch issue; the values are
    the same), and that float32 matmuls could use TF32 (a float32 run chose float32)."""
    import torch._dynamo.config as dynamo

    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
    warnings.filterwarnings("ignore", message=r"\s*Online softmax is disabled on the fly")
    # --dtype float32 on CUDA means float32 matmuls (docs/models.md), not TF32's 10-bit mantissa
    warnings.filterwarnings("ignore", message=r"\s*TensorFloat32 tensor cores for float32")


def _place_rope(model: Any) -> None:
    """The rotary frequencies onto the model's device before tracing (a graph that copies them
    from the host would be recompiled on the second call, and CUDA graphs skip host inputs).
    Packed rows' attention masks stay eager: they depend on the data (varlen's spans need a
    host sync), and are built once per batch outside the graphs."""
    inv_freq = getattr(model, "inv_freq", None)
    if isinstance(inv_freq, torch.Tensor) and isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
        if param is not None and param.device.type != "meta":
            model.inv_freq = inv_freq.to(param.device)
    masks = getattr(model, "attention_masks", None)
    if callable(masks) and "attention_masks" not in vars(model):
        model.attention_masks = torch.compiler.disable(masks)


def compile_teacher(provider: Any, options: CompileOptions) -> str:
    """Compile a frozen teacher per `options`; returns what was done ("model",
    "model+cudagraphs", "layers" or "none")."""
    compiler_settings()
    model = getattr(provider, "model", None)
    _place_rope(model)
    fusable = hasattr(model, "fuse_for_inference")
    if fusable and (options.teacher == "model" or options.concat_projections):
        model.fuse_for_inference()  # one q/k/v and one gate/up matmul in every block
    if options.teacher == "model" and fusable:
        if options.teacher_cudagraphs:
            model.compile(mode="reduce-overhead")
            return "model+cudagraphs"
        model.compile()
        return "model"
    return "layers" if compile_decoder_layers(provider) else "none"


def compile_student(provider: Any, options: CompileOptions) -> str:
    """Compile a trained native decoder per `options` (parameters and names unchanged)."""
    compiler_settings()
    model = getattr(provider, "model", None)
    _place_rope(model)
    param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    if param is not None and param.is_cuda:
        load_swiglu_kernels()  # the concatenated gate/up's SwiGLU, one pass each way
    if options.concat_projections and hasattr(model, "concat_projections"):
        model.concat_projections()
    if options.student == "model" and hasattr(model, "concat_projections"):
        if options.student_cudagraphs:
            model.compile(mode="reduce-overhead")
            return "model+cudagraphs"
        model.compile()
        return "model"
    return "layers" if compile_decoder_layers(provider) else "none"


def uncompile_decoder_layers(provider: Any) -> None:
    """Back to eager: the blocks and the whole model (what nn.Module.compile set)."""
    for layer in _decoder_layers(provider) or ():
        layer._compiled_call_impl = None
    model = getattr(provider, "model", None)
    if isinstance(model, torch.nn.Module):
        model._compiled_call_impl = None
    if hasattr(model, "concat_projections"):
        model.concat_projections(False)  # eager: the cat would be a copy per forward
