"""Forced alignment: exact times on constructed posteriors; sane times on a real model."""

from __future__ import annotations

import pytest
import torch

from speechcl.asr.align import align_words
from speechcl.data.labels import Dictionary

from .conftest import noise


def test_word_times_follow_the_posteriors():
    d = Dictionary(list("|HIYO"))
    # frames:   0-1 blank, 2-3 H, 4 I, 5-6 |, 7 blank, 8 Y, 9-11 O, 12 |, 13-14 blank
    frames = [0, 0, "H", "H", "I", "|", "|", 0, "Y", "O", "O", "O", "|", 0, 0]
    probs = torch.full((len(frames), len(d)), 0.01)
    for t, s in enumerate(frames):
        probs[t, 0 if s == 0 else d.index(s)] = 0.95
    timings = align_words(probs.log().log_softmax(-1), "hi yo", d, frame_seconds=0.02)
    assert [t.word for t in timings] == ["HI", "YO"]
    assert (timings[0].start, timings[0].end) == pytest.approx((0.04, 0.10))
    assert (timings[1].start, timings[1].end) == pytest.approx((0.16, 0.24))
    assert all(0.5 < t.score <= 1.0 for t in timings)
    assert align_words(probs.log().log_softmax(-1), "  ", d) == []


def test_alignment_errors():
    d = Dictionary(list("|AB"))
    log_probs = torch.zeros(4, len(d)).log_softmax(-1)
    with pytest.raises(ValueError, match=r"symbols \['Z'\]"):
        align_words(log_probs, "AZ", d)
    with pytest.raises(ValueError, match="at least 8 frames"):
        align_words(log_probs, "AA BB", d)  # A A | B B | with two repeats
    with pytest.raises(ValueError, match="shape"):
        align_words(torch.zeros(4, 3), "A", d)


def test_real_model_times_are_monotonic_and_inside_the_audio(recognizer):
    wave = noise(32_000, seed=3)
    logits, _ = recognizer.forward([wave])
    words = "THE CAT SAT ON THE MAT"
    timings = align_words(logits[0].log_softmax(-1), words, recognizer.dictionary, recognizer.frame_seconds)
    assert [t.word for t in timings] == words.split()
    duration = wave.shape[0] / 16_000
    previous_end = 0.0
    for t in timings:
        assert previous_end <= t.start < t.end <= duration
        previous_end = t.end
