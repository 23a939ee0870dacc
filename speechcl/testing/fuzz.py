"""A folder of good, odd and broken audio files for fault-injection tests.

:func:`write_fuzzed_folder` writes the files below and returns ``{relative path: verdict}``. The verdict
is what a reader that decodes every file (``load_audio`` plus a length check, as ``prepare --verify``
does) concludes: ``"ok"`` for usable audio, otherwise a reason class.

==============================  ==============  ====================================================
file                            verdict         what it is
==============================  ==============  ====================================================
``empty.wav``                   ``empty``       0 bytes
``zero_length.wav``             ``no-samples``  a valid WAV header and 0 frames
``one_sample.wav``              ``too-short``   1 sample at 16 kHz
``ten_samples.flac``            ``too-short``   10 samples at 16 kHz
``truncated.flac``              ``undecodable`` a good FLAC cut to 60 % of its bytes: the header
                                                promises every frame, decoding loses sync
``random_bytes.flac``           ``unreadable``  random bytes: no header can be read
``text.wav``                    ``unreadable``  a UTF-8 text file named ``.wav``
``nan.wav``                     ``non-finite``  float32 speech-like audio with a few NaN samples
``inf.wav``                     ``non-finite``  float32 speech-like audio with a few +/-Inf samples
``six_channels.wav``            ``ok``          6 channels (mixed down on load)
``rate_8k.wav``                 ``ok``          8 kHz (resampled on load)
``rate_44k1.flac``              ``ok``          44.1 kHz
``rate_48k.wav``                ``ok``          48 kHz
``int32.wav``                   ``ok``          32-bit integer PCM
``float64.wav``                 ``ok``          64-bit float
``vorbis.ogg``                  ``ok``          Ogg/Vorbis
``caf é ünï.flac``              ``ok``          a name with spaces and non-ASCII letters
``good_0.flac``, ``good_1.wav`` ``ok``          speech-like 16 kHz files
``sub/good_2.flac``             ``ok``          the same, one folder down
``long.flac``                   ``ok``          only when ``long_minutes > 0``: that many minutes
==============================  ==============  ====================================================

``too-short`` means fewer than :data:`MIN_SAMPLES` samples at 16 kHz. The verdicts a header-only check
can already reach are :data:`HEADER_VERDICTS`; ``undecodable`` and ``non-finite`` need decoding.
Speech-like audio is a sum of a few sinusoids under a syllable-rate envelope plus noise, 1-3 s long,
peak below 0.9. The same ``seed`` writes the same bytes (Vorbis aside, whose encoder may differ between
libsndfile builds). Without the long file the folder takes well under a second to write.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

MIN_SAMPLES = 400
"""Shortest usable audio in samples at 16 kHz: the receptive field of a wav2vec 2.0 feature encoder."""

VERDICTS = ("ok", "empty", "no-samples", "too-short", "unreadable", "undecodable", "non-finite")
"""Every verdict :func:`write_fuzzed_folder` can return."""

HEADER_VERDICTS = frozenset({"empty", "no-samples", "too-short", "unreadable"})
"""Verdicts that the file's header (or its size) alone establishes."""

_SR = 16_000


def speech_like(num_samples: int, rng: np.random.Generator, sample_rate: int = _SR, channels: int = 1) -> np.ndarray:
    """Float32 ``[num_samples]`` (or ``[num_samples, channels]``) of harmonics under a 4 Hz envelope plus noise."""
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(100.0, 220.0)
    wave = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
               for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t) ** 2
    wave = wave * envelope + 0.05 * rng.standard_normal(num_samples)
    wave = 0.85 * wave / max(np.abs(wave).max(), 1e-9)
    if channels > 1:
        wave = np.stack([wave * rng.uniform(0.5, 1.0) for _ in range(channels)], axis=1)
    return wave.astype(np.float32)


def _seconds(rng: np.random.Generator) -> float:
    return float(rng.uniform(1.0, 3.0))


def write_fuzzed_folder(directory: str | os.PathLike, seed: int = 0, long_minutes: float = 0.0) -> dict[str, str]:
    """Write the fuzzed folder (see the module docstring) into ``directory`` (created).

    Args:
        directory: where to write; existing files of the same names are replaced.
        seed: seed of every generated waveform and of the random bytes.
        long_minutes: length of ``long.flac`` in minutes; ``0`` leaves it out.

    Returns:
        ``{path relative to directory, with "/" separators: verdict}`` for every file written.
    """
    root = Path(directory)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    verdicts: dict[str, str] = {}

    def audio(name: str, verdict: str, data: np.ndarray, sample_rate: int = _SR, **kwargs) -> None:
        sf.write(str(root / name), data, sample_rate, **kwargs)
        verdicts[name] = verdict

    def good(seconds: float, sample_rate: int = _SR, channels: int = 1) -> np.ndarray:
        return speech_like(round(seconds * sample_rate), rng, sample_rate, channels)

    (root / "empty.wav").write_bytes(b"")
    verdicts["empty.wav"] = "empty"
    audio("zero_length.wav", "no-samples", np.zeros(0, np.float32), subtype="PCM_16")
    audio("one_sample.wav", "too-short", np.full(1, 0.1, np.float32), subtype="PCM_16")
    audio("ten_samples.flac", "too-short", good(10 / _SR), subtype="PCM_16")

    audio("truncated.flac", "undecodable", good(2.0), subtype="PCM_16")
    full = (root / "truncated.flac").read_bytes()
    (root / "truncated.flac").write_bytes(full[: int(len(full) * 0.6)])
    (root / "random_bytes.flac").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    verdicts["random_bytes.flac"] = "unreadable"
    (root / "text.wav").write_text("This is not audio.\nIt is a text file with a .wav name.\n", encoding="utf-8")
    verdicts["text.wav"] = "unreadable"

    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        data = good(_seconds(rng))
        spots = rng.choice(len(data), size=5, replace=False)
        data[spots] = bad * np.where(np.arange(5) % 2 == 0, 1.0, -1.0).astype(np.float32)
        audio(name, "non-finite", data, subtype="FLOAT")

    audio("six_channels.wav", "ok", good(_seconds(rng), channels=6), subtype="PCM_16")
    audio("rate_8k.wav", "ok", good(_seconds(rng), 8_000), 8_000, subtype="PCM_16")
    audio("rate_44k1.flac", "ok", good(_seconds(rng), 44_100), 44_100, subtype="PCM_16")
    audio("rate_48k.wav", "ok", good(_seconds(rng), 48_000), 48_000, subtype="PCM_16")
    audio("int32.wav", "ok", good(_seconds(rng)), subtype="PCM_32")
    audio("float64.wav", "ok", good(_seconds(rng)).astype(np.float64), subtype="DOUBLE")
    audio("vorbis.ogg", "ok", good(_seconds(rng)), format="OGG", subtype="VORBIS")
    audio("caf é ünï.flac", "ok", good(_seconds(rng)), subtype="PCM_16")
    audio("good_0.flac", "ok", good(_seconds(rng)), subtype="PCM_16")
    audio("good_1.wav", "ok", good(_seconds(rng)), subtype="PCM_16")
    audio("sub/good_2.flac", "ok", good(_seconds(rng)), subtype="PCM_16")
    if long_minutes > 0:
        audio("long.flac", "ok", _long_wave(long_minutes * 60.0, rng), subtype="PCM_16")
    return verdicts


def _long_wave(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Speech-like audio of ``seconds``, built from 2 s pieces so memory stays small per piece."""
    total = round(seconds * _SR)
    piece = 2 * _SR
    return np.concatenate([speech_like(min(piece, total - start), rng) for start in range(0, total, piece)])
