"""Transcribing audio files of any length: overlapping windows whose frame logits are stitched.

A waveform longer than ``chunk_seconds`` is cut into windows that overlap by ``overlap_seconds``
(:func:`speechcl.features.chunking.plan_chunks`, the planner ``extract`` uses too). Window starts are
multiples of the frame hop (320 samples), so frame ``j`` of a window starting at sample ``o`` is exactly
frame ``o / hop + j`` of the whole file as far as the convolutional encoder goes (its frames only see
their own 400 samples). Each window contributes the frames up to the middle of its overlap with the
next window, where both have the most context on either side. The stitched logits have exactly as many
frames as the whole file processed at once (``floor((S - 400) / 320) + 1`` for the wav2vec 2.0 encoder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from speechcl.asr.decode import Decoder
from speechcl.asr.recognizer import Recognizer
from speechcl.audio.io import SAMPLE_RATE, normalize_wave
from speechcl.features.chunking import plan_chunks


@torch.inference_mode()
def chunked_logits(recognizer: Recognizer, wave: Tensor, chunk_seconds: float = 30.0,
                   overlap_seconds: float = 2.0) -> Tensor:
    """Frame logits ``[T, V]`` for a 1-D 16 kHz ``wave [S]``, windowed when longer than ``chunk_seconds``.

    ``T`` equals the frame count of the whole file processed in one pass. With ``recognizer.normalize``
    the whole waveform is normalised once before it is cut into windows.

    Raises:
        ValueError: ``wave`` is not 1-D or shorter than the model's receptive field, or the overlap is
            negative or not shorter than a window.
    """
    if wave.dim() != 1:
        raise ValueError(f"expected a 1-D waveform [samples], got shape {tuple(wave.shape)}")
    chunks = plan_chunks(wave.shape[0], recognizer.model.cfg.conv_layers, round(chunk_seconds * SAMPLE_RATE),
                         round(overlap_seconds * SAMPLE_RATE))
    if recognizer.normalize:  # over the whole utterance, as in training and extraction, not per window
        wave = normalize_wave(wave.float())
    pieces = []
    for chunk in chunks:
        logits, _ = recognizer.forward([wave[chunk.start:chunk.end]], normalized=True)
        pieces.append(logits[0, chunk.keep_from:chunk.keep_to])
    return torch.cat(pieces, dim=0)


@dataclass
class Transcript:
    """A file's transcript and duration in seconds."""

    path: str
    text: str
    duration: float


def transcribe_files(recognizer: Recognizer, decoder: Decoder, paths: Sequence[str | os.PathLike],
                     chunk_seconds: float = 30.0, overlap_seconds: float = 2.0) -> list[Transcript]:
    """Load (mix down, resample to 16 kHz), run and decode each file.

    Raises:
        AudioError: a file cannot be used (:meth:`Recognizer.load`: unreadable, NaN/Inf samples, shorter
            than one frame); the message names it.
    """
    out = []
    for path in paths:
        wave = recognizer.load(path)
        logits = chunked_logits(recognizer, wave, chunk_seconds, overlap_seconds)
        text = decoder(logits[None], torch.tensor([logits.shape[0]]))[0]
        out.append(Transcript(str(path), text, wave.shape[0] / SAMPLE_RATE))
    return out
