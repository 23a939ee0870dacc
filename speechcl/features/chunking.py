"""Pure planning for feature extraction: overlapping chunks of long audio, and batches under a sample budget.

Frame geometry of the conv feature encoder (no padding): output frame ``t`` sees samples
``[t * hop, t * hop + receptive_field)`` and exists iff that window lies inside the input, so a file of
``L`` samples has ``T = conv_output_lengths(L)`` frames (BASE: hop 320, receptive field 400).

Chunking: windows of ``W`` frames (the most that fit in ``chunk_samples``) start every ``W - V`` frames,
where ``V`` is the overlap in frames; the last window is shifted left to end exactly at frame ``T`` so every
window has the same length. Each frame is taken from the window in which it lies farthest from an edge
(the overlap is split in half), and the kept ranges tile ``[0, T)`` exactly — the stitched output has the
whole-file frame count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from speechcl.models.config import ConvSpec
from speechcl.models.feature_encoder import conv_output_lengths


@dataclass(frozen=True)
class Chunk:
    """One window of a file fed to the model, and which of its frames go into the output.

    Attributes:
        start, end: the samples ``wave[start:end]`` fed to the model.
        keep_from, keep_to: the window's output frames ``[keep_from, keep_to)`` that are kept.
        frame_offset: index in the whole file's output of the first kept frame.
    """

    start: int
    end: int
    keep_from: int
    keep_to: int
    frame_offset: int

    @property
    def num_samples(self) -> int:
        return self.end - self.start


def conv_geometry(conv_layers: Sequence[ConvSpec]) -> tuple[int, int]:
    """``(hop, receptive_field)`` in samples of a conv stack (BASE: ``(320, 400)``)."""
    hop, field = 1, 1
    for _, kernel, stride in conv_layers:
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


def num_frames(num_samples: int, conv_layers: Sequence[ConvSpec]) -> int:
    """Frames for ``num_samples`` samples (the whole-file formula)."""
    return int(conv_output_lengths(torch.tensor([num_samples]), conv_layers)[0])


def plan_chunks(num_samples: int, conv_layers: Sequence[ConvSpec], chunk_samples: int | None = None,
                overlap_samples: int = 0) -> list[Chunk]:
    """Split a file of ``num_samples`` samples into overlapping windows (see the module docstring).

    Args:
        num_samples: file length in samples (at 16 kHz).
        conv_layers: the model's ``(dim, kernel, stride)`` feature-encoder layers.
        chunk_samples: longest window in samples; ``None`` or a file no longer than it: one window.
        overlap_samples: overlap of consecutive windows in samples (rounded to whole frames).

    Raises:
        ValueError: the file is shorter than the receptive field, or the overlap leaves no step.
    """
    hop, field = conv_geometry(conv_layers)
    total = num_frames(num_samples, conv_layers)
    if total <= 0:
        raise ValueError(f"audio of {num_samples} samples is shorter than the model's receptive field "
                         f"({field} samples at 16 kHz)")
    if chunk_samples is None or num_samples <= chunk_samples:
        return [Chunk(0, num_samples, 0, total, 0)]
    window = num_frames(chunk_samples, conv_layers)
    overlap = round(overlap_samples / hop)
    if window <= 0:
        raise ValueError(f"chunks of {chunk_samples} samples are shorter than the receptive field ({field})")
    if overlap < 0 or overlap >= window:
        raise ValueError(f"overlap of {overlap_samples} samples ({overlap} frames) must be >= 0 and shorter "
                         f"than a chunk ({window} frames)")
    if total <= window:
        return [Chunk(0, num_samples, 0, total, 0)]
    step = window - overlap
    count = -(-(total - window) // step) + 1  # ceil: the last window reaches frame T
    starts = [k * step for k in range(count - 1)] + [total - window]
    bounds = [0] + [k * step + overlap // 2 for k in range(1, count)] + [total]
    window_samples = (window - 1) * hop + field
    return [
        Chunk(start=s * hop, end=s * hop + window_samples, keep_from=bounds[k] - s, keep_to=bounds[k + 1] - s,
              frame_offset=bounds[k])
        for k, s in enumerate(starts)
    ]


def batch_by_budget(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into batches whose padded size ``len(batch) * max(length)`` stays ``<= max_tokens``.

    Longest first (ties by index), neighbours together so little is padded; an item longer than the budget
    forms a batch of its own.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in order:
        if batch:
            longest = lengths[batch[0]]
            if (len(batch) + 1) * longest > max_tokens:
                batches.append(batch)
                batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches
