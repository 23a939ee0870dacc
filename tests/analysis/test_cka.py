"""Linear CKA: a hand computation, the HSIC formula with centering matrices, exact 1 for identical inputs,
invariance to orthogonal maps and isotropic scaling, streaming equals stacked."""

from __future__ import annotations

import math

import pytest
import torch

from speechcl.analysis.cka import LinearCKA, linear_cka


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA from the kernel form: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)), K = X Xᵀ, L = Y Yᵀ."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def test_one_dimensional_cka_is_squared_correlation_by_hand():
    # centered x = (-1, 0, 1), y = (-1, -1, 2): covariance sum 3, variances 2 and 6 -> r^2 = 9 / 12
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[0.0], [0.0], [3.0]])
    assert linear_cka(x, y) == pytest.approx(0.75, abs=1e-12)
    assert hsic_cka(x, y) == pytest.approx(0.75, abs=1e-12)


def test_matches_the_hsic_formula_with_centering_matrices():
    gen = torch.Generator().manual_seed(0)
    for n, d1, d2 in ((5, 3, 4), (7, 2, 6), (6, 8, 3)):
        x = torch.randn(n, d1, generator=gen) + 3.0
        y = x[:, :1] * torch.randn(1, d2, generator=gen) + torch.randn(n, d2, generator=gen)
        expected = hsic_cka(x, y)
        assert linear_cka(x, y) == pytest.approx(expected, abs=1e-12)
        acc = LinearCKA(d1, d2)
        acc.update(x, y)
        assert acc.value() == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= expected <= 1.0


def test_identical_inputs_give_exactly_one():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 16, generator=gen) * 5 + 2
    assert linear_cka(x, x) == 1.0
    acc = LinearCKA(16)
    acc.update(x[:13], x[:13])
    acc.update(x[13:], x[13:])
    assert acc.value() == 1.0


def test_invariant_to_orthogonal_maps_and_isotropic_scaling_not_to_any_linear_map():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(6, 5, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(30, 5, generator=gen,
                                                                                    dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x, y @ q) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x * 7.5, y * 0.01) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x, y + 100.0) == pytest.approx(base, abs=1e-9)  # centering removes offsets
    stretch = torch.diag(torch.tensor([10.0, 1.0, 1.0, 0.1, 1.0], dtype=torch.float64))
    assert abs(linear_cka(x, y @ stretch) - base) > 1e-3


def test_streaming_equals_stacked_and_survives_a_large_mean():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(50, 8, generator=gen) + 1000.0
    y = torch.tanh(x - 1000.0) @ torch.randn(8, 4, generator=gen) + 500.0
    acc = LinearCKA(8, 4)
    for start in range(0, 50, 7):
        acc.update(x[start:start + 7], y[start:start + 7])
    assert acc.count == 50
    assert acc.value() == pytest.approx(linear_cka(x, y), abs=1e-9)
    assert acc.value() == pytest.approx(hsic_cka(x - 1000.0, y - 500.0), abs=1e-9)


def test_degenerate_and_bad_inputs():
    assert math.isnan(LinearCKA(3).value())
    assert math.isnan(linear_cka(torch.ones(4, 3), torch.randn(4, 3)))
    with pytest.raises(ValueError, match="same N"):
        linear_cka(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="dims"):
        LinearCKA(3).update(torch.randn(4, 2), torch.randn(4, 3))
