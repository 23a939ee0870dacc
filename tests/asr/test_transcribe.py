"""Chunked decoding of long audio: window plans tile the frames; stitched logits have the right length."""

from __future__ import annotations

import pytest
import torch

import speechcl
from speechcl.asr.transcribe import chunked_logits
from speechcl.features.chunking import plan_chunks

from .conftest import noise

BASE = speechcl.preset("base").conv_layers


def frames_of(n: int) -> int:
    return (n - 400) // 320 + 1  # the wav2vec 2.0 encoder's whole-file frame count


@pytest.mark.parametrize("num_samples", [1_000, 48_000, 48_001, 100_000, 160_000 + 123, 480_000 * 3 + 77])
def test_windows_tile_every_frame_exactly_once(num_samples):
    chunk, overlap, hop = 32_000, 3_200, 320
    windows = plan_chunks(num_samples, BASE, chunk, overlap)
    covered = []
    for w in windows:
        assert w.start % hop == 0 and w.end - w.start <= chunk and w.end <= num_samples
        assert 0 <= w.keep_from < w.keep_to <= frames_of(w.end - w.start)
        covered.extend(range(w.start // hop + w.keep_from, w.start // hop + w.keep_to))
    assert covered == list(range(frames_of(num_samples)))
    assert frames_of(windows[-1].end) == frames_of(num_samples)  # the last window reaches the last frame


def test_plan_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        plan_chunks(100_000, BASE, 32_000, 32_000)  # not shorter than a window


def test_chunked_logits_match_the_whole_file(recognizer):
    wave = noise(3 * 16_000 + 555, seed=1)
    whole, frames = recognizer.forward([wave])
    assert int(frames[0]) == frames_of(wave.shape[0])
    # one window when the file fits: identical to a single pass
    torch.testing.assert_close(chunked_logits(recognizer, wave, chunk_seconds=10), whole[0])
    # 1 s windows: same frame count, and frames far from window edges agree closely in argmax
    stitched = chunked_logits(recognizer, wave, chunk_seconds=1.0, overlap_seconds=0.3)
    assert stitched.shape == whole[0].shape
    agree = (stitched.argmax(-1) == whole[0].argmax(-1)).float().mean()
    assert agree > 0.5


def test_windows_of_a_normalized_model_see_the_whole_utterance_normalized(tiny_ctc, dictionary):
    from speechcl.asr.recognizer import Recognizer
    from speechcl.audio.io import normalize_wave

    wave = noise(3 * 16_000 + 555, seed=2) * torch.linspace(0.2, 3.0, 3 * 16_000 + 555)  # loudness changes
    normalizing = Recognizer(tiny_ctc, dictionary, normalize=True)
    plain = Recognizer(tiny_ctc, dictionary)
    expected = chunked_logits(plain, normalize_wave(wave), chunk_seconds=1.0, overlap_seconds=0.3)
    torch.testing.assert_close(chunked_logits(normalizing, wave, chunk_seconds=1.0, overlap_seconds=0.3), expected)
