"""The s3prl upstream wrapper: hidden states of a list of waveforms = extract_features of the padded batch."""

from __future__ import annotations

import pytest
import torch

import speechcl
from speechcl.analysis.s3prl import SpeechclUpstream
from speechcl.audio.io import normalize_wave, pad_batch

LENGTHS = (16000, 9137, 4321)


@pytest.fixture(scope="module")
def groupnorm_model():
    """Group-norm extractor, post-LN: its output depends on padding unless the mask is honoured."""
    torch.manual_seed(3)
    cfg = speechcl.preset("tiny", extractor_mode="group_norm", conv_bias=False, layer_norm_first=False)
    return speechcl.Wav2Vec2ForPretraining(cfg).eval()


def _waves(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.3 * torch.randn(n, generator=g) for n in LENGTHS]


def test_hidden_states_equal_extract_features_of_padded_batch(groupnorm_model, one_thread):
    upstream = SpeechclUpstream(groupnorm_model).eval()
    waves = _waves()
    with torch.no_grad():
        out = upstream(waves)
    batch, padding = pad_batch(waves)
    ref = groupnorm_model.encoder.extract_features(batch, padding)
    hidden = out["hidden_states"]
    assert len(hidden) == groupnorm_model.cfg.encoder_layers + 1
    lengths = ref.lengths.tolist()
    for mine, theirs in zip(hidden, ref.hidden_states):
        assert mine.shape == theirs.shape
        for b, n in enumerate(lengths):
            torch.testing.assert_close(mine[b, :n], theirs[b, :n], rtol=0, atol=1e-6)
            assert bool((mine[b, n:] == 0).all())  # padded frames are zero
    torch.testing.assert_close(out["last_hidden_state"][0], ref.last_hidden_state[0], rtol=0, atol=1e-6)
    # padding-aware: each row's valid frames are (to float rounding) what the waveform gives alone
    for b, wave in enumerate(waves):
        alone = groupnorm_model.encoder.extract_features(wave[None]).hidden_states[-1][0]
        torch.testing.assert_close(hidden[-1][b, : lengths[b]], alone, rtol=1e-4, atol=1e-4)


def test_downsample_rate_path_loading_and_normalize(groupnorm_model, tmp_path, one_thread):
    speechcl.save_checkpoint(groupnorm_model, tmp_path / "m", extra={"normalize": True})
    upstream = SpeechclUpstream(tmp_path / "m").eval()
    assert upstream.get_downsample_rates("hidden_states") == 320 == upstream.get_downsample_rates("x")
    assert upstream.normalize
    waves = _waves(1)[:1]
    with torch.no_grad():
        out = upstream(waves)["hidden_states"][-1]
    ref = groupnorm_model.encoder.extract_features(normalize_wave(waves[0])[None]).hidden_states[-1]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_gradients_flow_and_bad_input(groupnorm_model):
    upstream = SpeechclUpstream(groupnorm_model)
    out = upstream([torch.randn(2000)])
    out["hidden_states"][-1].sum().backward()
    assert groupnorm_model.encoder.post_extract_proj.weight.grad is not None
    groupnorm_model.zero_grad(set_to_none=True)
    groupnorm_model.eval()
    with pytest.raises(ValueError, match="1-D"):
        upstream([torch.randn(2, 2000)])
