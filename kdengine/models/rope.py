"""The rotary position embedding's rotation, as transformers computes it: the decoder's, and
the reference the FP8 teacher's one-pass q/k kernel is checked against
(kdengine.models.fp8.qk_norm_rope_reference)."""

from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
