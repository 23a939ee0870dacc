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


_SIMILARITY_BLOCK = 1 << 22
"""Entries of the ``[rows, N]`` similarity block :func:`contrastive_logits` computes at a time."""
_DENSE_MAX_ROWS = 8192
"""Above this many masked steps (large GPU batches) the logits gather the ``[N, 1 + K, F]`` candidates
instead: the dense product's ``N² F`` multiply-adds would outgrow the ``N (1 + K) F`` needed."""


def _unit_rows(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``x [N, F]`` over its row norms clamped at ``eps`` — ``F.cosine_similarity``'s normalisation, whose
    clamp the gradient does not see."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clone()
    with torch.no_grad():
        norm.clamp_min_(eps)
    return x / norm


def identical_targets(targets: Tensor, negative_indices: Tensor) -> Tensor:
    """``[N, K]`` bool, True where distractor ``targets[negative_indices[n, k]]`` equals ``targets[n]``
    element for element (as ``==`` compares). Rows are first matched on an exact integer key — the sum of
    their bit patterns, with ``-0.0`` made ``+0.0`` — and only pairs whose keys agree are compared in full,
    so the ``[N, K, F]`` gather happens only for the (usually few) candidates."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[targets.element_size()]
    with torch.no_grad():
        key = (targets + 0.0).view(bits).sum(-1, dtype=torch.int64)  # [N]
        maybe = key[negative_indices] == key[:, None]  # [N, K]
        rows, cols = maybe.nonzero(as_tuple=True)
        same = torch.zeros_like(maybe)
        same[rows, cols] = (targets[negative_indices[rows, cols]] == targets[rows]).all(-1)
    return same


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

    ``F.cosine_similarity`` on the ``[N, 1 + K, F]`` candidates, computed without them: rows normalised
    once, then blocks of the ``[N, N]`` similarity matrix (a float32 GEMM, also under autocast) from which
    each row's ``1 + K`` entries are gathered.
    """
    if preds.shape != targets.shape or preds.dim() != 2:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} must both be [N, F]")
    if negative_indices.shape[0] != preds.shape[0]:
        raise ValueError(f"negative_indices has {negative_indices.shape[0]} rows, expected {preds.shape[0]}")
    n = preds.shape[0]
    neg_is_pos = identical_targets(targets, negative_indices)
    columns = torch.cat([torch.arange(n, device=preds.device)[:, None], negative_indices], dim=1)  # [N, 1+K]
    with torch.autocast(preds.device.type, enabled=False):
        p, t = _unit_rows(preds.float()), _unit_rows(targets.float())
        if n > _DENSE_MAX_ROWS:  # the [N, N] product would cost N / (1 + K) times the needed work
            logits = torch.einsum("nf,nkf->nk", p, t[columns]) / logit_temp
        else:
            step = max(1, _SIMILARITY_BLOCK // max(n, 1))
            blocks = [(p[i:i + step] @ t.t()).gather(1, columns[i:i + step]) for i in range(0, n, step)]
            logits = (torch.cat(blocks) if blocks else p.new_zeros(0, columns.shape[1])) / logit_temp
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
        return float(self.contrastive.detach()) / max(self.sample_size, 1) / math.log(2)

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
