"""silu(gate) * up for a trained model's MLP, from its concatenated gate/up projection.

On CUDA with Triton, one pass forward and one backward (kdengine.models.swiglu_kernels: the
backward writes both halves of gate/up's gradient from one read of its inputs, where
Inductor's kernel reads them again for each half); elsewhere torch's ops, which autograd
differentiates. `load_kernels` is called where the model is compiled for the GPU
(kdengine.compiled.compile_student), outside any traced code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_kernels = None


def load_kernels() -> bool:
    """The Triton kernels, where CUDA and Triton are; whether they are loaded."""
    global _kernels
    if _kernels is None and torch.cuda.is_available():
        try:
            from kdengine.models import swiglu_kernels
        except ImportError:  # no Triton: torch's ops
            return False
        _kernels = swiglu_kernels
    return _kernels is not None


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2 * inter] (gate, then up) -> silu(gate) * up [..., inter]."""
    if _kernels is not None and gate_up.is_cuda:
        leading = gate_up.shape[:-1]
        rows = gate_up.reshape(-1, gate_up.shape[-1])
        out = _kernels.swiglu(rows if rows.stride(-1) == 1 else rows.contiguous())
        return out.view(*leading, -1)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
