"""What a preflight knows of a model without loading its weights, in a module of its own so
that kdengine.preflight and the checks it calls (kdengine.teacher.checks) share it without
importing each other. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field

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


class DemoByteTokenizer:
    """Stands for the demo's ByteTokenizer without importing kdengine.data (and torch): a
    `--demo --check` stays instant. Swapped for the real one where data is counted."""

    vocab_size = DEMO_VOCAB
    max_id = DEMO_VOCAB - 1
