"""The teacher cache's top-K targets (kdengine.teacher.targets) are the numbers the log-softmax
way gives: the K largest log-probs, the log-mass of every other id, the labels' log-probs, with
ties at the K-th value (common in bf16 logits) counted in the tail exactly once."""

from __future__ import annotations

import math

import pytest
import torch

from kdengine.teacher.targets import topk_targets


def _by_log_softmax(logits: torch.Tensor, k: int):
    lp = torch.log_softmax(logits.double(), -1)
    v, i = lp.topk(k, -1)
    return lp, v, i, torch.logsumexp(lp.scatter(-1, i, -math.inf), -1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [1, 5, 64])
def test_topk_targets_are_the_log_softmax_top_k_and_tail(dtype: torch.dtype, k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    logits = (torch.randn(48, 700, generator=gen) * 3).to(dtype)
    got = topk_targets(logits, k)
    lp, v, _, tail = _by_log_softmax(logits, k)
    torch.testing.assert_close(got["logp"].double(), v, rtol=0, atol=2e-5)
    # each id taken holds the log-prob given for it (ties may pick other ids of equal value)
    torch.testing.assert_close(lp.gather(-1, got["ids"]), got["logp"].double(), rtol=0, atol=2e-5)
    assert all(len(set(row.tolist())) == k for row in got["ids"])
    torch.testing.assert_close(got["tail"].double(), tail, rtol=0, atol=2e-5)
    labels = torch.randint(0, 700, (48,), generator=gen)
    label_lp = logits.gather(-1, labels[:, None]).squeeze(-1).float() - got["lse"]
    torch.testing.assert_close(label_lp.double(), lp.gather(-1, labels[:, None]).squeeze(-1),
                               rtol=0, atol=2e-5)


def test_ties_at_the_kth_value_count_once_in_the_tail() -> None:
    # eight equal logits: top-4 takes the 3.0 and three of them, the other five join the tail
    logits = torch.tensor([[2.0] * 8 + [0.5, -1.0, 3.0]])
    got = topk_targets(logits, 4)
    lp, v, _, tail = _by_log_softmax(logits, 4)
    torch.testing.assert_close(got["logp"].double(), v, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["tail"].double(), tail, rtol=0, atol=1e-6)
    mass = got["logp"].exp().sum() + got["tail"].exp()
    assert abs(float(mass) - 1.0) < 1e-6


def test_k_as_large_as_the_vocab_leaves_no_tail() -> None:
    logits = torch.randn(3, 10)
    got = topk_targets(logits, 16)
    assert got["ids"].shape == (3, 10)
    assert torch.isneginf(got["tail"]).all()
    torch.testing.assert_close(got["logp"].exp().sum(-1), torch.ones(3))
