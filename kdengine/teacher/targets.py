"""A chunk of the teacher's logits -> its top-K targets: the K largest log-probs and their ids,
the log-mass of every other id (the tail), and each row's log-normalizer (for the label's NLL).

The targets are those of log_softmax(logits) at T = 1, written without the log-softmax: it is a
shift of each row by its normalizer, so the top-K of the logits are the top-K of the log-probs,
in the logits' own dtype (half the bytes of fp32 log-probs), and the normalizer and the tail are
two sums over the row that torch.compile fuses into one pass that reads the bf16 logits once. On
an H200, for 4,096 tokens x 151,936 ids (benchmarks/cache_writer.py): 16.4 ms the way
score_rows first did it (fp32 log-softmax, top-K, a scattered copy for the tail), most of it the
fp32 copies and top-K.

The tail sums every id left out of the top-K: the ids below the K-th value, and the copies of
the K-th value that top-K did not take (ties at the boundary), so it is the same number as the
log-sum-exp of the log-probs with the top-K ids masked out.
"""

from __future__ import annotations

import os

import torch


def row_sums(logits: torch.Tensor, kth: torch.Tensor,
             kth_taken: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-normalizer, log of the tail's unnormalized mass) per row, in fp32, of `logits`
    [rows, V] whose top-K's smallest value is `kth` [rows, 1], taken `kth_taken` [rows] times."""
    z = logits.float()
    top = z.amax(-1, keepdim=True)
    e = torch.exp(z - top)
    lse = top.squeeze(-1) + torch.log(e.sum(-1))
    below = torch.where(z < kth, e, torch.zeros_like(e)).sum(-1)
    left_out = (z == kth).sum(-1) - kth_taken  # copies of the K-th value top-K did not take
    tail = below + left_out.to(z.dtype) * torch.exp(kth.squeeze(-1) - top.squeeze(-1))
    return lse, top.squeeze(-1) + torch.log(tail)


_compiled = {"fn": None, "failed": False}


def _sums(logits: torch.Tensor, kth: torch.Tensor,
          kth_taken: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """row_sums, compiled on CUDA (one fused pass over the logits); eager on the CPU, where
    KDENGINE_COMPILE=0, or once the compile has failed (a warning says so)."""
    if (not logits.is_cuda or _compiled["failed"]
            or os.environ.get("KDENGINE_COMPILE", "1") == "0"):
        return row_sums(logits, kth, kth_taken)
    if _compiled["fn"] is None:
        _compiled["fn"] = torch.compile(row_sums, dynamic=True)
    try:
        return _compiled["fn"](logits, kth, kth_taken)
    except Exception as exc:  # noqa: BLE001 - any compiler error: the same sums eager
        print(f"WARNING: torch.compile of the top-K targets' sums failed ({exc!r:.300}); "
              "computing them eager", flush=True)
        _compiled["failed"] = True
        return row_sums(logits, kth, kth_taken)


def topk_targets(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The top-K targets of a chunk of logits [rows, V]: `logp` and `ids` [rows, k] (fp32 and
    int64, largest first), `tail` [rows] (the other ids' log-mass; -inf when k == V) and `lse`
    [rows] (the log-normalizer: a label's log-prob is its logit minus it)."""
    values, ids = logits.topk(min(k, logits.shape[-1]), -1)
    kth = values[:, -1:].float()
    kth_taken = (values.float() == kth).sum(-1)
    lse, tail = _sums(logits, kth, kth_taken)
    return {"logp": values.float() - lse.unsqueeze(-1), "ids": ids, "tail": tail - lse,
            "lse": lse}
