"""HuBERT's loss against a hand computation: cosine / τ to every label embedding, cross-entropy of each frame's
label, summed over masked frames (and weighted unmasked ones), padding ignored."""

from __future__ import annotations

import math

import pytest
import torch

from speechcl.objectives.hubert import IGNORE_INDEX, hubert_loss, label_logits, perplexity


def _hand(proj: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, tau: float,
          want_masked: bool) -> float:
    """Frame by frame in float64, with explicit cosines and log-sum-exp."""
    total = 0.0
    b, t, _ = proj.shape
    for i in range(b):
        for j in range(t):
            y = int(labels[i, j])
            if y == IGNORE_INDEX or bool(mask[i, j]) != want_masked:
                continue
            x = proj[i, j].double()
            scores = []
            for c in range(emb.shape[0]):
                e = emb[c].double()
                scores.append(float(x @ e / (x.norm() * e.norm())) / tau)
            top = max(scores)
            log_z = top + math.log(sum(math.exp(s - top) for s in scores))
            total += log_z - scores[y]
    return total


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(2, 7, 5, generator=g)
    emb = torch.randn(4, 5, generator=g)
    labels = torch.randint(0, 4, (2, 7), generator=g)
    labels[1, 5:] = IGNORE_INDEX  # padding of a shorter row
    mask = torch.rand(2, 7, generator=g) < 0.5
    mask[1, 6] = True  # a masked padded frame still counts nowhere
    return proj, emb, labels, mask


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_masked_loss_equals_the_hand_computation(tau: float) -> None:
    proj, emb, labels, mask = _inputs()
    out = hubert_loss(proj, emb, labels, mask, tau)
    assert float(out.loss) == pytest.approx(_hand(proj, emb, labels, mask, tau, True), rel=1e-5)
    assert float(out.unmasked_sum) == pytest.approx(_hand(proj, emb, labels, mask, tau, False), rel=1e-5)
    valid = labels != IGNORE_INDEX
    assert out.sample_size == int((valid & mask).sum()) == out.masked_targets.numel()
    assert out.unmasked_targets.numel() == int((valid & ~mask).sum())


def test_unmasked_weight_adds_its_share_and_its_frames() -> None:
    proj, emb, labels, mask = _inputs(1)
    out = hubert_loss(proj, emb, labels, mask, 0.1, masked_weight=0.5, unmasked_weight=0.25)
    hand = 0.5 * _hand(proj, emb, labels, mask, 0.1, True) + 0.25 * _hand(proj, emb, labels, mask, 0.1, False)
    assert float(out.loss) == pytest.approx(hand, rel=1e-5)
    assert out.sample_size == int((labels != IGNORE_INDEX).sum())


def test_gradient_reaches_only_masked_frames_by_default() -> None:
    proj, emb, labels, mask = _inputs(2)
    proj.requires_grad_(True)
    hubert_loss(proj, emb, labels, mask, 0.1).loss.backward()
    touched = proj.grad.abs().sum(-1) > 0
    assert torch.equal(touched, mask & (labels != IGNORE_INDEX))


def test_logits_are_scale_free_cosines_over_tau() -> None:
    proj, emb, _, _ = _inputs(3)
    flat = proj.reshape(-1, 5)
    logits = label_logits(flat, emb, 0.1)
    assert torch.allclose(logits, label_logits(3.0 * flat, 0.5 * emb, 0.1), atol=1e-5)
    assert float(logits.abs().max()) <= 10.0 + 1e-4


def test_labels_outside_the_embeddings_are_an_error() -> None:
    proj, emb, labels, mask = _inputs()
    labels[0, 0] = 4
    with pytest.raises(ValueError, match=r"\[0, 4\] but there are 4 label embeddings"):
        hubert_loss(proj, emb, labels, mask)


def test_perplexity_counts_equally_used_labels() -> None:
    assert perplexity(torch.tensor([5, 0, 0])) == pytest.approx(1.0)
    assert perplexity(torch.tensor([3, 3, 3, 3])) == pytest.approx(4.0)
    assert 1.0 < perplexity(torch.tensor([9, 1])) < 2.0
    assert math.isnan(perplexity(torch.zeros(3)))
