"""Equivalences and invariants of the model on tiny configs."""

from __future__ import annotations

import pytest
import torch

import speechcl
from speechcl.models.config import preset
from speechcl.models.wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from speechcl.objectives import wav2vec2_loss


def test_batched_equals_one_by_one_layer_norm_model():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(preset("tiny", layer_norm_first=False)).eval()
    lengths = [16000, 12345, 7000, 3210]
    wavs = [torch.randn(n) for n in lengths]
    batch = torch.zeros(len(wavs), max(lengths))
    pad = torch.ones_like(batch, dtype=torch.bool)
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
        pad[i, : len(w)] = False
    batched = model.extract_features(batch, pad)
    for i, w in enumerate(wavs):
        single = model.extract_features(w[None])
        n = int(batched.lengths[i])
        assert n == single.hidden_states[0].shape[1]
        for a, b in zip(batched.hidden_states, single.hidden_states):
            assert float((a[i, :n] - b[0]).abs().max()) < 1e-5


def _loss(model, wav, seed=0):
    return wav2vec2_loss(model(wav, generator=torch.Generator().manual_seed(seed))).loss


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(preset("tiny", feature_grad_mult=0.1)).train()
    _loss(model, torch.randn(2, 16000)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


def test_feature_grad_mult_zero_freezes_encoder_and_scaling_is_exact():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(preset("tiny", feature_grad_mult=0.0)).train()
    _loss(model, torch.randn(2, 16000)).backward()
    for name, p in model.named_parameters():
        if name.startswith("encoder.feature_extractor."):
            assert p.grad is None, name
        else:
            assert p.grad is not None, name

    wav = torch.randn(2, 16000)
    grads = {}
    for mult in (1.0, 0.25):
        torch.manual_seed(1)
        m = Wav2Vec2ForPretraining(preset("tiny", feature_grad_mult=mult, dropout=0.0, dropout_input=0.0,
                                          dropout_features=0.0, attention_dropout=0.0)).train()
        _loss(m, wav, seed=3).backward()
        grads[mult] = m.encoder.feature_extractor.layers[0].conv.weight.grad.clone()
    assert torch.allclose(grads[0.25], 0.25 * grads[1.0], rtol=1e-4, atol=1e-8)


def test_temperature_annealing():
    model = Wav2Vec2ForPretraining(preset("tiny"))
    assert model.quantizer.temperature == 2.0
    model.set_num_updates(100_000)
    assert abs(model.quantizer.temperature - 2 * 0.999995**100_000) < 1e-9
    model.set_num_updates(10_000_000)
    assert model.quantizer.temperature == 0.5


def test_eval_quantizer_is_deterministic_and_training_is_stochastic():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(preset("tiny"))
    x = torch.randn(50, 32)
    model.eval()
    assert torch.equal(model.quantizer(x).codevectors, model.quantizer(x).codevectors)
    model.train()
    a = model.quantizer(x, generator=torch.Generator().manual_seed(0)).indices
    b = model.quantizer(x, generator=torch.Generator().manual_seed(1)).indices
    assert not torch.equal(a, b)


@pytest.mark.parametrize("kind", ["pretraining", "ctc"])
def test_checkpoint_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = Wav2Vec2ForPretraining(cfg) if kind == "pretraining" else Wav2Vec2ForCTC(cfg, vocab_size=32)
    speechcl.save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = speechcl.load_model(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    wav = torch.randn(1, 8000)
    a = model.eval().extract_features(wav).hidden_states[-1]
    b = loaded.extract_features(wav).hidden_states[-1]
    assert torch.equal(a, b)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        speechcl.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a speechcl checkpoint"):
        speechcl.load_model(tmp_path / "empty")
    speechcl.save_checkpoint(Wav2Vec2ForPretraining(preset("tiny")), tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        speechcl.load_model(tmp_path / "ck")


def test_ctc_forward_shapes_and_padding():
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny", mask_prob=0.65), vocab_size=30).train()
    wav = torch.randn(2, 16000)
    pad = torch.zeros_like(wav, dtype=torch.bool)
    pad[1, 9000:] = True
    logits, lengths = model(wav, pad, generator=torch.Generator().manual_seed(0))
    assert logits.shape == (2, 49, 30)
    assert lengths.tolist() == [49, 27]
