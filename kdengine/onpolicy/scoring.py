"""What the teacher says of sampled completions, without holding [tokens, vocab] logits at once.

For each completion token (a label that is not IGNORE_INDEX), at temperature 1:

    reverse KL   KL(q || p) = sum_v q(v) (log q(v) - log p(v)),  q the student's, p the teacher's
    teacher_logp log p(token): how likely the teacher finds what was written

Their means over a set of fixed held-out prompts are an on-policy run's held-out numbers
(`val_gen_kl`, `val_gen_teacher_logp`): the student's own writing, graded by the teacher. Unlike
val_loss (the dataset's completions), they move only when what the student writes gets better.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from kdengine.losses import IGNORE_INDEX, align_teacher_vocab


@dataclass
class Scores:
    reverse_kl: float  # sums over the scored tokens
    teacher_logp: float
    tokens: int

    def mean(self) -> tuple[float, float]:
        n = max(self.tokens, 1)
        return self.reverse_kl / n, self.teacher_logp / n


@torch.no_grad()
def completion_scores(s_hidden: torch.Tensor, s_head: torch.Tensor, t_hidden: torch.Tensor,
                      t_head: torch.Tensor, labels: torch.Tensor,
                      chunk_tokens: int = 1024) -> Scores:
    """Reverse KL and teacher log-prob summed over the tokens `labels` [batch, seq] names;
    hidden states [batch, seq, hidden] and lm-head weights [vocab, hidden]."""
    valid = labels != IGNORE_INDEX
    s_rows, t_rows, targets = s_hidden[valid], t_hidden[valid], labels[valid]
    rkl = logp = 0.0
    for at in range(0, len(targets), chunk_tokens):
        sl = slice(at, at + chunk_tokens)
        s = (s_rows[sl] @ s_head.T.to(s_rows.dtype)).float()
        t = align_teacher_vocab((t_rows[sl] @ t_head.T.to(t_rows.dtype)).float(), s.shape[-1])
        log_q, log_p = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
        rkl += float((log_q.exp() * (log_q - log_p)).sum())
        logp += float(log_p.gather(-1, targets[sl].unsqueeze(-1)).sum())
    return Scores(rkl, logp, len(targets))


def score_rows(student: Any, teacher: Any, input_ids: torch.Tensor, labels: torch.Tensor,
               autocast: Callable[[], AbstractContextManager]) -> Scores:
    """completion_scores of rows through the two providers (student: no autograd)."""
    device = student.head_weight.device
    input_ids, labels = input_ids.to(device), labels.to(device)
    with torch.no_grad(), autocast():
        s_hidden = student.hidden_states(input_ids)
        t_hidden = teacher.hidden_states(input_ids)
    return completion_scores(s_hidden, student.head_weight, t_hidden, teacher.head_weight,
                             labels)


def evaluate_generations(rollout: Any, student: Any, teacher: Any,
                         autocast: Callable[[], AbstractContextManager],
                         step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The held-out numbers of an on-policy run at `step`: the student completes the same
    held-out prompts with the same seed at every evaluation, the teacher grades the
    completions. Returns the eval event's fields and `sample` events of the first prompts."""
    prompts = rollout.prompts.held_out(rollout.config.eval_prompts)
    total = Scores(0.0, 0.0, 0)
    lengths: list[int] = []
    samples: list[dict[str, Any]] = []
    size = rollout.config.batch_size
    for first in range(0, len(prompts), size):
        part = prompts[first:first + size]
        batch = rollout.complete(part, student.module, seed_stream=f"eval:{first}",
                                 source="student")
        scores = score_rows(student, teacher, batch.input_ids, batch.labels, autocast)
        total = Scores(total.reverse_kl + scores.reverse_kl,
                       total.teacher_logp + scores.teacher_logp, total.tokens + scores.tokens)
        lengths += batch.generated.lengths.tolist()
        for i in range(min(rollout.EVAL_SAMPLES - first, len(part))):
            samples.append(rollout.sample_event(step, batch, i, teacher, autocast, split="val",
                                                index=first + i))
    kl, logp = total.mean()
    fields = {"val_gen_kl": kl, "val_gen_teacher_logp": logp,
              "val_gen_len": sum(lengths) / max(len(lengths), 1)}
    return fields, samples
