"""The model generation runs: a twin of the trained model with its weights in the compute dtype,
made once and refreshed in place (copy_) before each generation, so no decode step casts a
weight and a captured CUDA graph keeps reading the same memory. The trained model itself is
only read: its parameters, gradients and train/eval mode stay as they were."""

from __future__ import annotations

import torch

from kdengine.models.decoder import Decoder


def unwrap(model: torch.nn.Module) -> Decoder:
    """The Decoder under a torch.compile or DistributedDataParallel wrapper (its parameters are
    the same tensors)."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if not isinstance(model, Decoder):
        raise TypeError(f"generation needs a kdengine Decoder, not {type(model).__name__}")
    return model


@torch.no_grad()
def compute_twin(model: Decoder, dtype: torch.dtype, *, fuse: bool) -> Decoder:
    """A Decoder in eval mode, without gradients, whose weights are `model`'s in `dtype`. Where
    `dtype` is already the model's, the twin shares the model's tensors (no copy) unless `fuse`:
    then q/k/v and gate/up are concatenated into one weight each (fewer matmuls per step).
    A teacher with FP8 weights (kdengine.models.fp8) is frozen and fused already: it is its own
    twin."""
    if getattr(model, "fp8", False):
        return model.requires_grad_(False).eval()
    with torch.device("meta"):
        twin = Decoder(model.config)
    casts: dict[tuple, torch.Tensor] = {}  # tied weights stay one tensor
    state = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in casts:
            casts[key] = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor
        state[name] = casts[key]
    twin.load_state_dict(state, assign=True)
    twin.requires_grad_(False).eval()
    if fuse:
        twin.fuse_for_inference()
    return twin


@torch.no_grad()
def refresh_twin(twin: Decoder, model: Decoder) -> None:
    """Copy `model`'s current weights into `twin` in place (skipped where they share memory)."""
    for name, param in model.named_parameters():
        target = twin.get_parameter(name)
        if target.data_ptr() != param.data_ptr():
            target.copy_(param)
