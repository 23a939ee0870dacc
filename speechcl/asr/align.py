"""Forced alignment of a known transcript to CTC frame posteriors: word start/end times.

The transcript becomes letter targets as in the ``.ltr`` labels (``HI YO`` -> ``H I | Y O |``);
``torchaudio.functional.forced_align`` finds the best CTC path through them, and the frames of each
word's letters give its times: ``start = first_frame * frame_seconds``,
``end = (last_frame + 1) * frame_seconds`` (20 ms frames for wav2vec 2.0), so times are monotonic and
lie within the audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import Tensor

from speechcl.data.labels import WORD_SEPARATOR, Dictionary, normalize_transcript, words_to_letters


@dataclass(frozen=True)
class WordTiming:
    """One aligned word: times in seconds and the mean posterior of its letters' frames."""

    word: str
    start: float
    end: float
    score: float


def align_words(log_probs: Tensor, transcript: str, dictionary: Dictionary,
                frame_seconds: float = 0.02) -> list[WordTiming]:
    """Word times for ``transcript`` over ``log_probs [T, V]`` (log-softmax of the CTC logits).

    Raises:
        ValueError: the transcript uses symbols outside the dictionary, or is too long for ``T`` frames.
    """
    if log_probs.dim() != 2 or log_probs.shape[1] != len(dictionary):
        raise ValueError(f"expected log_probs of shape [frames, {len(dictionary)}], got {tuple(log_probs.shape)}")
    words = normalize_transcript(transcript).split()
    if not words:
        return []
    letters = words_to_letters(" ".join(words)).split()
    unknown = sorted({s for s in letters if s not in dictionary})
    if unknown:
        raise ValueError(f"transcript {transcript!r} uses symbols {unknown} that are not in the dictionary")
    targets = [dictionary.index(s) for s in letters]
    repeats = sum(a == b for a, b in zip(targets, targets[1:]))
    frames = log_probs.shape[0]
    if len(targets) + repeats > frames:
        raise ValueError(
            f"transcript needs at least {len(targets) + repeats} frames but the audio has {frames} "
            f"({frames * frame_seconds:.2f} s); is it the right transcript for this audio?"
        )
    emissions = log_probs.detach().float().cpu()[None]
    path, scores = AF.forced_align(emissions, torch.tensor([targets], dtype=torch.int32),
                                   blank=dictionary.blank_index)
    spans = AF.merge_tokens(path[0], scores[0].exp(), blank=dictionary.blank_index)
    if len(spans) != len(targets):  # cannot happen for a valid CTC path; guard the word grouping below
        raise RuntimeError(f"alignment produced {len(spans)} token spans for {len(targets)} targets")
    timings: list[WordTiming] = []
    current: list[AF.TokenSpan] = []
    for symbol, span in zip(letters, spans):
        if symbol != WORD_SEPARATOR:
            current.append(span)
            continue
        word = words[len(timings)]
        frames_total = sum(s.end - s.start for s in current)
        mean = sum(s.score * (s.end - s.start) for s in current) / frames_total
        timings.append(WordTiming(word, round(current[0].start * frame_seconds, 4),
                                  round(current[-1].end * frame_seconds, 4), float(mean)))
        current = []
    return timings
