"""Cutting long audio into overlapping chunks whose outputs stitch into the whole file's frames.

One planner for every verb that runs a model on audio of any length (``extract``, ``transcribe``,
``align``). Frame geometry of the conv feature encoder (no padding,
:func:`~speechcl.models.feature_encoder.conv_geometry`): output frame ``t`` sees samples
``[t * hop, t * hop + receptive_field)`` and exists iff that window lies inside the input, so a file of
``L`` samples has ``T = conv_output_lengths(L)`` frames (BASE: hop 320, receptive field 400).

Chunking: windows of ``W`` frames (the most that fit in ``chunk_samples``) start every ``W - V`` frames,
where ``V`` is the overlap in frames (``0 <= V < W``); the last window is shifted left to end exactly at
frame ``T`` so every window has the same length. A window starts at a multiple of the hop, so its frame
``j`` sees the same samples as frame ``start / hop + j`` of the whole file. Each frame is taken from the
window in which it lies farthest from an edge (the overlap is split in half), and the kept ranges tile
``[0, T)`` exactly: the stitched output has the whole-file frame count. The last window ends at the last
sample any frame sees, so up to ``hop - 1`` trailing samples that no frame covers are not fed to the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from speechcl.models.config import ConvSpec
from speechcl.models.feature_encoder import conv_geometry, num_frames


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


def plan_chunks(num_samples: int, conv_layers: Sequence[ConvSpec], chunk_samples: int | None = None,
                overlap_samples: int = 0) -> list[Chunk]:
    """Split a file of ``num_samples`` samples into overlapping windows (see the module docstring).

    Args:
        num_samples: file length in samples (at 16 kHz).
        conv_layers: the model's ``(dim, kernel, stride)`` feature-encoder layers.
        chunk_samples: longest window in samples; ``None`` or a file no longer than it: one window.
        overlap_samples: overlap of consecutive windows in samples, rounded to whole frames; at least 0
            and fewer frames than a window.

    Raises:
        ValueError: the file or a window is shorter than the receptive field, or the overlap is negative
            or not shorter than a window.
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
