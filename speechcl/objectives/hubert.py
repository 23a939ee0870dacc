"""HuBERT's masked prediction of frame cluster labels (Hsu et al. 2021, "HuBERT: Self-Supervised Speech
Representation Learning by Masked Prediction of Hidden Units").

The projected transformer output ``A x_t`` of every frame is scored against one learned embedding ``e_c`` per
cluster by cosine similarity over a temperature (§II-B: ``p(c | x_t) ∝ exp(cos(A x_t, e_c) / τ)``, ``τ = 0.1``),
and the loss is the cross-entropy of each frame's label (eq. 3): ``α`` times the sum over masked frames plus
``1 − α`` times the sum over unmasked ones (BASE: ``α = 1``, masked frames only). Frames labelled
``ignore_index`` (padding) count in neither. fairseq scores the positive against the other labels with the
positive's own copy removed (``compute_nce``), which is this softmax over all ``K`` labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

IGNORE_INDEX = -100


def label_logits(proj: Tensor, embeddings: Tensor, temperature: float) -> Tensor:
    """``cos(proj_n, e_c) / τ`` for ``proj [N, F]`` and ``embeddings [K, F]`` -> ``[N, K]`` float32."""
    if proj.shape[-1] != embeddings.shape[-1]:
        raise ValueError(f"projection width {proj.shape[-1]} != label embedding width {embeddings.shape[-1]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p = F.normalize(proj.float(), dim=-1, eps=1e-8)
    e = F.normalize(embeddings.float(), dim=-1, eps=1e-8)
    return p @ e.t() / temperature


@dataclass
class HubertLoss:
    """Sums over one batch (``M`` masked and ``U`` unmasked labelled frames)."""

    loss: Tensor  # scalar: masked_weight · masked_sum + unmasked_weight · unmasked_sum (nats)
    masked_sum: Tensor  # scalar: cross-entropy summed over the masked frames
    unmasked_sum: Tensor  # scalar: over the unmasked frames (no gradient when unmasked_weight is 0)
    masked_logits: Tensor  # [M, K]
    masked_targets: Tensor  # [M]
    unmasked_logits: Tensor  # [U, K] (detached when unmasked_weight is 0)
    unmasked_targets: Tensor  # [U]
    sample_size: int  # what the loss is normalised by: M, plus U when unmasked frames are weighted (fairseq)


def hubert_loss(proj: Tensor, embeddings: Tensor, labels: Tensor, mask: Tensor, temperature: float = 0.1,
                masked_weight: float = 1.0, unmasked_weight: float = 0.0) -> HubertLoss:
    """The loss of eq. 3 on ``proj [B, T, F]`` (projected transformer output), ``embeddings [K, F]``,
    ``labels [B, T]`` (``-100`` where ignored) and ``mask [B, T]`` (True at masked frames).

    Raises:
        ValueError: shapes disagree, or a label lies outside ``[0, K)``.
    """
    b, t = labels.shape
    if proj.shape[:2] != (b, t) or mask.shape != (b, t):
        raise ValueError(f"proj {tuple(proj.shape)}, labels {tuple(labels.shape)} and mask {tuple(mask.shape)} "
                         "must agree in [batch, frames]")
    valid = labels != IGNORE_INDEX
    k = embeddings.shape[0]
    used = labels[valid]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= k):
        raise ValueError(f"frame labels range over [{int(used.min())}, {int(used.max())}] but there are {k} label "
                         "embeddings (objective.num_classes): the labels were made with another number of clusters")
    masked = valid & mask
    unmasked = valid & ~mask
    logits_m = label_logits(proj[masked], embeddings, temperature)
    targets_m = labels[masked]
    masked_sum = F.cross_entropy(logits_m, targets_m, reduction="sum")
    with torch.set_grad_enabled(torch.is_grad_enabled() and unmasked_weight != 0):
        logits_u = label_logits(proj[unmasked], embeddings, temperature)
        targets_u = labels[unmasked]
        unmasked_sum = F.cross_entropy(logits_u, targets_u, reduction="sum")
    loss = masked_weight * masked_sum
    if unmasked_weight != 0:
        loss = loss + unmasked_weight * unmasked_sum
    return HubertLoss(loss=loss, masked_sum=masked_sum, unmasked_sum=unmasked_sum, masked_logits=logits_m,
                      masked_targets=targets_m, unmasked_logits=logits_u, unmasked_targets=targets_u,
                      sample_size=int(targets_m.numel()) + (int(targets_u.numel()) if unmasked_weight != 0 else 0))


def perplexity(counts: Tensor) -> float:
    """``exp(entropy)`` of a histogram ``counts [K]``: the number of equally used labels it amounts to (1 when
    one label takes everything, ``K`` when all are used equally); NaN for an empty histogram."""
    total = float(counts.sum())
    if total <= 0:
        return float("nan")
    p = counts.double() / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))
