"""On-policy distillation: the student writes, the teacher grades.

Off-policy KD trains the student on text it would never write itself. On-policy KD (GKD, Agarwal
et al. 2024; TRL's GKDTrainer and DistillationTrainer) samples completions for the data's prompts
from the student being trained, and trains it on the teacher's per-token distribution over
exactly those tokens, through the same fused chunked loss as every other batch.

    prompts.py   the prompts a run's data offers (conversations, prompt/completion pairs, or
                 raw-text windows cut in two), step k's drawn from (seed, k) only
    rollout.py   one step's sampled batch: which batches are on-policy (lmbda), the completions
                 (kdengine.generation), the loss rows and the `sample` events
    scoring.py   what the teacher says of completions: reverse KL per token and its mean log-prob,
                 chunk by chunk; the held-out evaluation of an on-policy run

docs/on-policy.md is the user's guide; docs/events.md lists the events and fields.
"""

from kdengine.onpolicy.prompts import PromptSource, prompt_source
from kdengine.onpolicy.rollout import Rollout, RolloutBatch, make_rollout
from kdengine.onpolicy.scoring import evaluate_generations

__all__ = ["PromptSource", "Rollout", "RolloutBatch", "evaluate_generations", "make_rollout",
           "prompt_source"]
