"""Linear centered kernel alignment (CKA) of two sets of representations of the same items.

For ``X`` ``[N, D1]`` and ``Y`` ``[N, D2]`` (row ``i`` of both describes item ``i``: here a frame of an
utterance and the aligned frame of its transformed version), with linear kernels ``K = X Xᵀ``, ``L = Y Yᵀ``
and the centering matrix ``H = I - 11ᵀ/N`` (Kornblith et al. 2019, "Similarity of neural network
representations revisited")::

    HSIC(K, L) = tr(K H L H) / (N - 1)²
    CKA(X, Y)  = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))
               = ‖Ycᵀ Xc‖_F² / (‖Xcᵀ Xc‖_F · ‖Ycᵀ Yc‖_F)        (Xc, Yc: column-centered)

The second form, in feature space, is what is computed (in float64): it needs only the ``D × D`` sums of
outer products, so :class:`LinearCKA` pools any number of frames over many files in bounded memory. CKA lies
in [0, 1], is 1 for ``Y = X`` (exactly: numerator and denominator are then the same float64 numbers), and is
invariant to orthogonal transformations and isotropic scaling of either side (not to arbitrary invertible
linear maps). It is undefined (NaN here) when either side has no variance, e.g. a single item.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs X [N, D1] and Y [N, D2] with the same N, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def _ratio(cross: Tensor, gram_x: Tensor, gram_y: Tensor) -> float:
    """``‖cross‖² / sqrt(‖gram_x‖² · ‖gram_y‖²)``; NaN when a side has no variance."""
    den = float(gram_x.square().sum()) * float(gram_y.square().sum())
    if not den > 0:
        return math.nan
    return float(cross.square().sum()) / math.sqrt(den)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of ``x`` ``[N, D1]`` and ``y`` ``[N, D2]`` (rows paired), in float64 (see the module docstring)."""
    _check_pair(x, y)
    xc = x.double() - x.double().mean(dim=0)
    yc = y.double() - y.double().mean(dim=0)
    return _ratio(xc.T @ yc, xc.T @ xc, yc.T @ yc)


class LinearCKA:
    """Linear CKA over paired rows given in pieces: ``update(x, y)`` any number of times, then ``value()``.

    Keeps the float64 sums ``Σ x xᵀ``, ``Σ x yᵀ``, ``Σ y yᵀ``, ``Σ x``, ``Σ y`` and the count (memory
    ``O(D1² + D1·D2 + D2²)``, independent of the number of rows); the rows are shifted by the first piece's
    mean before summing, which leaves the centered result unchanged and keeps the subtraction in
    :meth:`value` well conditioned. Equals :func:`linear_cka` of all rows stacked (to float64 rounding).

    Args:
        dim_x: ``D1``; dim_y: ``D2`` (default ``D1``).
        device: where the sums live (float64).
    """

    def __init__(self, dim_x: int, dim_y: int | None = None, device: str | torch.device = "cpu") -> None:
        dim_y = dim_x if dim_y is None else dim_y
        options = {"dtype": torch.float64, "device": device}
        self.count = 0
        self._xx = torch.zeros(dim_x, dim_x, **options)
        self._xy = torch.zeros(dim_x, dim_y, **options)
        self._yy = torch.zeros(dim_y, dim_y, **options)
        self._sx = torch.zeros(dim_x, **options)
        self._sy = torch.zeros(dim_y, **options)
        self._ref: tuple[Tensor, Tensor] | None = None

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add paired rows ``x`` ``[n, D1]`` and ``y`` ``[n, D2]``."""
        _check_pair(x, y)
        if x.shape[1] != self._xx.shape[0] or y.shape[1] != self._yy.shape[0]:
            raise ValueError(f"LinearCKA was made for dims ({self._xx.shape[0]}, {self._yy.shape[0]}), got rows "
                             f"of {x.shape[1]} and {y.shape[1]}")
        if x.shape[0] == 0:
            return
        x = x.to(self._xx.device, torch.float64)
        y = y.to(self._yy.device, torch.float64)
        if self._ref is None:
            self._ref = (x.mean(dim=0), y.mean(dim=0))
        x, y = x - self._ref[0], y - self._ref[1]
        self._xx += x.T @ x
        self._xy += x.T @ y
        self._yy += y.T @ y
        self._sx += x.sum(dim=0)
        self._sy += y.sum(dim=0)
        self.count += x.shape[0]

    def value(self) -> float:
        """CKA of every row added so far (NaN before any, or when a side has no variance)."""
        if self.count == 0:
            return math.nan
        n = self.count
        cxx = self._xx - torch.outer(self._sx, self._sx) / n
        cxy = self._xy - torch.outer(self._sx, self._sy) / n
        cyy = self._yy - torch.outer(self._sy, self._sy) / n
        return _ratio(cxy, cxx, cyy)
