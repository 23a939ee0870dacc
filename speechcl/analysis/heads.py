"""Probe heads: per-layer standardisation, the SUPERB weighted sum of layers, and a linear or 2-layer classifier.

A head reads ``[..., L, D]``: the ``L`` hidden states it was built for (one for a single-layer probe, all
``L + 1`` of the model for the weighted sum), standardises each with the training split's per-layer mean
and standard deviation (so layers whose scales differ by orders of magnitude — the residual stream of a
pre-LN transformer grows with depth — are comparable and the mixing weights mean something), mixes them
with ``softmax(w)`` (s3prl's ``Featurizer``; with one layer the mix is that layer) and classifies.
A single-layer head therefore equals the weighted-sum head whose weights are one-hot on that layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerMix(nn.Module):
    """Softmax-weighted sum of hidden states (SUPERB): ``x [..., L, D]`` → ``[..., D]``.

    Args:
        num_layers: ``L``; the weights ``w`` start at zero (a uniform average).
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LayerMix needs at least one layer, got {num_layers}")
        self.logits = nn.Parameter(torch.zeros(num_layers), requires_grad=num_layers > 1)

    def weights(self) -> Tensor:
        """``[L]`` softmax of the weight logits (they sum to 1)."""
        return F.softmax(self.logits, dim=0)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-2] != self.logits.numel():
            raise ValueError(f"expected [..., {self.logits.numel()} layers, dim], got {tuple(x.shape)}")
        return torch.einsum("...ld,l->...d", x, self.weights().to(x.dtype))


class ProbeHead(nn.Module):
    """Standardise each layer, mix the layers, classify: ``x [..., L, D]`` → logits ``[..., C]``.

    Args:
        mean, std: ``[L, D]`` per-layer feature statistics of the training split.
        num_classes: ``C`` (for CTC: the letter dictionary's size, blank included).
        hidden: ``None`` for a linear classifier, else the width of a 2-layer MLP (Linear, ReLU, Linear).
    """

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int, hidden: int | None = None) -> None:
        super().__init__()
        if mean.dim() != 2 or mean.shape != std.shape:
            raise ValueError(f"mean and std must both be [layers, dim], got {tuple(mean.shape)} and {tuple(std.shape)}")
        if bool((std <= 0).any()):
            raise ValueError("std must be positive")
        layers, dim = mean.shape
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())
        self.mix = LayerMix(layers)
        if hidden is None:
            self.classifier: nn.Module = nn.Linear(dim, num_classes)
        else:
            self.classifier = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    @property
    def num_layers(self) -> int:
        return self.mean.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or tuple(x.shape[-2:]) != tuple(self.mean.shape):
            raise ValueError(f"expected [..., {self.mean.shape[0]} layers, {self.mean.shape[1]}], got {tuple(x.shape)}")
        return self.classifier(self.mix((x - self.mean) / self.std))
