from __future__ import annotations

import pytest
import torch

from speechcl.models.config import PRESETS, Wav2Vec2Config, preset
from speechcl.models.feature_encoder import FeatureEncoder, conv_output_lengths
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_base_parameter_count_is_exact():
    model = Wav2Vec2ForPretraining(preset("base"))
    assert n_params(model) == 95_044_608
    assert n_params(model.encoder) == 94_371_712


def test_large_lv60_parameter_count():
    model = Wav2Vec2ForPretraining(preset("large_lv60"))
    assert abs(n_params(model) - 317.4e6) < 0.1e6


@pytest.mark.parametrize("samples,frames", [(16000, 49), (160000, 499), (400, 1), (399, 0), (720, 2)])
def test_output_lengths(samples, frames):
    cfg = preset("base")
    assert int(conv_output_lengths(torch.tensor([samples]), cfg.conv_layers)[0]) == frames


def test_receptive_field_and_hop():
    enc = FeatureEncoder(preset("base").conv_layers)
    assert enc.receptive_field == 400
    assert enc.hop == 320
    assert enc(torch.randn(1, 16000)).shape == (1, 49, 512)


def test_encoder_rejects_bad_input():
    enc = FeatureEncoder(preset("tiny").conv_layers, "layer_norm")
    with pytest.raises(ValueError, match="receptive field"):
        enc(torch.randn(1, 100))
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        enc(torch.randn(16000))


def test_config_round_trip_and_validation():
    for name in PRESETS:
        cfg = preset(name)
        assert Wav2Vec2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        Wav2Vec2Config.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="divisible"):
        preset("tiny", encoder_attention_heads=5)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")
