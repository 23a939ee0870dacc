"""wav2vec 2.0's contrastive task: distractor sampling, logits, and the loss with its penalties.

Pure functions; the model produces predictions/targets, this module turns them into a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


def sample_negatives(
    mask: Tensor,
    num_negatives: int,
    cross_sample_negatives: int = 0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw distractor indices for every masked step.

    Args:
        mask: ``[B, T]`` bool, True at masked (and therefore unpadded) steps. The masked steps, taken in
            row-major order, are numbered ``0 .. N-1``; that numbering is what the result indexes.
        num_negatives: K distractors per step, uniform over the *other* masked steps of the same utterance
            (never the step itself).
        cross_sample_negatives: additional distractors uniform over the other masked steps of the whole
            batch (fairseq ``cross_sample_negatives``; 0 by default).
        generator: RNG (on ``mask``'s device).
    Returns:
        ``[N, K + cross]`` int64 indices into the ``N`` masked steps.

    An utterance with a single masked step has no possible distractor; its rows point at the step itself,
    which :func:`contrastive_logits` turns into ``-inf`` logits (those steps then contribute no loss).
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a [batch, steps] bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    device = mask.device
    b, t = mask.shape
    counts = mask.sum(1)  # [B]
    n = int(counts.sum())
    row = torch.arange(b, device=device).repeat_interleave(counts)  # [N] utterance of each masked step
    offsets = torch.cumsum(counts, 0) - counts  # [B] first masked-step number of each utterance
    own = torch.arange(n, device=device) - offsets[row]  # [N] rank of the step within its utterance
    parts = []
    if num_negatives > 0:
        m = counts[row]  # [N] masked steps in the same utterance
        high = (m - 1).clamp(min=1)
        r = (torch.rand((n, num_negatives), generator=generator, device=device) * high[:, None]).floor().long()
        r = torch.minimum(r, high[:, None] - 1)
        r = r + (r >= own[:, None]).long()  # skip the positive's own step
        r = torch.where((m > 1)[:, None], r, own[:, None])
        parts.append(offsets[row][:, None] + r)
    if cross_sample_negatives > 0:
        if n < 2:
            parts.append(torch.zeros((n, cross_sample_negatives), dtype=torch.long, device=device))
        else:
            c = (torch.rand((n, cross_sample_negatives), generator=generator, device=device) * (n - 1)).floor().long()
            c = torch.minimum(c, torch.tensor(n - 2, device=device))
            idx = torch.arange(n, device=device)[:, None]
            parts.append(c + (c >= idx).long())
    if not parts:
        raise ValueError("num_negatives + cross_sample_negatives must be positive")
    return torch.cat(parts, dim=1)


def contrastive_logits(preds: Tensor, targets: Tensor, negative_indices: Tensor, logit_temp: float) -> Tensor:
    """Cosine-similarity logits of each prediction against its target and distractors.

    Args:
        preds: ``[N, F]`` context predictions at masked steps (``final_proj(c_t)``).
        targets: ``[N, F]`` quantized targets at the same steps (``project_q(q_t)``).
        negative_indices: ``[N, K]`` indices into ``targets``.
        logit_temp: kappa (0.1).
    Returns:
        ``[N, 1 + K]`` float32 logits, column 0 the positive; a distractor whose vector equals the positive's
        gets ``-inf`` (fairseq), so identical codes never count as errors.
    """
    if preds.shape != targets.shape or preds.dim() != 2:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} must both be [N, F]")
    if negative_indices.shape[0] != preds.shape[0]:
        raise ValueError(f"negative_indices has {negative_indices.shape[0]} rows, expected {preds.shape[0]}")
    negs = targets[negative_indices]  # [N, K, F]
    neg_is_pos = (negs == targets[:, None, :]).all(-1)  # [N, K]
    cands = torch.cat([targets[:, None, :], negs], dim=1).float()  # [N, 1+K, F]
    logits = F.cosine_similarity(preds.float()[:, None, :], cands, dim=-1) / logit_temp
    neg_logits = logits[:, 1:].masked_fill(neg_is_pos, float("-inf"))
    return torch.cat([logits[:, :1], neg_logits], dim=1)


@dataclass
class ContrastiveLoss:
    """The pretraining loss and what to log (sums over the batch; ``sample_size`` = masked steps)."""

    loss: Tensor  # scalar: contrastive + w_div * diversity * N + w_feat * features_pen * N
    contrastive: Tensor  # scalar: summed cross-entropy (nats)
    diversity: Tensor  # scalar: (G·V − prob_perplexity) / (G·V)
    features_pen: Tensor  # scalar
    sample_size: int  # N masked steps
    correct: int  # positives ranked first
    count: int  # masked steps scored
    code_perplexity: float
    prob_perplexity: float

    @property
    def loss_bits(self) -> float:
        """Contrastive loss per masked step in bits (chance = log2(K + 1))."""
        return float(self.contrastive) / max(self.sample_size, 1) / math.log(2)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)


def wav2vec2_loss(out, diversity_weight: float = 0.1, feature_pen_weight: float = 10.0) -> ContrastiveLoss:
    """fairseq's ``wav2vec`` criterion for a :class:`~speechcl.models.wav2vec2.PretrainingOutput`.

    ``loss = CE_sum + diversity_weight * (GV - ppl)/GV * N + feature_pen_weight * mean(z^2) * N``
    (BASE: 0.1 and 10). Cross-entropy in float32, summed over the N masked steps.
    """
    logits: Tensor = out.logits.float()
    n = logits.shape[0]
    target = torch.zeros(n, dtype=torch.long, device=logits.device)
    ce = F.cross_entropy(logits, target, reduction="sum")
    gv = out.num_codevectors
    diversity = (gv - out.quantized.prob_perplexity) / gv
    loss = ce + diversity_weight * diversity * n + feature_pen_weight * out.features_pen.float() * n
    with torch.no_grad():  # fairseq's accuracy: positive ranked first, ties of all candidates excluded
        is_max = logits.argmax(-1) == 0
        is_min = logits.argmin(-1) == 0
        correct = int((is_max & ~is_min).sum())
        count = n
    return ContrastiveLoss(
        loss=loss, contrastive=ce, diversity=diversity, features_pen=out.features_pen, sample_size=n,
        correct=correct, count=count, code_perplexity=float(out.quantized.code_perplexity.detach()),
        prob_perplexity=float(out.quantized.prob_perplexity.detach()),
    )
