"""wav2vec 1.0's future-prediction task (Schneider et al. 2019): pairs, distractors, scores and its binary loss.

The context ``c_t`` predicts the encoder output ``z_{t+k}`` of each step ``k = 1 … K`` through one affine map
per step, ``h_k(c_t)``; the score of a candidate ``z`` is the dot product ``h_k(c_t) · z``. Distractors are
other frames (uniform over the valid frames of the same utterance, or of the batch). Pure functions; CPC's
softmax loss over the same scores is in :mod:`speechcl.objectives.cpc`.

Indexing: ``B`` utterances of ``T`` frames are numbered row-major, frame ``t`` of utterance ``b`` being
``b · T + t`` (padded frames keep their number but are never a target, a context or a distractor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from speechcl.objectives.contrastive import sample_negatives

NEGATIVE_SCOPES = ("utterance", "batch")


@dataclass
class FuturePairs:
    """The ``P`` valid (context, target) pairs: ``t + k`` is a valid frame of ``t``'s utterance.

    Attributes:
        context: ``[P]`` int64 frame number ``b · T + t`` of ``c_t``.
        target: ``[P]`` int64 frame number ``b · T + t + k`` of ``z_{t+k}``.
        step: ``[P]`` int64 ``k − 1`` (0 … K − 1).
    """

    context: Tensor
    target: Tensor
    step: Tensor

    def __len__(self) -> int:
        return int(self.context.shape[0])


def future_pairs(lengths: Tensor, num_frames: int, steps: int) -> FuturePairs:
    """Every pair ``(t, t + k)``, ``1 <= k <= steps``, with both frames among the first ``lengths[b]`` of row ``b``.

    Args:
        lengths: ``[B]`` int valid frames per utterance (at most ``num_frames``).
        num_frames: ``T``, the padded length.
        steps: ``K`` (12 in wav2vec 1.0 and CPC).
    Returns:
        :class:`FuturePairs`, ordered by utterance, then step, then time. An utterance of ``L`` frames gives
        ``Σ_k max(L − k, 0)`` pairs: none when ``L < 2``, fewer steps than ``K`` when ``L <= K``.
    """
    if steps < 1:
        raise ValueError(f"prediction steps must be at least 1, got {steps}")
    if lengths.dim() != 1 or bool((lengths > num_frames).any()) or bool((lengths < 0).any()):
        raise ValueError(f"lengths must be a [batch] tensor of frame counts in 0..{num_frames}, got {lengths.tolist()}")
    device = lengths.device
    t = torch.arange(num_frames, device=device)
    k = torch.arange(1, steps + 1, device=device)
    valid = t[None, None, :] + k[None, :, None] < lengths[:, None, None]  # [B, K, T]
    b, step, time = valid.nonzero(as_tuple=True)
    context = b * num_frames + time
    return FuturePairs(context=context, target=context + step + 1, step=step)


def sample_future_negatives(pairs: FuturePairs, valid: Tensor, steps: int, num_negatives: int,
                            scope: str = "utterance", *, generator: torch.Generator | None = None) -> Tensor:
    """Distractors for every pair, drawn uniformly (with replacement) from the valid frames of the target's
    utterance (``scope="utterance"``, wav2vec 1.0's ``p_n(z) = 1/T``) or of the whole batch (``"batch"``),
    never the target frame itself; independent draws for each ``(t, k)``.

    Args:
        pairs: from :func:`future_pairs` over the same frames.
        valid: ``[B, T]`` bool, True at valid (unpadded) frames; each row's valid frames come first.
        steps: ``K`` the pairs were made with.
        num_negatives: ``N`` per pair (10 in wav2vec 1.0, 128 in modified CPC).
        generator: RNG on ``valid``'s device.
    Returns:
        ``[P, N]`` int64 frame numbers ``b · T + t``.

    Built on :func:`~speechcl.objectives.contrastive.sample_negatives`: every valid frame gets ``K · N``
    draws, and the pair ``(t, k)`` uses block ``k`` of its target frame's.
    """
    if scope not in NEGATIVE_SCOPES:
        raise ValueError(f"negative scope must be one of {NEGATIVE_SCOPES}, got {scope!r}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
    draws = steps * num_negatives
    within, across = (draws, 0) if scope == "utterance" else (0, draws)
    drawn = sample_negatives(valid, within, across, generator=generator)  # [V, K·N] into the valid frames
    frame = valid.flatten().nonzero().squeeze(1)  # [V] frame number of each valid frame
    rank = torch.full((valid.numel(),), -1, dtype=torch.long, device=valid.device)
    rank[frame] = torch.arange(frame.numel(), device=valid.device)
    cols = pairs.step[:, None] * num_negatives + torch.arange(num_negatives, device=valid.device)
    return frame[drawn[rank[pairs.target][:, None], cols]]


def future_logits(preds: Tensor, targets: Tensor, pairs: FuturePairs, negatives: Tensor,
                  same_utterance: bool = True) -> Tensor:
    """Dot-product scores ``h_k(c_t) · z`` of each pair's target and distractors.

    Args:
        preds: ``[B, T, K, C]`` the predictions ``h_k(c_t)`` of every frame for every step.
        targets: ``[B, T, C]`` the encoder outputs ``z``.
        pairs: ``P`` pairs; negatives: ``[P, N]`` frame numbers (:func:`sample_future_negatives`).
        same_utterance: every distractor lies in its pair's utterance (scope ``utterance``): the scores are
            then taken from per-utterance products ``[B, T·K, T]``, not from the whole batch's
            ``[B·T·K, B·T]``.
    Returns:
        ``[P, 1 + N]`` float32 scores, column 0 the positive. Computed in float32 (also under autocast).
    """
    b, t, steps, c = preds.shape
    if targets.shape != (b, t, c):
        raise ValueError(f"targets must be [{b}, {t}, {c}] to match preds {tuple(preds.shape)}, got {tuple(targets.shape)}")
    if negatives.dim() != 2 or negatives.shape[0] != len(pairs):
        raise ValueError(f"negatives must be [{len(pairs)}, N], got {tuple(negatives.shape)}")
    rows = (pairs.context * steps + pairs.step)[:, None]  # [P, 1] row of preds as [B·T·K, C]
    cols = torch.cat([pairs.target[:, None], negatives], dim=1)  # [P, 1 + N] frame numbers
    with torch.autocast(preds.device.type, enabled=False):
        p, z = preds.float(), targets.float()
        if same_utterance:
            if bool((cols // t != pairs.context[:, None] // t).any()):
                raise ValueError("same_utterance=True but some distractors come from another utterance")
            scores = torch.bmm(p.reshape(b, t * steps, c), z.transpose(1, 2))  # [B, T·K, T]
            return scores.reshape(b * t * steps, t)[rows, cols % t]
        scores = p.reshape(b * t * steps, c) @ z.reshape(b * t, c).t()  # [B·T·K, B·T]
        return scores[rows, cols]


def wav2vec_loss(logits: Tensor) -> Tensor:
    """wav2vec 1.0's binary cross-entropy per pair: ``−log σ(s₀) − Σ_j log σ(−s_j)`` (the paper's ``λ``
    times the expectation over ``N`` sampled distractors, ``λ = N``: weight 1 per distractor).

    ``logits [P, 1 + N]`` (column 0 the positive) -> ``[P]`` nats (``(1 + N) ln 2`` when every score is 0).
    """
    logits = logits.float()
    return F.softplus(-logits[:, 0]) + F.softplus(logits[:, 1:]).sum(1)


def positive_first(logits: Tensor) -> Tensor:
    """``[P]`` bool: the positive scores strictly above every distractor (a tie counts as wrong)."""
    return logits[:, 0] > logits[:, 1:].max(1).values


def chance_accuracy(negatives: Tensor) -> Tensor:
    """``[P]`` float: a random scorer's chance of ranking the positive first, ``1 / (1 + distinct
    distractor frames)`` — ``1/(N + 1)`` when the ``N`` draws differ, more where a short utterance repeats
    frames."""
    ordered = negatives.sort(1).values
    distinct = 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(1)
    return 1.0 / (1.0 + distinct.double())


__all__ = ["NEGATIVE_SCOPES", "FuturePairs", "chance_accuracy", "future_logits", "future_pairs",
           "positive_first", "sample_future_negatives", "wav2vec_loss"]
