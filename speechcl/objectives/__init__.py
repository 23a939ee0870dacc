"""Training objectives (contrastive wav2vec 2.0 loss and penalties)."""

from speechcl.objectives.contrastive import (
    ContrastiveLoss,
    contrastive_logits,
    sample_negatives,
    wav2vec2_loss,
)

__all__ = ["ContrastiveLoss", "contrastive_logits", "sample_negatives", "wav2vec2_loss"]
