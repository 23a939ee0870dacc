"""Contrastive Predictive Coding's InfoNCE loss (van den Oord et al. 2018; modified CPC, Rivière et al. 2020).

The same future-prediction pairs, distractors and dot-product scores ``W_k c_t · z`` as wav2vec 1.0
(:mod:`speechcl.objectives.wav2vec`, re-exported here), scored with a softmax over the positive and its
``N`` distractors instead of independent binary decisions.
"""

from __future__ import annotations

from torch import Tensor

from speechcl.objectives.wav2vec import (
    FuturePairs,
    chance_accuracy,
    future_logits,
    future_pairs,
    positive_first,
    sample_future_negatives,
)


def cpc_loss(logits: Tensor) -> Tensor:
    """InfoNCE per pair: ``−log(exp s₀ / Σ_{j=0..N} exp s_j)``, the cross-entropy of the positive (column 0).

    ``logits [P, 1 + N]`` -> ``[P]`` nats (``ln(N + 1)`` when every score is equal).
    """
    logits = logits.float()
    return logits.logsumexp(1) - logits[:, 0]


__all__ = ["FuturePairs", "chance_accuracy", "cpc_loss", "future_logits", "future_pairs", "positive_first",
           "sample_future_negatives"]
