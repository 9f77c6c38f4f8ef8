"""Teacher and student providers: what the trainer asks of each model.

Both give final hidden states [batch, seq, hidden] and an lm-head weight [vocab, hidden], so the
loss can project chunk by chunk (kdengine.losses.fused_kd_loss). `position_ids` [batch, seq], when
a batch of packed rows carries them, restart at each example: attention stays inside examples.
The model-backed providers wrap the native decoder; the bigram fixtures are tiny exact models for
tests.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from kdengine.models.decoder import Decoder
from kdengine.models.fp8 import Fp8Head


class Teacher(Protocol):
    vocab_size: int

    def hidden_states(self, input_ids: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, seq, hidden], computed without autograd."""

    @property
    def head_weight(self) -> torch.Tensor: ...

    @property
    def loss_head(self) -> torch.Tensor | Fp8Head:
        """The head the KD loss projects the teacher's logits with: head_weight, or an FP8
        teacher's e4m3 copy of it."""


class Student(Protocol):
    vocab_size: int
    module: nn.Module  # the trainable parameters, saved in checkpoints

    def hidden_states(self, input_ids: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor: ...

    @property
    def head_weight(self) -> torch.Tensor: ...


class ModelTeacher:
    def __init__(self, model: Decoder) -> None:
        self.model = model.eval().requires_grad_(False)
        self.vocab_size = model.config.vocab_size

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, position_ids)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.model.lm_head_weight

    @property
    def loss_head(self) -> torch.Tensor | Fp8Head:
        fp8 = getattr(self.model, "lm_head_fp8", None)  # kdengine.models.fp8.quantize_teacher
        return self.head_weight if fp8 is None else fp8


class ModelStudent:
    def __init__(self, model: Decoder) -> None:
        self.module = self.model = model
        self.vocab_size = model.config.vocab_size

    def hidden_states(self, input_ids: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, position_ids)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.model.lm_head_weight


class Bigram(nn.Module):
    """Next-token logits from the current token alone: embedding -> lm head. Row r of a batch
    touches only the embedding rows of its own tokens, which makes per-row training visible."""

    def __init__(self, vocab_size: int, hidden: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(vocab_size, hidden, generator=gen))
        self.head = nn.Parameter(torch.randn(vocab_size, hidden, generator=gen) / hidden**0.5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed[input_ids]


class BigramTeacher:
    def __init__(self, vocab_size: int = 32, hidden: int = 16, seed: int = 1) -> None:
        self.module = Bigram(vocab_size, hidden, seed).requires_grad_(False)
        self.vocab_size = vocab_size

    def hidden_states(self, input_ids: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.module(input_ids)  # each token alone: nothing crosses an example

    @property
    def head_weight(self) -> torch.Tensor:
        return self.module.head

    @property
    def loss_head(self) -> torch.Tensor:
        return self.module.head


class BigramStudent(BigramTeacher):
    def __init__(self, vocab_size: int = 32, hidden: int = 16, seed: int = 2) -> None:
        self.module = Bigram(vocab_size, hidden, seed)
        self.vocab_size = vocab_size
