"""The static KV cache of a generation: every layer's keys and values, preallocated for the
prompt and the new tokens, and the masks of which cache slots a token may attend to.

Rows are left-padded: the prompts end at the same slot and each new token goes to the same slot
in every row. A row's positions (rotary) start at 0 at its first real token; its pad slots are
never attended to. Sliding-window layers see the last `window` slots (transformers' rule,
kv > q - window, which is the same in slots as in positions since both rise by one per token).
"""

from __future__ import annotations

import torch

from kdengine.models.decoder import DecoderConfig

# the cache length is rounded up: nearby prompt lengths share one compiled and captured step
SLOT_MULTIPLE = 64


class KVCache:
    """Keys and values [batch, kv_heads, slots, head_dim] per layer, and each row's first real
    slot (its left padding). Tensors are updated in place only, so a CUDA graph that reads them
    stays valid from one generation to the next."""

    def __init__(self, config: DecoderConfig, batch: int, slots: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        shape = (batch, config.num_key_value_heads, slots, config.head_dim)
        self.layers = [(torch.zeros(shape, device=device, dtype=dtype),
                        torch.zeros(shape, device=device, dtype=dtype))
                       for _ in range(config.num_hidden_layers)]
        self.first_real = torch.zeros(batch, device=device, dtype=torch.int64)
        self.slot_ids = torch.arange(slots, device=device)
        self.windows = {config.window_of(i) for i in range(config.num_hidden_layers)}

    @property
    def batch(self) -> int:
        return self.first_real.shape[0]

    @property
    def slots(self) -> int:
        return self.slot_ids.shape[0]

    def masks(self, query_slots: torch.Tensor) -> dict[int | None, torch.Tensor]:
        """Per sliding window (None: full attention), [batch, 1, t, slots] bool: True where the
        token at `query_slots` [t] may attend to a cache slot: a real token at or before it
        (and inside the window). A pad query sees itself only, so no softmax row is empty
        (its output is never used)."""
        q = query_slots.view(1, 1, -1, 1)
        k = self.slot_ids.view(1, 1, 1, -1)
        real = k >= self.first_real.view(-1, 1, 1, 1)
        causal = ((k <= q) & real) | (k == q)
        return {w: causal if w is None else causal & (k > q - w) for w in self.windows}
