"""BYOL's regression loss (Grill et al. 2020, "Bootstrap your own latent", eq. 2; BYOL-A, Niizumi et al. 2021):
the online network's prediction of one view regresses the target network's projection of the other view.

Pure functions of the rows ``p [N, d]`` (online projector + predictor) and ``z [N, d]`` (target projector, no
gradient), row ``i`` of both the same item. Per pair, the squared distance of the L2-normalised vectors,
``‖p̂ − ẑ‖² = 2 − 2·cos(p, z)`` (in ``[0, 4]``). No negatives. Losses are *sums* over the rows.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def _check_pair(p: Tensor, z: Tensor) -> None:
    if p.dim() != 2 or p.shape != z.shape:
        raise ValueError(f"BYOL's predictions and targets must both be [N, d], got {tuple(p.shape)} and "
                         f"{tuple(z.shape)}")


def byol_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``[N]`` cosine of each prediction ``p [N, d]`` and its target ``z [N, d]`` (the target detached)."""
    _check_pair(p, z)
    return (F.normalize(p, dim=-1) * F.normalize(z.detach(), dim=-1)).sum(-1)


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """``Σ_i (2 − 2·cos(p_i, z_i))`` over ``N`` pairs (a scalar; gradient through ``p`` only)."""
    return (2.0 - 2.0 * byol_cosine(p, z)).sum()


def symmetric_byol_loss(p0: Tensor, p1: Tensor, z0: Tensor, z1: Tensor) -> Tensor:
    """BYOL's symmetrised loss ``L + L̃`` summed over the items: the prediction of view 0 against the target of
    view 1, plus the prediction of view 1 against the target of view 0 (per item in ``[0, 8]``).

    ``p0, p1 [N, d]`` online predictions of views 0 and 1; ``z0, z1 [N, d]`` target projections (detached here).
    """
    return byol_loss(p0, z1) + byol_loss(p1, z0)
