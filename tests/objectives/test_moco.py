"""MoCo's InfoNCE against a hand computation with explicit loops over queries and queue entries."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from speechcl.objectives.moco import moco_logits, moco_loss


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def _by_hand(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float, valid: torch.Tensor | None) -> float:
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(sum(float(q[i, d] * k[i, d]) for d in range(q.shape[1])) / tau)
        denom = pos
        for j in range(queue.shape[0]):
            if valid is None or bool(valid[i, j] if valid.dim() == 2 else valid[j]):
                denom += math.exp(sum(float(q[i, d] * queue[j, d]) for d in range(q.shape[1])) / tau)
        total += -math.log(pos / denom)
    return total


@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_loss_equals_the_hand_computation(tau: float) -> None:
    q, k, queue = _unit(3, 4, seed=0), _unit(3, 4, seed=1), _unit(5, 4, seed=2)
    out = moco_loss(q.float(), k.float(), queue.float(), tau)
    assert float(out.loss) == pytest.approx(_by_hand(q, k, queue, tau, None), rel=1e-5)
    assert out.logits.shape == (3, 6)
    assert out.negatives.tolist() == [5, 5, 5]


def test_left_out_negatives_do_not_count() -> None:
    q, k, queue = _unit(3, 4, seed=3), _unit(3, 4, seed=4), _unit(5, 4, seed=5)
    valid = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = moco_loss(q.float(), k.float(), queue.float(), 0.2, valid)
    assert float(out.loss) == pytest.approx(_by_hand(q, k, queue, 0.2, valid), rel=1e-5)
    assert out.negatives.tolist() == [3, 5, 0]
    assert torch.isinf(out.logits[0, [2, 5]]).all() and torch.isfinite(out.logits[0, [0, 1, 3, 4]]).all()
    shared = torch.tensor([True, False, True, True, True])  # one mask [K] for every query
    out = moco_loss(q.float(), k.float(), queue.float(), 0.2, shared)
    assert float(out.loss) == pytest.approx(_by_hand(q, k, queue, 0.2, shared), rel=1e-5)


def test_empty_queue_gives_zero_loss_and_full_accuracy() -> None:
    q, k = _unit(2, 4, seed=6).float().requires_grad_(True), _unit(2, 4, seed=7).float()
    out = moco_loss(q, k, torch.zeros(0, 4), 0.2)
    assert float(out.loss.detach()) == 0.0 and out.correct == 2 and out.negatives.tolist() == [0, 0]
    out.loss.backward()
    assert float(q.grad.abs().max()) == 0.0


def test_accuracy_counts_the_positive_ranked_first() -> None:
    q = torch.eye(3)[:2]  # [2, 3]
    k = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])  # query 0's key matches it, query 1's does not
    queue = torch.tensor([[0.0, 1, 0], [0.0, 0, 1]])  # query 1 matches queue entry 0
    out = moco_loss(q, k, queue, 0.1)
    assert out.correct == 1
    assert out.logits[1].argmax() == 1


def test_keys_and_queue_carry_no_gradient() -> None:
    q = _unit(2, 4, seed=8).float().requires_grad_(True)
    k = _unit(2, 4, seed=9).float().requires_grad_(True)
    queue = _unit(3, 4, seed=10).float().requires_grad_(True)
    moco_loss(q, k, queue, 0.2).loss.backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="queries and keys"):
        moco_logits(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(1, 4), 0.2)
    with pytest.raises(ValueError, match="queue must be"):
        moco_logits(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(1, 5), 0.2)
    with pytest.raises(ValueError, match="valid must be"):
        moco_logits(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(3, 4), 0.2, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        moco_logits(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(3, 4), 0.0)
