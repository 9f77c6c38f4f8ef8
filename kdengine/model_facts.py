"""What a preflight knows of a model without loading its weights, in a module of its own so
that kdengine.preflight and the checks it calls (kdengine.teacher.checks) share it without
importing each other. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEMO_VOCAB = 257  # the demo's byte tokenizer and models (kdengine.demo, kdengine.data)


@dataclass
class ModelFacts:
    """What the preflight learnt of one model without loading its weights."""

    role: str  # teacher or student: the field a refusal names
    spec: str
    directory: str | None = None  # None: a demo model, or a hub id still to download
    model_type: str | None = None
    vocab_size: int | None = None
    weight_files: list[str] = field(default_factory=list)
    # the longest sequence its config.json says it takes (position_limit); None: no limit said
    max_positions: int | None = None


def position_limit(hf: dict[str, Any]) -> int | None:
    """The longest sequence an HF config.json says its model takes: max_position_embeddings,
    times a linear rope scaling's factor (some configs give the original length beside it);
    None where the key is missing or not a positive whole number."""
    limit = hf.get("max_position_embeddings")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return None
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "linear":
        factor = scaling.get("factor")
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 1:
            limit = int(limit * factor)
    return limit


def check_seq_len_fits(seq_len: int, role: str, limit: int | None, where: str) -> None:
    """ConfigError naming seq_len where it is longer than the `role` model's position limit
    (`where`: its config.json); the positions past it were never trained."""
    from kdengine.config import ConfigError

    if limit is not None and seq_len > limit:
        raise ConfigError("seq_len", f"{seq_len} is more than the {role}'s "
                          f"max_position_embeddings ({limit}, in {where}): give --seq-len "
                          f"{limit} or less")


class DemoByteTokenizer:
    """Stands for the demo's ByteTokenizer without importing kdengine.data (and torch): a
    `--demo --check` stays instant. Swapped for the real one where data is counted."""

    vocab_size = DEMO_VOCAB
    max_id = DEMO_VOCAB - 1
