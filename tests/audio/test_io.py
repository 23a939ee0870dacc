import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from speechcl.audio import (
    AudioError,
    audio_info,
    load_audio,
    normalize_wave,
    resample,
    resampled_length,
    write_audio,
)


def _tone(sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def test_load_16k_mono_is_exact(tmp_path):
    data = _tone(16000, 0.5)[:, 0]
    sf.write(tmp_path / "a.flac", data, 16000, subtype="PCM_16")
    wave, info = load_audio(tmp_path / "a.flac")
    assert wave.dtype == torch.float32 and wave.shape == (8000,)
    assert info.sample_rate == 16000 and info.num_channels == 1 and info.num_frames == 8000
    np.testing.assert_allclose(wave.numpy(), sf.read(tmp_path / "a.flac", dtype="float32")[0])


def test_stereo_44k_is_mixed_down_and_resampled(tmp_path):
    data = _tone(44100, 1.3, channels=2)
    sf.write(tmp_path / "s.wav", data, 44100)
    info = audio_info(tmp_path / "s.wav")
    assert (info.sample_rate, info.num_channels, info.num_frames) == (44100, 2, data.shape[0])
    wave, _ = load_audio(tmp_path / "s.wav")
    assert wave.numel() == info.num_samples(16000) == math.ceil(data.shape[0] * 16000 / 44100)
    expected = AF.resample(torch.from_numpy(data.mean(axis=1)), 44100, 16000)
    torch.testing.assert_close(wave, expected, atol=1e-4, rtol=0)


def test_keep_native_rate(tmp_path):
    sf.write(tmp_path / "n.wav", _tone(8000, 0.25), 8000)
    wave, info = load_audio(tmp_path / "n.wav", target_sr=None)
    assert wave.numel() == 2000 and info.sample_rate == 8000


@pytest.mark.parametrize("n", [1, 2, 441, 12345, 22050])
def test_resampled_length_matches_torchaudio(n):
    for orig in (8000, 22050, 44100, 48000):
        assert resample(torch.zeros(n), orig, 16000).shape[-1] == resampled_length(n, orig, 16000)


def test_bad_files_raise_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(os.urandom(4000))
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), 16000)
    sf.write(tmp_path / "full.flac", _tone(16000, 2.0)[:, 0], 16000)
    data = (tmp_path / "full.flac").read_bytes()
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(data[: len(data) // 3])
    wave = _tone(16000, 1.0)[:, 0].astype(np.float32)
    nan, inf = tmp_path / "nan.wav", tmp_path / "inf.wav"
    sf.write(nan, np.where(np.arange(wave.size) % 97 == 0, np.nan, wave), 16000, subtype="FLOAT")
    sf.write(inf, np.where(np.arange(wave.size) == 5, np.inf, wave), 16000, subtype="DOUBLE")
    for path, words in ((nan, "NaN or infinite"), (inf, "1 of 16000 samples are NaN or infinite"),
                        (corrupt, "cannot read"), (empty, "empty"), (zero, "no samples"),
                        (truncated, "cannot decode"), (tmp_path / "missing.wav", "cannot read")):
        with pytest.raises(AudioError, match=words) as err:
            load_audio(path)
        assert str(path) in str(err.value)
        assert isinstance(err.value, ValueError)


def test_write_audio_roundtrip_and_atomic(tmp_path):
    wave = torch.from_numpy(_tone(16000, 0.2)[:, 0])
    write_audio(tmp_path / "w.flac", wave, 16000)
    assert sorted(os.listdir(tmp_path)) == ["w.flac"]  # no temporary file left behind
    back, info = load_audio(tmp_path / "w.flac")
    assert info.format == "FLAC"
    torch.testing.assert_close(back, wave, atol=1 / 32768, rtol=0)
    with pytest.raises(ValueError, match="mono"):
        write_audio(tmp_path / "x.flac", torch.zeros(2, 10), 16000)


def test_normalize_wave_is_zero_mean_unit_variance():
    wave = 0.2 * torch.randn(5000, generator=torch.Generator().manual_seed(0)) + 0.3
    out = normalize_wave(wave)
    assert abs(float(out.mean())) < 1e-6 and abs(float(out.var(unbiased=False)) - 1) < 1e-3  # eps 1e-5
    assert torch.equal(normalize_wave(torch.full((100,), 0.5)), torch.zeros(100))  # silence stays finite
    with pytest.raises(ValueError, match="one utterance"):
        normalize_wave(wave.view(5, 1000))


def test_pad_batch_pads_with_zeros_and_marks_padding():
    from speechcl.audio.io import pad_batch

    waves = [torch.arange(1.0, 4.0), torch.arange(1.0, 6.0), torch.ones(0)]
    source, mask = pad_batch(waves)
    assert source.shape == mask.shape == (3, 5) and source.dtype == torch.float32
    assert source[0].tolist() == [1, 2, 3, 0, 0] and mask[0].tolist() == [False] * 3 + [True] * 2
    assert not mask[1].any() and mask[2].all()
    assert pad_batch([])[0].shape == (0, 0)
    with pytest.raises(ValueError, match="1-D"):
        pad_batch([torch.zeros(2, 3)])
