"""WER/CER on known strings, including empty hypotheses and references."""

from __future__ import annotations

import math

import pytest

from speechcl.asr.score import score


def test_known_error_counts():
    s = score(["THE CAT SAT", "ON THE MAT"], ["THE BAT SAT", "ON MAT MAT TOO"])
    # utterance 1: 1 substitution; utterance 2: THE->MAT substitution + TOO inserted
    assert (s.words.substitutions, s.words.deletions, s.words.insertions) == (2, 0, 1)
    assert s.words.reference_length == 6
    assert s.wer == pytest.approx(3 / 6)
    assert s.chars.reference_length == len("THE CAT SAT") + len("ON THE MAT")
    assert 0 < s.cer < s.wer


def test_normalisation_and_empty_hypothesis():
    s = score(["hello  world"], [""])
    assert s.wer == 1.0 and s.words.deletions == 2
    assert s.cer == 1.0
    assert score(["Hello world "], ["HELLO WORLD"]).wer == 0.0


def test_empty_references():
    assert score([""], [""]).wer == 0.0
    s = score(["", "A B"], ["X", "A B"])
    assert s.words.insertions == 1 and s.wer == pytest.approx(0.5)
    assert math.isinf(score([""], ["X"]).wer)


def test_errors():
    with pytest.raises(ValueError, match="2 references but 1"):
        score(["A", "B"], ["A"])
    with pytest.raises(ValueError, match="nothing to score"):
        score([], [])
