"""wav2vec 1.0's future-prediction pieces against hand computations with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch

from speechcl.objectives.wav2vec import (
    FuturePairs,
    chance_accuracy,
    future_logits,
    future_pairs,
    positive_first,
    sample_future_negatives,
    wav2vec_loss,
)


def _valid(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def test_pairs_are_every_valid_future_frame() -> None:
    lengths, t, steps = [5, 2, 0, 3, 1], 5, 3
    pairs = future_pairs(torch.tensor(lengths), t, steps)
    expected = [(b * t + i, b * t + i + k, k - 1) for b, n in enumerate(lengths) for k in range(1, steps + 1)
                for i in range(t) if i + k < n]
    got = list(zip(pairs.context.tolist(), pairs.target.tolist(), pairs.step.tolist(), strict=True))
    assert got == expected
    assert len(pairs) == sum(max(n - k, 0) for n in lengths for k in range(1, steps + 1)) == 4 + 3 + 2 + 1 + 2 + 1


def test_pairs_reject_lengths_beyond_the_frames() -> None:
    with pytest.raises(ValueError, match="lengths"):
        future_pairs(torch.tensor([6]), 5, 2)


@pytest.mark.parametrize("scope", ["utterance", "batch"])
def test_negatives_are_valid_frames_and_never_the_target(scope: str) -> None:
    lengths, t, steps, n = [6, 3, 1, 5], 6, 4, 7
    valid = _valid(lengths, t)
    pairs = future_pairs(torch.tensor(lengths), t, steps)
    neg = sample_future_negatives(pairs, valid, steps, n, scope, generator=torch.Generator().manual_seed(0))
    assert neg.shape == (len(pairs), n)
    assert bool(valid.flatten()[neg].all())  # no padded frame
    assert bool((neg != pairs.target[:, None]).all())  # never the positive itself
    same = neg // t == pairs.context[:, None] // t
    if scope == "utterance":
        assert bool(same.all())
    else:
        assert not bool(same.all())  # the batch scope reaches other utterances
    again = sample_future_negatives(pairs, valid, steps, n, scope, generator=torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)


def test_negatives_cover_the_utterance_and_differ_per_step() -> None:
    lengths, t, steps, n = [4], 4, 2, 200
    valid = _valid(lengths, t)
    pairs = future_pairs(torch.tensor(lengths), t, steps)
    neg = sample_future_negatives(pairs, valid, steps, n, generator=torch.Generator().manual_seed(1))
    for p, target in enumerate(pairs.target.tolist()):
        assert set(neg[p].tolist()) == set(range(4)) - {target}  # uniform over the 3 other frames
    # pairs (t=1, k=1) and (t=0, k=2) share the target frame 2 but draw their own distractors
    a = next(p for p in range(len(pairs)) if pairs.context[p] == 1 and pairs.step[p] == 0)
    b = next(p for p in range(len(pairs)) if pairs.context[p] == 0 and pairs.step[p] == 1)
    assert int(pairs.target[a]) == int(pairs.target[b]) == 2
    assert not torch.equal(neg[a], neg[b])


def _loop_logits(preds: torch.Tensor, targets: torch.Tensor, pairs: FuturePairs, neg: torch.Tensor) -> torch.Tensor:
    b, t, steps, c = preds.shape
    rows = []
    for p in range(len(pairs)):
        bb, tt, k = int(pairs.context[p]) // t, int(pairs.context[p]) % t, int(pairs.step[p])
        row = []
        for frame in [int(pairs.target[p]), *neg[p].tolist()]:
            row.append(sum(preds[bb, tt, k, i] * targets[frame // t, frame % t, i] for i in range(c)))
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("scope", ["utterance", "batch"])
def test_logits_and_their_gradient_equal_explicit_dot_products(scope: str) -> None:
    torch.manual_seed(0)
    lengths, t, steps, c, n = [4, 3], 4, 2, 3, 2
    pairs = future_pairs(torch.tensor(lengths), t, steps)
    neg = sample_future_negatives(pairs, _valid(lengths, t), steps, n, scope, generator=torch.Generator().manual_seed(2))
    preds = torch.randn(2, t, steps, c, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(2, t, c, dtype=torch.float64, requires_grad=True)
    got = future_logits(preds, targets, pairs, neg, same_utterance=scope == "utterance")
    want = _loop_logits(preds, targets, pairs, neg)
    torch.testing.assert_close(got, want.float())
    weights = torch.randn_like(want)
    g1 = torch.autograd.grad((got.double() * weights).sum(), [preds, targets])
    g2 = torch.autograd.grad((want * weights).sum(), [preds, targets])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if scope == "utterance":  # the batch-wide product gives the same scores
        torch.testing.assert_close(future_logits(preds, targets, pairs, neg, same_utterance=False), got)


def test_same_utterance_scores_refuse_distractors_from_elsewhere() -> None:
    pairs = future_pairs(torch.tensor([3, 3]), 3, 1)
    neg = torch.full((len(pairs), 1), 4)  # frame 1 of utterance 1
    with pytest.raises(ValueError, match="another utterance"):
        future_logits(torch.randn(2, 3, 1, 2), torch.randn(2, 3, 2), pairs, neg, same_utterance=True)


def test_binary_loss_is_the_papers_sum_over_positive_and_distractors() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    want = []
    for row in logits.tolist():
        sigmoid = [1.0 / (1.0 + math.exp(-s)) for s in row]
        want.append(-math.log(sigmoid[0]) - sum(math.log(1.0 - s) for s in sigmoid[1:]))
    torch.testing.assert_close(wav2vec_loss(logits), torch.tensor(want))
    assert float(wav2vec_loss(logits)[2]) == pytest.approx(3 * math.log(2))


def test_accuracy_is_strict_and_chance_counts_distinct_distractors() -> None:
    logits = torch.tensor([[1.0, 0.5, 0.9], [1.0, 1.0, 0.0], [0.0, 2.0, -1.0]])
    assert positive_first(logits).tolist() == [True, False, False]  # a tie is not a success
    neg = torch.tensor([[3, 5, 7], [4, 4, 4], [2, 9, 2]])
    torch.testing.assert_close(chance_accuracy(neg), torch.tensor([1 / 4, 1 / 2, 1 / 3], dtype=torch.float64))
