"""PIRL's loss (Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant Representations"):
noise-contrastive estimation against negatives drawn from a memory bank, and the mix of its two terms.

Notation of the paper: ``m_I`` the memory-bank row of item ``I``, ``f(v_I)`` the projection of the untransformed
view, ``g(v_It)`` that of the transformed view, ``s`` cosine similarity, ``τ`` the temperature, ``N`` negatives
``I'`` drawn uniformly from the dataset ``D``. The paper's NCE (its eq. 3-4) scores a pair with

    h(a, b) = exp(s(a, b)/τ) / (exp(s(a, b)/τ) + N/|D|)

and sums ``−log h`` of the positive pair and ``−log(1 − h)`` of each negative pair. The implementations it builds
on (Wu et al. 2018's instance discrimination; VISSL's ``NCELossWithMemory``, by the paper's first author) first
divide ``exp(s/τ)`` by a partition function ``Z``, estimated once as ``|D|`` times the mean of ``exp(s/τ)``
over the first batch, which turns the noise term into ``N · Z/|D|``. Every function here takes that noise term as
``noise`` (``N/|D|`` for the formula as printed, ``N · mean exp(s/τ)`` with the estimate), so both are one
function. The softmax InfoNCE over the same ``1 + N`` candidates is the alternative.

Pure functions of tensors; the method (:mod:`speechcl.methods.pirl`) holds the bank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

LOSSES = ("nce", "infonce")


def sample_bank_negatives(ids: Tensor | None, bank_size: int, num_negatives: int, *, batch: int | None = None,
                          generator: torch.Generator | None = None) -> Tensor:
    """Bank rows to contrast with: ``N`` per item, uniform (with replacement) over the bank without the item.

    Args:
        ids: ``[B]`` int64 the items' own bank rows (never drawn for their item), or None (items that have
            no row, e.g. validation utterances: every row may be drawn; ``batch`` gives ``B``).
        bank_size: ``|D|`` rows in the bank (at least 2 when ``ids`` are given).
        num_negatives: ``N`` (the paper's 32000).
        generator: RNG; the result is on its device.
    Returns:
        ``[B, N]`` int64 row indices.
    """
    device = generator.device if generator is not None else (ids.device if ids is not None else None)
    if ids is None:
        if batch is None:
            raise ValueError("sample_bank_negatives needs ids [B] or batch=B")
        if bank_size < 1 or num_negatives < 1:
            raise ValueError(f"need bank_size >= 1 and num_negatives >= 1, got {bank_size} and {num_negatives}")
        r = torch.rand((batch, num_negatives), generator=generator, device=device) * bank_size
        return r.floor().long().clamp(max=bank_size - 1)
    if ids.dim() != 1:
        raise ValueError(f"ids must be [B], got {tuple(ids.shape)}")
    if bank_size < 2 or num_negatives < 1:
        raise ValueError(f"need bank_size >= 2 and num_negatives >= 1, got {bank_size} and {num_negatives}")
    r = torch.rand((ids.shape[0], num_negatives), generator=generator, device=device) * (bank_size - 1)
    r = r.floor().long().clamp(max=bank_size - 2)
    own = ids.to(r.device)[:, None]
    return r + (r >= own).long()  # skip the item's own row: uniform over the other bank_size - 1


def similarities(anchor: Tensor, positive: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine similarities in float32: the positive pair ``s(anchor, positive)`` and the negative pairs
    ``s(positive, negative_k)`` (the paper's eq. 4 scores negatives against the view's own representation).

    Args:
        anchor: ``[B, P]`` (``m_I``).
        positive: ``[B, P]`` (``g(v_It)`` or ``f(v_I)``).
        negatives: ``[B, N, P]`` (bank rows ``m_I'``).
    Returns:
        ``(pos [B], neg [B, N])``.
    """
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise ValueError(f"anchor {tuple(anchor.shape)} and positive {tuple(positive.shape)} must both be [B, P]")
    if negatives.dim() != 3 or negatives.shape[0] != anchor.shape[0] or negatives.shape[2] != anchor.shape[1]:
        raise ValueError(f"negatives must be [B={anchor.shape[0]}, N, P={anchor.shape[1]}], got "
                         f"{tuple(negatives.shape)}")
    with torch.autocast(anchor.device.type, enabled=False):
        a, p, n = (F.normalize(t.float(), dim=-1) for t in (anchor, positive, negatives))
        return (a * p).sum(-1), torch.einsum("bp,bnp->bn", p, n)


def nce_normaliser(pos: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """``Z/|D|``: the mean of ``exp(s/τ)`` over every score of a batch (``pos [B]``, ``neg [B, N]``), Wu et
    al.'s estimate of the partition function per bank row (a detached scalar)."""
    with torch.no_grad():
        scores = torch.cat([pos.reshape(-1), neg.reshape(-1)]).float() / temperature
        return (torch.logsumexp(scores, 0) - math.log(scores.numel())).exp()


def nce_loss(pos: Tensor, neg: Tensor, temperature: float, noise: float) -> Tensor:
    """Binary NCE per item: ``−log h(pos) − Σ_k log(1 − h(neg_k))`` with ``h = e/(e + noise)``, ``e = exp(s/τ)``.

    Args:
        pos: ``[B]`` positive-pair similarities.
        neg: ``[B, N]`` negative-pair similarities.
        temperature: ``τ`` (0.07).
        noise: ``N · Z/|D|`` (``N/|D|`` for the formula as printed; see the module docstring).
    Returns:
        ``[B]`` float32, computed in the log domain (no overflow of ``exp(s/τ)``).
    """
    if noise <= 0:
        raise ValueError(f"the NCE noise term N·Z/|D| must be positive, got {noise}")
    log_noise = math.log(noise)
    lp, ln = pos.float() / temperature, neg.float() / temperature
    log_h_pos = lp - torch.logaddexp(lp, torch.full_like(lp, log_noise))
    log_not_h_neg = log_noise - torch.logaddexp(ln, torch.full_like(ln, log_noise))
    return -log_h_pos - log_not_h_neg.sum(-1)


def info_nce_loss(pos: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """Softmax InfoNCE per item: cross-entropy of the positive among its ``1 + N`` candidates (``[B]``)."""
    logits = torch.cat([pos[:, None], neg], dim=1).float() / temperature
    return torch.logsumexp(logits, 1) - logits[:, 0]


def contrast_loss(pos: Tensor, neg: Tensor, temperature: float, loss: str = "nce", noise: float = 1.0) -> Tensor:
    """:func:`nce_loss` (``loss="nce"``, with ``noise``) or :func:`info_nce_loss` (``"infonce"``), ``[B]``."""
    if loss == "nce":
        return nce_loss(pos, neg, temperature, noise)
    if loss == "infonce":
        return info_nce_loss(pos, neg, temperature)
    raise ValueError(f"PIRL loss must be one of {LOSSES}, got {loss!r}")


@dataclass
class PirlLoss:
    """The mixed loss (summed over items) and its two terms per item."""

    loss: Tensor  # scalar: Σ_I λ L(m_I, g(v_It)) + (1 − λ) L(m_I, f(v_I))
    transformed: Tensor  # [B] L(m_I, g(v_It)): the pretext-invariance term
    untransformed: Tensor  # [B] L(m_I, f(v_I))


def pirl_loss(pos_t: Tensor, neg_t: Tensor, pos_f: Tensor, neg_f: Tensor, *, lam: float = 0.5,
              temperature: float = 0.07, loss: str = "nce", noise: float = 1.0) -> PirlLoss:
    """The paper's eq. 5: ``λ L(m_I, g(v_It)) + (1 − λ) L(m_I, f(v_I))`` summed over the batch.

    Args:
        pos_t, neg_t: ``[B]``, ``[B, N]`` similarities of the transformed view (:func:`similarities` of
            ``m_I``, ``g(v_It)`` and the negatives).
        pos_f, neg_f: the same for the untransformed view ``f(v_I)`` (same negatives in the paper).
        lam: ``λ`` (0.5 in the paper).
        temperature, loss, noise: as in :func:`contrast_loss`.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"PIRL's λ must be in [0, 1], got {lam}")
    lt = contrast_loss(pos_t, neg_t, temperature, loss, noise)
    lf = contrast_loss(pos_f, neg_f, temperature, loss, noise)
    return PirlLoss(loss=(lam * lt + (1.0 - lam) * lf).sum(), transformed=lt, untransformed=lf)
