"""PIRL's loss against hand computations: binary NCE (h = e/(e + noise)), InfoNCE, the λ-mix of the two terms,
the first-batch normaliser, cosine scores, and negatives drawn uniformly from the bank without the item."""

from __future__ import annotations

import math

import pytest
import torch

from speechcl.objectives.pirl import (
    contrast_loss,
    info_nce_loss,
    nce_loss,
    nce_normaliser,
    pirl_loss,
    sample_bank_negatives,
    similarities,
)


def _scores(seed: int, b: int = 3, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, generator=g) * 2 - 1, torch.rand(b, n, generator=g) * 2 - 1


def _nce_by_hand(pos: list[float], neg: list[list[float]], tau: float, noise: float) -> list[float]:
    def h(s: float) -> float:
        e = math.exp(s / tau)
        return e / (e + noise)

    return [-math.log(h(p)) - sum(math.log(1 - h(s)) for s in row) for p, row in zip(pos, neg)]


@pytest.mark.parametrize("tau,noise", [(0.07, 5 / 100), (0.5, 3.0), (0.07, 4096 * 2.2)])
def test_nce_matches_the_formula(tau: float, noise: float) -> None:
    pos, neg = _scores(0)
    expected = _nce_by_hand(pos.tolist(), neg.tolist(), tau, noise)
    torch.testing.assert_close(nce_loss(pos, neg, tau, noise), torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_nce_is_finite_where_exp_overflows() -> None:
    pos, neg = torch.tensor([1.0]), torch.tensor([[1.0, -1.0]])
    out = nce_loss(pos, neg, 0.001, 1e-3)  # exp(1000) overflows float32
    assert torch.isfinite(out).all()
    # −log h(pos) → 0; the negative at s = 1 costs ≈ s/τ − log(noise); the one at −1 ≈ 0
    assert float(out) == pytest.approx(1000 - math.log(1e-3), rel=1e-5)


def test_info_nce_matches_the_softmax() -> None:
    pos, neg = _scores(1)
    tau = 0.1
    expected = []
    for p, row in zip(pos.tolist(), neg.tolist()):
        z = math.exp(p / tau) + sum(math.exp(s / tau) for s in row)
        expected.append(-math.log(math.exp(p / tau) / z))
    torch.testing.assert_close(info_nce_loss(pos, neg, tau), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(contrast_loss(pos, neg, tau, "infonce"), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="nce"):
        contrast_loss(pos, neg, tau, "bce")


@pytest.mark.parametrize("lam", [0.5, 0.2, 1.0])
def test_the_two_terms_mix_with_lambda(lam: float) -> None:
    pos_t, neg_t = _scores(2)
    pos_f, neg_f = _scores(3)
    tau, noise = 0.07, 0.3
    out = pirl_loss(pos_t, neg_t, pos_f, neg_f, lam=lam, temperature=tau, noise=noise)
    lt = _nce_by_hand(pos_t.tolist(), neg_t.tolist(), tau, noise)
    lf = _nce_by_hand(pos_f.tolist(), neg_f.tolist(), tau, noise)
    torch.testing.assert_close(out.transformed, torch.tensor(lt), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.untransformed, torch.tensor(lf), rtol=1e-5, atol=1e-4)
    expected = sum(lam * a + (1 - lam) * b for a, b in zip(lt, lf))
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="λ"):
        pirl_loss(pos_t, neg_t, pos_f, neg_f, lam=1.5)


def test_normaliser_is_the_mean_exponential() -> None:
    pos, neg = _scores(4)
    tau = 0.07
    values = [math.exp(s / tau) for s in pos.tolist() + neg.flatten().tolist()]
    assert float(nce_normaliser(pos, neg, tau)) == pytest.approx(sum(values) / len(values), rel=1e-5)


def test_similarities_are_cosines_and_negatives_face_the_view() -> None:
    g = torch.Generator().manual_seed(5)
    anchor, view, negs = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    pos, neg = similarities(anchor * 3, view, negs)
    for b in range(2):
        a, v = anchor[b], view[b]
        assert float(pos[b]) == pytest.approx(float(a @ v / (a.norm() * v.norm())), abs=1e-6)
        for k in range(3):
            m = negs[b, k]
            assert float(neg[b, k]) == pytest.approx(float(v @ m / (v.norm() * m.norm())), abs=1e-6)
    with pytest.raises(ValueError, match="negatives"):
        similarities(anchor, view, negs[:, :, :3])


def test_negatives_exclude_the_item_and_cover_the_rest_uniformly() -> None:
    ids = torch.tensor([0, 3, 6])
    idx = sample_bank_negatives(ids, 7, 7000, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (3, 7000) and idx.dtype == torch.long
    for b, own in enumerate(ids.tolist()):
        counts = torch.bincount(idx[b], minlength=7)
        assert counts[own] == 0
        others = counts[torch.arange(7) != own].float()
        assert others.min() > 0.9 * 7000 / 6 and others.max() < 1.1 * 7000 / 6  # 7000 draws over 6 rows
    again = sample_bank_negatives(ids, 7, 7000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_negatives_without_ids_may_be_any_row() -> None:
    idx = sample_bank_negatives(None, 4, 4000, batch=2, generator=torch.Generator().manual_seed(1))
    assert idx.shape == (2, 4000)
    assert torch.bincount(idx.flatten(), minlength=4).min() > 1700
    with pytest.raises(ValueError, match="bank_size >= 2"):
        sample_bank_negatives(torch.tensor([0]), 1, 3)
