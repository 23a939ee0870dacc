"""MoCo's InfoNCE (He et al. 2020, "Momentum Contrast", Algorithm 1; MoCo v2, Chen et al. 2020): a query
against its own key (the positive) and a queue of earlier keys (the negatives).

Pure functions of unit-length rows: queries ``q [B, d]`` (online encoder + head), their keys ``k [B, d]``
(momentum encoder + head, row ``i`` the same item as ``q_i``) and the queue ``[K, d]``. Query ``i`` scores
``l_i = [q_i·k_i, q_i·queue_1, …, q_i·queue_K] / τ`` (the positive at column 0) and loses
``−log softmax(l_i)_0``. ``valid [K]`` or ``[B, K]`` leaves negatives out (``−inf``): the queue's empty slots,
or keys of the query's own utterance. Losses are *sums* over the queries, in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass
class MoCoLoss:
    """InfoNCE over ``B`` queries.

    Attributes:
        loss: summed cross-entropy over the queries (nats; a scalar tensor with gradient through ``q``).
        logits: ``[B, 1 + K]`` float32 scores / τ, the positive at column 0, ``−inf`` at left-out negatives.
        correct: queries whose positive has the highest logit (ties count for the positive).
        negatives: ``[B]`` int64 negatives each query was scored against; chance accuracy is ``1 / (1 + n)``.
    """

    loss: Tensor
    logits: Tensor
    correct: int
    negatives: Tensor


def moco_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float, valid: Tensor | None = None) -> Tensor:
    """``[B, 1 + K]`` float32: ``q_i·k_i / τ`` then ``q_i·queue_j / τ`` (``−inf`` where ``valid`` is False).

    Args:
        q: ``[B, d]`` L2-normalised queries (gradient flows through them).
        k: ``[B, d]`` L2-normalised keys of the same items (detached here: MoCo's keys carry no gradient).
        queue: ``[K, d]`` L2-normalised earlier keys (``K`` may be 0).
        temperature: τ (MoCo v1 0.07, v2 0.2).
        valid: ``[K]`` or ``[B, K]`` bool, True where a queue entry is a negative of the query; None: all.
    """
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(f"moco: queries and keys must both be [B, d], got {tuple(q.shape)} and {tuple(k.shape)}")
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"moco: the queue must be [K, d={q.shape[1]}], got {tuple(queue.shape)}")
    if not temperature > 0:
        raise ValueError(f"moco: the temperature must be > 0, got {temperature}")
    q = q.float()
    k = k.detach().float()
    positive = (q * k).sum(-1, keepdim=True)  # [B, 1]
    negative = q @ queue.detach().float().T  # [B, K]
    if valid is not None:
        if valid.dtype != torch.bool or valid.shape not in ((queue.shape[0],), (q.shape[0], queue.shape[0])):
            raise ValueError(f"moco: valid must be a bool [K={queue.shape[0]}] or [B={q.shape[0]}, K] tensor, got "
                             f"{valid.dtype} {tuple(valid.shape)}")
        negative = negative.masked_fill(~valid.expand_as(negative), float("-inf"))
    return torch.cat([positive, negative], 1) / temperature


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float, valid: Tensor | None = None) -> MoCoLoss:
    """MoCo's InfoNCE summed over the queries (see :func:`moco_logits` for the arguments).

    ``−Σ_i log(exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_{j valid} exp(q_i·queue_j/τ)))``. A query without any
    negative (an empty queue) loses 0 and gets no gradient."""
    logits = moco_logits(q, k, queue, temperature, valid)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    loss = F.cross_entropy(logits, target, reduction="sum")
    correct = int((logits.detach().argmax(1) == 0).sum())
    if valid is None:
        negatives = torch.full((q.shape[0],), queue.shape[0], dtype=torch.long, device=q.device)
    else:
        negatives = valid.expand(q.shape[0], queue.shape[0]).sum(1)
    return MoCoLoss(loss=loss, logits=logits, correct=correct, negatives=negatives)
