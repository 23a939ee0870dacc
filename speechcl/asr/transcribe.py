"""Transcribing audio files of any length: overlapping windows whose frame logits are stitched.

A long waveform is cut into windows of ``chunk_seconds`` that overlap by ``overlap_seconds``; window
starts are multiples of the frame hop (320 samples), so frame ``j`` of a window starting at sample
``o`` is exactly frame ``o / hop + j`` of the whole file as far as the convolutional encoder goes (its
frames only see their own 400 samples). Each window contributes the frames up to the middle of its
overlap with the next window, where both have the most context on either side. The stitched logits
have exactly as many frames as the whole file processed at once
(``floor((S - 400) / 320) + 1`` for the wav2vec 2.0 encoder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from speechcl.asr.decode import Decoder
from speechcl.asr.recognizer import Recognizer
from speechcl.audio.io import SAMPLE_RATE, load_audio


@dataclass(frozen=True)
class Window:
    """One window of a chunked waveform.

    Attributes:
        start: first sample (a multiple of the hop).
        end: one past the last sample.
        keep_from: first window frame that goes into the output.
        keep_to: one past the last window frame that goes into the output.
    """

    start: int
    end: int
    keep_from: int
    keep_to: int


def plan_windows(num_samples: int, chunk: int, overlap: int, hop: int,
                 num_frames: Callable[[int], int]) -> list[Window]:
    """Windows covering ``num_samples`` and the frames each keeps (a pure function of the sizes).

    Args:
        num_samples: waveform length.
        chunk: window length in samples.
        overlap: overlap between consecutive windows in samples; ``0 < overlap < chunk / 2``.
        hop: frame hop in samples; window starts are multiples of it.
        num_frames: ``samples -> frames`` of the model (e.g. :meth:`Recognizer.num_frames`).

    Returns:
        windows in order; their kept frames tile ``[0, num_frames(num_samples))`` without gap or overlap.
    """
    total = num_frames(num_samples)
    if num_samples <= chunk:
        return [Window(0, num_samples, 0, total)]
    if not 0 < overlap < chunk // 2:
        raise ValueError(f"overlap ({overlap} samples) must be positive and under half the chunk ({chunk})")
    step = (chunk - overlap) // hop * hop
    starts = list(range(0, num_samples - chunk, step))
    last = -(-(num_samples - chunk) // hop) * hop  # hop-aligned start of a final window ending at the end
    if last > starts[-1]:
        starts.append(last)
    windows: list[Window] = []
    kept = 0  # global frames emitted so far
    for i, start in enumerate(starts):
        end = min(start + chunk, num_samples)
        first = start // hop  # global index of this window's frame 0
        frames = num_frames(end - start)
        if i + 1 < len(starts):
            next_first = starts[i + 1] // hop
            stop = (next_first + first + frames) // 2  # middle of the overlapping frames
        else:
            stop = total
        if stop > first + frames or kept < first:
            raise ValueError(f"cannot tile {num_samples} samples with chunk {chunk} and overlap {overlap}: "
                             "make the overlap larger than a few frames")
        windows.append(Window(start, end, kept - first, stop - first))
        kept = stop
    return windows


@torch.inference_mode()
def chunked_logits(recognizer: Recognizer, wave: Tensor, chunk_seconds: float = 30.0,
                   overlap_seconds: float = 2.0) -> Tensor:
    """Frame logits ``[T, V]`` for a 1-D 16 kHz ``wave [S]``, windowed when longer than ``chunk_seconds``.

    ``T`` equals the frame count of the whole file processed in one pass.
    """
    if wave.dim() != 1:
        raise ValueError(f"expected a 1-D waveform [samples], got shape {tuple(wave.shape)}")
    hop = recognizer.hop
    chunk = max(int(chunk_seconds * SAMPLE_RATE) // hop * hop, 4 * hop)
    overlap = max(int(overlap_seconds * SAMPLE_RATE) // hop * hop, hop)
    pieces = []
    for window in plan_windows(wave.shape[0], chunk, overlap, hop, recognizer.num_frames):
        logits, _ = recognizer.forward([wave[window.start:window.end]])
        pieces.append(logits[0, window.keep_from:window.keep_to])
    return torch.cat(pieces, dim=0)


@dataclass
class Transcript:
    """A file's transcript and duration in seconds."""

    path: str
    text: str
    duration: float


def transcribe_files(recognizer: Recognizer, decoder: Decoder, paths: Sequence[str | os.PathLike],
                     chunk_seconds: float = 30.0, overlap_seconds: float = 2.0) -> list[Transcript]:
    """Load (mix down, resample to 16 kHz), run and decode each file."""
    out = []
    for path in paths:
        wave, _ = load_audio(path)
        logits = chunked_logits(recognizer, wave, chunk_seconds, overlap_seconds)
        text = decoder(logits[None], torch.tensor([logits.shape[0]]))[0]
        out.append(Transcript(str(path), text, wave.shape[0] / SAMPLE_RATE))
    return out
