"""SimCLR's NT-Xent (Chen et al. 2020) and COLA's variant (Saeed et al. 2021): two views of each of N items,
every other item of the batch a negative.

Pure functions of the projections ``za [N, d]`` (view 0) and ``zb [N, d]`` (view 1); row ``i`` of both is the
same item. Two similarities:

- ``cosine``: ``cos(u, v) / τ`` (SimCLR's NT-Xent, "normalized temperature-scaled cross entropy");
- ``bilinear``: ``uᵀ W v`` with a learned ``W [d, d]`` and no temperature (COLA; it follows a LayerNorm + tanh
  head, which bounds the projections).

Two candidate sets:

- :func:`nt_xent` (SimCLR): each of the 2N views is an anchor; its candidates are the other 2N − 1 views, the
  positive its partner view and the 2N − 2 views of the other items negatives;
- :func:`pair_contrast` (COLA): each view-0 segment is an anchor, its candidates the N view-1 segments (N − 1
  negatives: the other items' positives).

Losses are *sums* of cross-entropies over the anchors (``count`` of them), in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

SIMILARITIES = ("cosine", "bilinear")


@dataclass
class ContrastOutput:
    """A contrastive loss over ``A`` anchors with ``C`` candidates each.

    Attributes:
        loss: summed cross-entropy over the anchors (nats; a scalar tensor with gradient).
        logits: ``[A, C']`` similarities (``-inf`` where a column is not a candidate of the row: its own view).
        target: ``[A]`` int64 column of each anchor's positive.
        correct: anchors whose positive has the highest logit (contrastive accuracy's numerator).
        count: ``A``.
        candidates: ``C`` (the positive and ``C − 1`` negatives); chance accuracy is ``1 / C``.
    """

    loss: Tensor
    logits: Tensor
    target: Tensor
    correct: int
    count: int
    candidates: int


def similarity(a: Tensor, b: Tensor, kind: str = "cosine", temperature: float = 0.1,
               weight: Tensor | None = None) -> Tensor:
    """Pairwise scores ``[N, M]`` of ``a [N, d]`` and ``b [M, d]``.

    Args:
        kind: ``cosine`` — ``cos(a_i, b_j) / temperature`` (SimCLR τ: 0.1 for ImageNet, 0.5 for CIFAR-10);
            ``bilinear`` — ``a_iᵀ W b_j`` (COLA; ``temperature`` is not used).
        weight: ``W [d, d]`` for ``bilinear``.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"similarity needs a [N, d] and b [M, d] with the same d, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if kind == "cosine":
        if temperature <= 0:
            raise ValueError(f"the NT-Xent temperature must be > 0, got {temperature}")
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    if kind == "bilinear":
        d = a.shape[1]
        if weight is None or weight.shape != (d, d):
            raise ValueError(f"bilinear similarity needs a weight [{d}, {d}], got "
                             f"{None if weight is None else tuple(weight.shape)}")
        return a @ weight @ b.T
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")


def _check_views(za: Tensor, zb: Tensor) -> int:
    if za.dim() != 2 or za.shape != zb.shape:
        raise ValueError(f"the two views' projections must both be [N, d], got {tuple(za.shape)} and {tuple(zb.shape)}")
    if za.shape[0] < 1:
        raise ValueError("a contrastive loss needs at least one item (N >= 1), got N = 0")
    return za.shape[0]


def _cross_entropy(logits: Tensor, target: Tensor, candidates: int) -> ContrastOutput:
    loss = F.cross_entropy(logits, target, reduction="sum")
    correct = int((logits.detach().argmax(1) == target).sum())
    return ContrastOutput(loss=loss, logits=logits, target=target, correct=correct, count=logits.shape[0],
                          candidates=candidates)


def nt_xent(za: Tensor, zb: Tensor, kind: str = "cosine", temperature: float = 0.1,
            weight: Tensor | None = None) -> ContrastOutput:
    """SimCLR's NT-Xent over ``2N`` anchors: ``za [N, d]``, ``zb [N, d]`` (row i of both: item i).

    With ``z = [za; zb]`` (``[2N, d]``) and ``s`` the :func:`similarity`, anchor ``k`` has positive ``p(k)``
    (``k ± N``) and loss ``−log(exp s(z_k, z_p(k)) / Σ_{j ≠ k} exp s(z_k, z_j))``: 2N − 1 candidates, 2N − 2
    negatives. Symmetric in the views. With N = 1 the only candidate is the positive: the loss is 0 (no
    negatives, no gradient).
    """
    n = _check_views(za, zb)
    z = torch.cat([za, zb])
    logits = similarity(z, z, kind, temperature, weight)
    own = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(own, float("-inf"))
    index = torch.arange(n, device=z.device)
    target = torch.cat([index + n, index])
    return _cross_entropy(logits, target, 2 * n - 1)


def pair_contrast(za: Tensor, zb: Tensor, kind: str = "bilinear", temperature: float = 0.1,
                  weight: Tensor | None = None) -> ContrastOutput:
    """COLA's loss over ``N`` anchors: anchor ``za_i`` against the candidates ``zb_1 … zb_N``, positive
    ``zb_i`` (N − 1 negatives): ``−log(exp s(za_i, zb_i) / Σ_j exp s(za_i, zb_j))``. Not symmetric in the
    views (the anchor is view 0)."""
    n = _check_views(za, zb)
    logits = similarity(za, zb, kind, temperature, weight)
    return _cross_entropy(logits, torch.arange(n, device=za.device), n)


def cosine_pairs(za: Tensor, zb: Tensor, all_views: bool = True) -> tuple[Tensor, Tensor]:
    """Cosine similarities of the positive pairs ``[N]`` and of the negative pairs: with ``all_views``
    (:func:`nt_xent`'s candidates) every pair of views of different items ``[2N(N − 1)]`` (each unordered pair
    once), else (:func:`pair_contrast`'s) ``cos(za_i, zb_j)`` for ``i ≠ j`` ``[N(N − 1)]``."""
    n = _check_views(za, zb)
    a, b = F.normalize(za.detach().float(), dim=-1), F.normalize(zb.detach().float(), dim=-1)
    positive = (a * b).sum(-1)
    other = ~torch.eye(n, dtype=torch.bool, device=za.device)
    cross = (a @ b.T)[other]  # za_i vs zb_j, i != j
    if not all_views:
        return positive, cross
    upper = torch.triu(other, diagonal=1)
    within = torch.cat([(a @ a.T)[upper], (b @ b.T)[upper]])  # same view, different items
    return positive, torch.cat([cross, within])
