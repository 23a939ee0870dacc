"""FeatureExtractor: layer selection, batched equals one-by-one, chunking keeps the whole-file frame count."""

from __future__ import annotations

import pytest
import torch

import speechcl
from speechcl.features import FeatureExtractor, parse_layers
from speechcl.models.feature_encoder import conv_output_lengths


def test_parse_layers():
    assert parse_layers("last", 12) == (None,)
    assert parse_layers("all", 2) == (0, 1, 2)
    assert parse_layers("6", 12) == (6,)
    assert parse_layers("0,6,12", 12) == (0, 6, 12)
    assert parse_layers("-1,last", 12) == (12, None)
    assert parse_layers([1, "last"], 2) == (1, None)
    for bad, message in (("13", "out of range"), ("1,1", "repeats"), ("x", "not an index"), ("", "not an index")):
        with pytest.raises(ValueError, match=message):
            parse_layers(bad, 12)


def waves(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.3 * torch.randn(n, generator=g) for n in lengths]


def test_layers_match_extract_features(tiny_model_dir):
    model = speechcl.load_model(tiny_model_dir)
    wave = waves([9000])[0]
    ref = model.extract_features(wave[None])
    last = FeatureExtractor(model)(wave)
    assert last.shape == (27, 64)
    assert torch.allclose(last, ref.last_hidden_state[0], atol=1e-6)
    several = FeatureExtractor(model, "0,1,last")(wave)
    assert several.shape == (3, 27, 64)
    assert torch.allclose(several[0], ref.hidden_states[0][0], atol=1e-6)
    assert torch.allclose(several[1], ref.hidden_states[1][0], atol=1e-6)  # layer 1 only: layer 2 skipped
    everything = FeatureExtractor(model, "all")(wave)
    assert everything.shape == (3, 27, 64)
    assert torch.allclose(everything[2], ref.hidden_states[2][0], atol=1e-6)
    # pre-LN: last_hidden_state is hidden_states[-1] after the final LayerNorm
    assert not torch.allclose(everything[2], last, atol=1e-3)
    assert len(model.encoder.encoder.layers) == 2  # truncation was undone


@pytest.mark.parametrize("which", ["layer_norm", "group_norm"])
def test_batched_equals_one_by_one(tiny_model_dir, groupnorm_model_dir, which):
    model = speechcl.load_model(tiny_model_dir if which == "layer_norm" else groupnorm_model_dir)
    inputs = waves([16000, 11000, 7321, 16000, 4000], seed=1)
    batched = FeatureExtractor(model, "all", max_tokens=10**6).extract(inputs)
    single = [FeatureExtractor(model, "all", max_tokens=1)(w) for w in inputs]
    for wave, a, b in zip(inputs, batched, single, strict=True):
        frames = int(conv_output_lengths(torch.tensor([wave.shape[0]]), model.cfg.conv_layers)[0])
        assert a.shape == b.shape == (3, frames, 64)
        assert float((a - b).abs().max()) <= 1e-5


def test_chunking_frame_counts_and_agreement(tiny_model_dir):
    model = speechcl.load_model(tiny_model_dir)
    wave = waves([40_000], seed=2)[0]
    whole = FeatureExtractor(model)(wave)
    chunked = FeatureExtractor(model, chunk_seconds=0.6, overlap_seconds=0.2)(wave)
    assert chunked.shape == whole.shape == (124, 64)
    # the convolutional features are exact in every chunk; the context differs at the chunk edges only
    first = FeatureExtractor(model, "0", chunk_seconds=0.6, overlap_seconds=0.2)(wave)
    assert first.shape == (124, 64)
    assert not torch.allclose(chunked, whole, atol=1e-3)
    assert FeatureExtractor(model, chunk_seconds=5.0)(wave).allclose(whole, atol=1e-6)  # longer than the file


def test_resampling_bf16_and_errors(tiny_model_dir, corpus):
    model = speechcl.load_model(tiny_model_dir)
    from_file = FeatureExtractor(model).extract_file(corpus / "b/four.wav")  # 48 kHz stereo, 0.81 s
    assert from_file.shape == (int(conv_output_lengths(torch.tensor([12960]), model.cfg.conv_layers)[0]), 64)
    wave8k = waves([4000], seed=3)[0]
    feats = FeatureExtractor(model)(wave8k, sample_rate=8000)
    assert feats.shape[0] == int(conv_output_lengths(torch.tensor([8000]), model.cfg.conv_layers)[0])
    bf16 = FeatureExtractor(model, dtype=torch.bfloat16)(waves([8000])[0])
    f32 = FeatureExtractor(model)(waves([8000])[0])
    assert bf16.dtype == torch.float32 and float((bf16 - f32).abs().max()) < 0.2
    with pytest.raises(ValueError, match="receptive field"):
        FeatureExtractor(model)(torch.zeros(300))
    with pytest.raises(ValueError, match="1-D"):
        FeatureExtractor(model).extract([torch.zeros(2, 800)])
    with pytest.raises(ValueError, match="overlap"):
        FeatureExtractor(model, chunk_seconds=1.0, overlap_seconds=1.0)
