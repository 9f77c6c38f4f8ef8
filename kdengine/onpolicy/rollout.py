"""One step's sampled batch: who writes the completions, the rows the loss trains on, and what
the run shows of them.

Which batches are sampled follows TRL's GKD: a step is on-policy with probability `lmbda` (the
student writes); otherwise, with `seq_kd`, the teacher writes (sequence-level KD), and else the
step trains on the data's own batch as an off-policy run does. Every draw (the coin, the prompts,
the sampled tokens) comes from generators seeded by (seed, step), never the global RNG, so a
resumed run samples exactly what the uninterrupted one did.

A sampled row is prompt + completion, right-padded to seq_len (one shape for compiled models);
its labels are the completion's tokens only. On a batch the student wrote, the loss is the KD
term alone: a CE term on the student's own samples would only teach it to repeat itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from kdengine.config import RunConfig
from kdengine.generation import Generated, SamplingConfig, generate
from kdengine.losses import IGNORE_INDEX, align_teacher_vocab
from kdengine.onpolicy.prompts import PromptSource

PROMPT_CHARS, COMPLETION_CHARS = 300, 2000  # what a sample event carries of each


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # [batch, seq_len] prompt + completion, right-padded
    labels: torch.Tensor  # [batch, seq_len] the completion's tokens, IGNORE_INDEX elsewhere
    prompts: list[torch.Tensor]
    generated: Generated
    source: str  # "student" | "teacher": who wrote the completions


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed of its own for each (run seed, purpose, step): independent streams."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


class Rollout:
    EVAL_SAMPLES = 2  # held-out prompts whose completions each evaluation shows

    def __init__(self, config: RunConfig, prompts: PromptSource, tokenizer: Any,
                 eos_ids: tuple[int, ...], vocab: int, device: torch.device,
                 dtype: torch.dtype | None) -> None:
        self.config, self.prompts, self.tokenizer = config, prompts, tokenizer
        self.vocab = vocab  # the student's: completions and scores stay inside it
        self.device, self.dtype = device, dtype
        self.pad_id = int(tokenizer.eos_id)
        stop = (config.stop_text,) if config.stop else ()
        self.sampling = SamplingConfig(
            max_new_tokens=config.max_new_tokens, temperature=config.gen_temperature,
            top_p=config.top_p, top_k=config.top_k, eos_ids=eos_ids, stop_strings=stop,
            vocab_limit=vocab)
        # called before each sampled token (the trainer's StopSignals.check): a cancel ends a
        # long generation at its next token, not after max_new_tokens of every row
        self.check_stop: Callable[[], None] | None = None

    def source_of(self, step: int) -> str | None:
        """Who writes step's completions: "student" (on-policy), "teacher" (seq_kd), or None
        (the data's own batch)."""
        coin = torch.rand((), generator=torch.Generator().manual_seed(
            stream_seed(self.config.seed, f"lmbda:{step}")))
        if float(coin) < self.config.lmbda:
            return "student"
        return "teacher" if self.config.seq_kd else None

    def batch(self, step: int, source: str, student: Any, teacher: Any) -> RolloutBatch:
        model = student.module if source == "student" else teacher.model
        return self.complete(self.prompts.train(step), model, f"train:{step}", source)

    def complete(self, prompts: list[torch.Tensor], model: Any, seed_stream: str,
                 source: str) -> RolloutBatch:
        gen = torch.Generator(device=self.device).manual_seed(
            stream_seed(self.config.seed, seed_stream))
        # one cache shape for every step (prompt + completion fit seq_len): on CUDA one
        # compiled decode step and graph per batch size, not one per prompt length
        generated = generate(model, [p.to(self.device) for p in prompts], self.sampling,
                             generator=gen, pad_id=self.pad_id, decode=self.decode,
                             dtype=self.dtype, min_cache_len=self.config.seq_len,
                             check=self.check_stop)
        input_ids, labels = completion_rows(prompts, generated, self.config.seq_len,
                                            self.pad_id)
        return RolloutBatch(input_ids, labels, prompts, generated, source)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def sample_event(self, step: int, batch: RolloutBatch, row: int, teacher: Any,
                     autocast: Callable[[], AbstractContextManager], *, split: str = "train",
                     index: int | None = None) -> dict[str, Any]:
        """The `sample` event of `row` (docs/events.md): prompt tail, completion, its length,
        whether it ended by itself, and the teacher's mean log-prob of its tokens."""
        n = int(batch.generated.lengths[row])
        completion = batch.generated.tokens[row, :n].tolist()
        return {"step": step, "split": split, "index": row if index is None else index,
                "source": batch.source,
                "prompt": self.decode(batch.prompts[row].tolist())[-PROMPT_CHARS:],
                "completion": self.decode(completion)[:COMPLETION_CHARS], "tokens": n,
                "finished": bool(batch.generated.finished[row]),
                "teacher_logp": teacher_logp(teacher, batch.input_ids[row:row + 1],
                                             batch.labels[row:row + 1], autocast, self.vocab)}


def completion_rows(prompts: list[torch.Tensor], generated: Generated, seq_len: int,
                    pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) [batch, seq_len]: prompt + completion right-padded, labels the
    completion's tokens (the label at position i is the token at i + 1)."""
    batch = len(prompts)
    input_ids = torch.full((batch, seq_len), pad_id, dtype=torch.int64)
    labels = torch.full((batch, seq_len), IGNORE_INDEX, dtype=torch.int64)
    tokens, lengths = generated.tokens.cpu(), generated.lengths.cpu()
    for i, prompt in enumerate(prompts):
        completion = tokens[i, :int(lengths[i])]
        start, end = len(prompt), len(prompt) + len(completion)
        input_ids[i, :start] = prompt
        input_ids[i, start:end] = completion
        labels[i, start - 1:end - 1] = completion
    return input_ids, labels


@torch.no_grad()
def teacher_logp(teacher: Any, input_ids: torch.Tensor, labels: torch.Tensor,
                 autocast: Callable[[], AbstractContextManager], vocab: int) -> float:
    """The teacher's mean log-prob (T = 1, over the student's `vocab` ids, as the KD term
    sees it) of the tokens `labels` names, for one row."""
    device = teacher.head_weight.device
    input_ids, labels = input_ids.to(device), labels.to(device)
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return 0.0
    with autocast():
        hidden = teacher.hidden_states(input_ids)[valid]
    logits = (hidden @ teacher.head_weight.T.to(hidden.dtype)).float()
    logits = align_teacher_vocab(logits, vocab)  # the distribution the KD term uses
    return float(torch.log_softmax(logits, -1).gather(-1, labels[valid].unsqueeze(-1)).mean())


def eos_ids_of(tokenizer: Any, *model_dirs: Any) -> tuple[int, ...]:
    """The ids that end a completion: the tokenizer's end of text and every `eos_token_id` of
    the models' config.json and generation_config.json (a chat model's end-of-turn is there:
    Qwen's <|im_end|>, Llama 3's <|eot_id|>)."""
    import json
    from pathlib import Path

    ids = {int(tokenizer.eos_id)}
    for directory in model_dirs:
        if directory is None:
            continue
        for name in ("config.json", "generation_config.json"):
            try:
                value = json.loads((Path(directory) / name).read_text()).get("eos_token_id")
            except (OSError, ValueError, AttributeError):
                continue
            for i in value if isinstance(value, list) else [value]:
                if isinstance(i, int) and not isinstance(i, bool):
                    ids.add(i)
    return tuple(sorted(ids))


def turn_end_id(tokenizer: Any, template_dir: Any) -> int | None:
    """The special token the chat template in `template_dir` closes an assistant's turn with
    (ChatML's <|im_end|>, Phi-3's <|end|>, Llama 3's <|eot_id|>, Gemma's <end_of_turn>): the
    first token after the assistant's content, when it is one of the tokenizer's added
    tokens. None where there is no template or the turn ends in plain text."""
    from kdengine.data.chat import load_chat_template
    from kdengine.onpolicy.prompts import assistant_closing

    if template_dir is None or not hasattr(tokenizer, "identity"):
        return None
    template = load_chat_template(template_dir)
    closing = assistant_closing(template) if template is not None else None
    ids = tokenizer.encode(closing) if closing else []
    added = {i for i, _ in tokenizer.identity["added"]}
    return ids[0] if ids and ids[0] in added else None


def completion_stop_ids(tokenizer: Any, template_dir: Any, *model_dirs: Any,
                        conversations: bool) -> tuple[int, ...]:
    """The ids a sampled completion ends at: eos_ids_of's, and for conversations the chat
    template's end of turn (where the data's assistant turns end), as a model's
    generation_config.json may not list it."""
    ids = set(eos_ids_of(tokenizer, *model_dirs))
    if conversations and (end := turn_end_id(tokenizer, template_dir)) is not None:
        ids.add(end)
    return tuple(sorted(ids))


def make_rollout(config: RunConfig, data: Any, tokenizer: Any, teacher: Any, student: Any,
                 device: torch.device, dtype: torch.dtype) -> Rollout:
    """The rollout of a run that samples completions; ConfigError naming the field when the
    models cannot generate or the data holds no prompts."""
    from kdengine.config import ConfigError
    from kdengine.models.decoder import Decoder
    from kdengine.onpolicy.prompts import prompt_source

    writers = [("student", student.module)] if config.lmbda > 0 else []
    if config.seq_kd:
        writers.append(("teacher", getattr(teacher, "model", None)))
    for field, model in writers:
        if not isinstance(model, Decoder):
            raise ConfigError(field, "cannot sample completions: only the native decoder "
                              "generates (an HF-layout model or demo://)")
    from kdengine.onpolicy.prompts import check_generation_prompt, holds_conversations

    template_dir = getattr(teacher, "source_dir", None)  # the data's template (load_data)
    check_generation_prompt(config, data, template_dir)
    eos = completion_stop_ids(tokenizer, template_dir, template_dir,
                              getattr(student, "source_dir", None),
                              conversations=holds_conversations(config, data))
    compute = dtype if dtype not in (torch.float32, torch.float64) else None
    return Rollout(config, prompt_source(config, data), tokenizer, eos,
                   int(student.vocab_size), device, compute)
