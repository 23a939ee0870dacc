"""NT-Xent (SimCLR) and COLA's pair contrast against loop-based hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from speechcl.objectives.simclr import cosine_pairs, nt_xent, pair_contrast, similarity


def _views(n: int = 4, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    za, zb = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(d, d, generator=g, dtype=torch.float64)  # not symmetric
    return za, zb, weight


def _score(u: list[float], v: list[float], kind: str, tau: float, w: list[list[float]]) -> float:
    if kind == "cosine":
        dot = sum(a * b for a, b in zip(u, v))
        return dot / math.sqrt(sum(a * a for a in u)) / math.sqrt(sum(b * b for b in v)) / tau
    return sum(u[i] * w[i][j] * v[j] for i in range(len(u)) for j in range(len(v)))


def _loop_nt_xent(za, zb, kind, tau, w) -> tuple[float, int]:
    z = za.tolist() + zb.tolist()
    n, w = za.shape[0], w.tolist()
    total, correct = 0.0, 0
    for k in range(2 * n):
        positive = k + n if k < n else k - n
        scores = {j: _score(z[k], z[j], kind, tau, w) for j in range(2 * n) if j != k}
        total += -scores[positive] + math.log(sum(math.exp(s) for s in scores.values()))
        correct += max(scores, key=scores.get) == positive
    return total, correct


def _loop_pairs(za, zb, kind, tau, w) -> tuple[float, int]:
    a, b, w = za.tolist(), zb.tolist(), w.tolist()
    total, correct = 0.0, 0
    for i in range(len(a)):
        scores = [_score(a[i], b[j], kind, tau, w) for j in range(len(b))]
        total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
        correct += max(range(len(b)), key=scores.__getitem__) == i
    return total, correct


@pytest.mark.parametrize("kind,tau", [("cosine", 0.1), ("cosine", 0.5), ("bilinear", 1.0)])
def test_nt_xent_equals_the_loop(kind: str, tau: float) -> None:
    za, zb, w = _views()
    if kind == "bilinear":
        w = w * 0.3
    out = nt_xent(za, zb, kind, tau, w)
    expected, correct = _loop_nt_xent(za, zb, kind, tau, w)
    assert float(out.loss) == pytest.approx(expected, rel=1e-10)
    assert out.correct == correct and out.count == 8 and out.candidates == 7


@pytest.mark.parametrize("kind", ["cosine", "bilinear"])
def test_pair_contrast_equals_the_loop(kind: str) -> None:
    za, zb, w = _views(n=5, d=3, seed=1)
    out = pair_contrast(za, zb, kind, 0.2, w)
    expected, correct = _loop_pairs(za, zb, kind, 0.2, w)
    assert float(out.loss) == pytest.approx(expected, rel=1e-10)
    assert out.correct == correct and out.count == 5 and out.candidates == 5


@pytest.mark.parametrize("kind", ["cosine", "bilinear"])
def test_swapping_the_views_gives_the_same_nt_xent(kind: str) -> None:
    za, zb, w = _views(n=6, d=4, seed=2)
    forward, swapped = nt_xent(za, zb, kind, 0.1, w), nt_xent(zb, za, kind, 0.1, w)
    assert float(forward.loss) == pytest.approx(float(swapped.loss), rel=1e-12)
    assert forward.correct == swapped.correct
    # COLA's pair contrast has view 0 as the anchor: swapping changes it (bilinear W is not symmetric)
    if kind == "bilinear":
        assert float(pair_contrast(za, zb, kind, 1.0, w).loss) != pytest.approx(float(pair_contrast(zb, za, kind,
                                                                                                  1.0, w).loss))


def test_the_positive_is_the_partner_view_and_the_own_view_is_excluded() -> None:
    # orthogonal items, identical views: every anchor's positive is its partner, at cosine 1 (its own view,
    # also at cosine 1, must not count as a candidate)
    za = torch.eye(3, dtype=torch.float64)
    out = nt_xent(za, za.clone(), "cosine", 0.1)
    assert out.correct == 6
    assert torch.isinf(out.logits.diagonal()).all() and out.target.tolist() == [3, 4, 5, 0, 1, 2]
    expected = 6 * (-10.0 + math.log(math.exp(10.0) + 4 * math.exp(0.0)))
    assert float(out.loss) == pytest.approx(expected, rel=1e-12)


def test_one_item_has_no_negative_and_no_loss() -> None:
    za, zb = torch.randn(1, 4, requires_grad=True), torch.randn(1, 4, requires_grad=True)
    out = nt_xent(za, zb, "cosine", 0.1)
    assert float(out.loss.detach()) == 0.0 and out.count == 2 and out.candidates == 1
    out.loss.backward()
    assert float(za.grad.abs().max()) == 0.0


def test_gradients_reach_both_views_and_the_weight() -> None:
    za, zb, w = (t.float().requires_grad_() for t in _views(n=3, d=4, seed=3))
    nt_xent(za, zb, "bilinear", 1.0, w).loss.backward()
    assert all(t.grad is not None and float(t.grad.abs().sum()) > 0 for t in (za, zb, w))


def test_cosine_pairs_equal_the_loop() -> None:
    za, zb, _ = _views(n=4, d=3, seed=4)
    z = za.tolist() + zb.tolist()
    n = 4
    pos, neg = cosine_pairs(za, zb)
    assert pos.tolist() == pytest.approx([_score(z[i], z[i + n], "cosine", 1.0, []) for i in range(n)], abs=1e-6)
    loop = [_score(z[i], z[j], "cosine", 1.0, []) for i in range(2 * n) for j in range(i + 1, 2 * n) if j != i + n]
    assert neg.numel() == 2 * n * (n - 1) and sorted(neg.tolist()) == pytest.approx(sorted(loop), abs=1e-6)
    _, cross = cosine_pairs(za, zb, all_views=False)
    loop = [_score(z[i], z[n + j], "cosine", 1.0, []) for i in range(n) for j in range(n) if i != j]
    assert sorted(cross.tolist()) == pytest.approx(sorted(loop), abs=1e-6)


def test_bad_inputs_raise_clear_errors() -> None:
    za, zb, w = _views()
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(za, zb, "cosine", 0.0)
    with pytest.raises(ValueError, match="weight"):
        nt_xent(za, zb, "bilinear", 1.0, None)
    with pytest.raises(ValueError, match="similarity must be one of"):
        nt_xent(za, zb, "dot", 0.1)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        nt_xent(za, zb[:3], "cosine", 0.1)
    with pytest.raises(ValueError, match="N = 0"):
        pair_contrast(za[:0], zb[:0], "cosine", 0.1)
    with pytest.raises(ValueError, match="same d"):
        similarity(za, zb[:, :2])
