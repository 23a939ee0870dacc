"""CPC's InfoNCE against a hand computation with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch

from speechcl.objectives.cpc import cpc_loss, future_logits, future_pairs


def test_infonce_is_the_softmax_cross_entropy_of_the_positive() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-3.0, 4.0, 0.0, 1.0], [7.0, 7.0, 7.0, 7.0]])
    want = [-math.log(math.exp(row[0]) / sum(math.exp(s) for s in row)) for row in logits.tolist()]
    torch.testing.assert_close(cpc_loss(logits), torch.tensor(want))
    assert float(cpc_loss(logits)[2]) == pytest.approx(math.log(4))  # equal scores: ln(N + 1)


def test_loss_over_fixed_distractors_equals_explicit_loops() -> None:
    """Pairs, scores ``W_k c_t · z`` and InfoNCE end to end on tiny tensors, with given distractor frames."""
    torch.manual_seed(3)
    t, steps, c, d = 4, 2, 3, 2
    context = torch.randn(1, t, d)
    w = torch.randn(steps, c, d)  # one linear map per step
    z = torch.randn(1, t, c)
    preds = torch.einsum("kcd,btd->btkc", w, context)
    pairs = future_pairs(torch.tensor([t]), t, steps)
    neg = torch.tensor([[(int(p) + 1 + j) % t for j in range(2)] for p in pairs.target])  # fixed, never the target
    assert bool((neg != pairs.target[:, None]).all())
    got = float(cpc_loss(future_logits(preds, z, pairs, neg)).sum())
    total = 0.0
    for k in range(1, steps + 1):
        for i in range(t - k):
            pred = [sum(float(w[k - 1, a, e] * context[0, i, e]) for e in range(d)) for a in range(c)]
            p = [q for q in range(len(pairs)) if int(pairs.context[q]) == i and int(pairs.step[q]) == k - 1][0]
            frames = [i + k, *neg[p].tolist()]
            scores = [sum(pred[a] * float(z[0, f, a]) for a in range(c)) for f in frames]
            total -= scores[0] - math.log(sum(math.exp(s) for s in scores))
    assert got == pytest.approx(total, rel=1e-5)
