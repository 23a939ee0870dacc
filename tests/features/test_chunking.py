"""Chunk planning tiles every file's frames exactly; batches respect the sample budget."""

from __future__ import annotations

import pytest
import torch

import speechcl
from speechcl.data.batching import length_sorted_batches
from speechcl.features.chunking import plan_chunks
from speechcl.models.feature_encoder import conv_geometry, conv_output_lengths, num_frames

BASE = speechcl.preset("base").conv_layers


def test_geometry_and_whole_file_formula():
    assert conv_geometry(BASE) == (320, 400)
    assert num_frames(16000, BASE) == 49 and num_frames(160000, BASE) == 499


@pytest.mark.parametrize("chunk", [400, 4000, 16000, 50_000])
@pytest.mark.parametrize("overlap", [0, 320, 3200])
def test_chunks_tile_the_whole_file(chunk, overlap):
    for length in (400, 401, 719, 720, 16000, 33_333, 160_000, 161_111):
        if round(overlap / 320) >= num_frames(chunk, BASE):
            continue  # impossible pair: see test_short_audio_and_bad_overlap_are_rejected
        chunks = plan_chunks(length, BASE, chunk, overlap)
        total = int(conv_output_lengths(torch.tensor([length]), BASE)[0])
        covered = []
        for c in chunks:
            assert 0 <= c.start < c.end <= length
            frames = num_frames(c.num_samples, BASE)
            assert 0 <= c.keep_from < c.keep_to <= frames
            covered += range(c.frame_offset, c.frame_offset + c.keep_to - c.keep_from)
            # a kept frame sees the same samples in the chunk as in the whole file
            assert c.start == (c.frame_offset - c.keep_from) * 320
        assert covered == list(range(total))
        if len(chunks) > 1:
            assert len({c.num_samples for c in chunks}) == 1  # equal windows batch together


def test_short_audio_and_bad_overlap_are_rejected():
    with pytest.raises(ValueError, match="shorter than the model's receptive field"):
        plan_chunks(399, BASE)
    with pytest.raises(ValueError, match="overlap"):
        plan_chunks(100_000, BASE, 16000, 16000)


def test_batch_by_budget():
    lengths = [5, 9, 9, 3, 7, 9, 1, 20]
    batches = length_sorted_batches(lengths, 20, longest_first=True)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 20
    assert batches[0] == [7]  # longest first
    assert length_sorted_batches(lengths, 100, longest_first=True) == [[7, 1, 2, 5, 4], [0, 3, 6]]  # mixed
