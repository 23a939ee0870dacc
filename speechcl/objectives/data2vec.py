"""data2vec's targets and regression loss (Baevski et al. 2022, "data2vec: a general framework for self-supervised
learning in speech, vision and language", §3.3; fairseq ``examples/data2vec/models/data2vec_audio.py``).

Pure functions of tensors:

- :func:`instance_norm`: each utterance's frames normalised per channel over its valid (unpadded) time steps
  (fairseq's ``F.instance_norm`` over ``[B, C, T]``, which counts padded frames too; here they are left out, so
  a padded utterance gets the targets it would get alone);
- :func:`data2vec_targets`: the average of the top ``K`` teacher layers, each instance-normalised first;
- :func:`regression_loss`: L2 (``beta = 0``, the released speech recipe) or smooth L1 (``beta > 0``, the paper's
  §3.3 form) per frame summed over channels, scaled by ``1/√D``, summed over the frames;
- :func:`channel_std`: fairseq's ``compute_var`` (logged as ``target_var`` / ``pred_var``, and compared with its
  ``min_target_var`` 0.1 / ``min_pred_var`` 0.01): despite the name the mean over channels of the standard
  deviation over frames, ``mean_d sqrt(var_n(y[n, d]) + 1e-6)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def instance_norm(x: Tensor, padding_mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``x [B, T, D]`` with every ``(utterance, channel)`` normalised to zero mean and unit variance over its
    valid frames: ``(x − μ) / sqrt(σ² + eps)`` with the biased variance (as ``F.instance_norm``).

    ``padding_mask [B, T]`` (True = padded) excludes frames from the statistics; they come out as 0.
    Computed in float32."""
    if x.dim() != 3:
        raise ValueError(f"instance_norm needs x of shape [batch, frames, dim], got {tuple(x.shape)}")
    x = x.float()
    if padding_mask is None:
        keep = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    else:
        if padding_mask.shape != x.shape[:2]:
            raise ValueError(f"padding_mask must be [{x.shape[0]}, {x.shape[1]}], got {tuple(padding_mask.shape)}")
        keep = (~padding_mask).to(x.dtype)
    keep = keep[..., None]  # [B, T, 1]
    count = keep.sum(1, keepdim=True).clamp(min=1.0)  # [B, 1, 1]
    mean = (x * keep).sum(1, keepdim=True) / count
    var = ((x - mean).pow(2) * keep).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * keep


def data2vec_targets(layers: Sequence[Tensor], padding_mask: Tensor | None = None,
                     normalize: bool = True) -> Tensor:
    """``[B, T, D]`` float32: the mean of the ``K`` teacher layer outputs ``layers`` (each ``[B, T, D]``), each
    passed through :func:`instance_norm` first when ``normalize`` (fairseq ``instance_norm_target_layer``)."""
    if not layers:
        raise ValueError("data2vec_targets needs at least one teacher layer, got none")
    shape = layers[0].shape
    if any(layer.shape != shape for layer in layers):
        raise ValueError(f"teacher layers must share one shape, got {[tuple(layer.shape) for layer in layers]}")
    parts = [instance_norm(layer, padding_mask) if normalize else layer.float() for layer in layers]
    return torch.stack(parts).mean(0)


def regression_loss(pred: Tensor, target: Tensor, beta: float = 0.0, scale: float | None = None) -> Tensor:
    """``Σ_n scale · Σ_d ℓ(pred[n, d] − target[n, d])`` over ``N`` frames (a scalar, float32).

    Args:
        pred: ``[N, D]`` the student's regression head at the masked frames.
        target: ``[N, D]`` the teacher's targets there (no gradient flows into them).
        beta: 0 for the squared error (fairseq ``loss_beta: 0``, the speech recipe); ``> 0`` for smooth L1 with
            that transition point (the paper's §3.3 form).
        scale: per-frame factor; ``None`` is fairseq's ``1/√D`` (``loss_scale: null``).
    """
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(f"data2vec's predictions and targets must both be [N, D], got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if beta < 0:
        raise ValueError(f"the smooth-L1 beta must be >= 0 (0: squared error), got {beta}")
    pred, target = pred.float(), target.detach().float()
    if beta == 0:
        per_frame = F.mse_loss(pred, target, reduction="none").sum(-1)
    else:
        per_frame = F.smooth_l1_loss(pred, target, reduction="none", beta=beta).sum(-1)
    factor = 1.0 / math.sqrt(pred.shape[-1]) if scale is None else scale
    return per_frame.sum() * factor


@torch.no_grad()
def channel_std(y: Tensor) -> float:
    """fairseq's ``compute_var`` of ``y [N, D]`` (one process): ``mean_d sqrt(var_n(y[:, d]) + 1e-6)`` with the
    unbiased variance; ``nan`` for fewer than two rows."""
    y = y.reshape(-1, y.shape[-1]).float()
    if y.shape[0] < 2:
        return float("nan")
    return float(torch.sqrt(y.var(dim=0) + 1e-6).mean())
