"""Span masking with fairseq's ``compute_mask_indices`` semantics, vectorised in torch.

Pure functions: the caller passes a ``torch.Generator`` (or ``None`` for the global RNG); everything runs
on the device of the inputs with no Python loop over frames or utterances.

fairseq semantics reproduced here, per utterance of ``L`` valid (unpadded) steps:
- number of spans ``n = max(min_masks, int(mask_prob * L / span + u))`` with ``u ~ U[0, 1)``;
- span starts drawn uniformly *without replacement* from ``[0, L - span)`` (so spans may overlap but every
  span ends inside the utterance); when fewer than ``n + 1`` starts exist, the start range is widened
  to ``n + 1`` positions as fairseq does, and steps beyond ``L`` are dropped;
- with ``require_same_masks`` every utterance keeps only ``min_b(masked_b)`` masked steps, chosen
  uniformly among its masked steps (so all utterances of a batch have the same masked count);
- padded steps are never masked.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


def compute_span_mask(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    *,
    lengths: Tensor | None = None,
    min_masks: int = 0,
    require_same_masks: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sample a span mask.

    Args:
        shape: ``(batch, steps)``.
        mask_prob: fairseq ``mask_prob`` (0.65 for pretraining): expected fraction of steps that *start* a
            span, times ``mask_length``; with overlaps ≈49% of steps end up masked at (0.65, 10).
        mask_length: span length in steps (10).
        lengths: ``[batch]`` valid steps per utterance; ``None`` means all ``steps`` are valid.
        min_masks: minimum number of spans per utterance (2 for pretraining).
        require_same_masks: equalise the masked count across the batch.
        generator: torch RNG to draw from (its device must match ``device``).
    Returns:
        ``[batch, steps]`` bool, True where masked.
    """
    batch, steps = shape
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must lie in [0, 1], got {mask_prob}")
    if device is None:
        device = lengths.device if lengths is not None else torch.device("cpu")
    device = torch.device(device)
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.int64, device=device)
    else:
        lengths = lengths.to(device=device, dtype=torch.int64)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape [{batch}], got {tuple(lengths.shape)}")
        if bool((lengths > steps).any()) or bool((lengths < 0).any()):
            raise ValueError(f"lengths must lie in [0, {steps}], got {lengths.tolist()}")
    if batch == 0 or steps == 0 or (mask_prob == 0.0 and min_masks == 0):
        return torch.zeros(shape, dtype=torch.bool, device=device)

    # Number of spans per utterance.
    u = _uniform((batch,), generator, device)
    num_spans = (mask_prob * lengths.double() / mask_length + u.double()).floor().to(torch.int64)
    num_spans = num_spans.clamp(min=min_masks)
    # fairseq: if L - span <= n, the start range becomes n + 1 (L - min_len with min_len = L - n - 1).
    start_range = torch.where(lengths - mask_length > num_spans, lengths - mask_length, num_spans + 1)
    start_range = torch.minimum(start_range, lengths)
    num_spans = torch.minimum(num_spans, start_range).clamp(min=0)

    # Starts without replacement: random keys over the admissible starts, take the n smallest.
    keys = _uniform((batch, steps), generator, device)
    positions = torch.arange(steps, device=device)
    keys = keys.masked_fill(positions[None, :] >= start_range[:, None], 2.0)
    max_spans = int(num_spans.max().item())
    if max_spans == 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    chosen = keys.topk(max_spans, dim=1, largest=False).indices  # [B, max_spans]
    keep = torch.arange(max_spans, device=device)[None, :] < num_spans[:, None]
    starts = torch.zeros(batch, steps + 1, dtype=torch.int32, device=device)
    starts.scatter_add_(1, chosen, keep.to(torch.int32))
    # A step is masked when a span started in (t - span, t]: a windowed count of starts.
    running = starts[:, :steps].cumsum(1)
    shifted = torch.zeros_like(running)
    if mask_length < steps:
        shifted[:, mask_length:] = running[:, :-mask_length]
    mask = (running - shifted) > 0
    mask &= positions[None, :] < lengths[:, None]

    if require_same_masks and batch > 1:
        mask = equalize_mask_counts(mask, generator=generator)
    return mask


def equalize_mask_counts(mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keep ``min_b count_b`` masked steps in each row, chosen uniformly among its masked steps.

    ``mask [B, T] bool`` → ``[B, T] bool`` with equal row sums.
    """
    counts = mask.sum(1)
    target = counts.min()
    keys = _uniform(tuple(mask.shape), generator, mask.device).masked_fill(~mask, 2.0)
    # rank of each step among its row's masked steps in random order
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(mask.shape[1], device=mask.device).expand_as(order))
    return mask & (rank < target)


def compute_channel_mask(
    batch: int,
    channels: int,
    mask_prob: float,
    mask_length: int,
    *,
    min_masks: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Channel (feature) masking for fine-tuning: ``[batch, channels]`` bool, one draw per utterance,
    applied to every time step (fairseq ``mask_channel_prob``/``mask_channel_length``)."""
    return compute_span_mask(
        (batch, channels), mask_prob, mask_length, min_masks=min_masks, require_same_masks=False,
        generator=generator, device=device,
    )
