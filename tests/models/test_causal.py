"""``causal=True``: frame t of the context network depends on frames <= t only (wav2vec 1.0 / CPC)."""

from __future__ import annotations

import torch

import speechcl
from speechcl.models.context import ContextNetwork


def _network() -> ContextNetwork:
    torch.manual_seed(0)
    return ContextNetwork(dim=16, ffn_dim=32, heads=2, layers=2, conv_pos=8, conv_pos_groups=2, dropout=0.0,
                          attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
                          layer_norm_first=False).eval()


def test_future_frames_do_not_reach_the_past() -> None:
    net = _network()
    x = torch.randn(2, 12, 16)
    later = x.clone()
    later[:, 7:] = torch.randn(2, 5, 16)
    y, _ = net(x, causal=True)
    z, _ = net(later, causal=True)
    torch.testing.assert_close(y[:, :7], z[:, :7], rtol=0, atol=1e-6)
    assert (y[:, 7:] - z[:, 7:]).abs().max() > 1e-3
    # without the flag the future leaks (what makes the test meaningful)
    assert (net(x)[0][:, :7] - net(later)[0][:, :7]).abs().max() > 1e-3


def test_causal_with_padding_matches_the_unpadded_row() -> None:
    net = _network()
    x = torch.randn(1, 9, 16)
    padded = torch.cat([x, torch.randn(1, 4, 16)], 1)
    mask = torch.zeros(1, 13, dtype=torch.bool)
    mask[:, 9:] = True
    alone, _ = net(x, causal=True)
    batch, _ = net(padded, mask, causal=True)
    torch.testing.assert_close(batch[:, :9], alone, rtol=0, atol=1e-6)


def test_causal_layer_norm_encoder_ignores_what_follows() -> None:
    """With the layer-norm feature encoder (per-frame statistics), a causal encoder's output for the start of
    an utterance does not depend on what follows it. (The group-norm encoder of the small/base presets
    normalises each channel over the whole utterance, so its statistics do see the future.)"""
    torch.manual_seed(0)
    encoder = speechcl.Wav2Vec2Encoder(speechcl.preset("tiny")).eval()
    wav = torch.randn(1, 8000)
    full = encoder(wav, causal=True).x
    cut = encoder(wav[:, :4000], causal=True).x
    frames = cut.shape[1]
    torch.testing.assert_close(full[:, :frames], cut[:, :frames], rtol=0, atol=1e-5)
