"""Generation with the native decoder: batched sampling over a static KV cache (CUDA graphs on
the GPU) for on-policy distillation, where the student writes the text it is trained on."""

from kdengine.generation.engine import (
    Generated,
    GenerationEngine,
    engine_for,
    generate,
    release_engines,
)
from kdengine.generation.sampling import SamplingConfig, next_tokens, warp_logits

__all__ = ["GenerationEngine", "Generated", "SamplingConfig", "engine_for", "generate",
           "next_tokens", "release_engines", "warp_logits"]
