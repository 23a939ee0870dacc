"""Reading and writing audio: the one place that decodes files, mixes down channels and resamples.

Everything that turns a file into a waveform (datasets, corpus preparation, feature extraction,
transcription) goes through :func:`load_audio`, so a file gives the same samples everywhere:

- decoded with soundfile (FLAC, WAV, OGG and whatever libsndfile reads) as float32 in [-1, 1];
- multi-channel audio is mixed down to mono by averaging the channels;
- audio at another rate is resampled to ``target_sr`` with ``torchaudio.functional.resample``
  (its default windowed-sinc kernel); the result has ``ceil(frames * target_sr / sr)`` samples,
  which :func:`resampled_length` computes from the header alone.

Folders are searched for audio by :func:`find_audio_files` with the extensions of
:data:`AUDIO_EXTENSIONS`, so ``prepare audio`` and ``extract`` see the same files in the same folder;
:func:`normalize_wave` is the per-utterance normalisation of datasets, recognition and extraction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.nn import functional as F

SAMPLE_RATE = 16_000
"""The sample rate every model in speechcl consumes (wav2vec 2.0 is trained on 16 kHz audio)."""


AUDIO_EXTENSIONS: tuple[str, ...] = ("flac", "wav", "ogg", "mp3", "opus", "aiff", "aif", "sph")
"""File extensions (lower case, no dot) of the formats libsndfile decodes, which every verb that searches
a folder for audio looks for by default (:func:`find_audio_files`)."""


class AudioError(ValueError):
    """A file that cannot be used as audio: ``str(err)`` is ``"PATH: REASON"``; ``path`` and ``reason`` are
    kept apart for reports with a column of their own for each."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self) -> tuple:  # picklable across decoding worker processes
        return type(self), (self.path, self.reason)


def error_reason(err: BaseException) -> str:
    """What is wrong, without the file name: an :class:`AudioError`'s ``reason``, else the message."""
    return err.reason if isinstance(err, AudioError) else str(err)


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, from its header.

    Attributes:
        path: the file.
        sample_rate: its sample rate in Hz.
        num_channels: its channel count.
        num_frames: its length in frames (samples per channel) at ``sample_rate``.
        format: the container format soundfile reports, e.g. ``"FLAC"``.
    """

    path: str
    sample_rate: int
    num_channels: int
    num_frames: int
    format: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.sample_rate if self.sample_rate else 0.0

    def num_samples(self, target_sr: int = SAMPLE_RATE) -> int:
        """Length in samples of the mono waveform :func:`load_audio` returns at ``target_sr``."""
        return resampled_length(self.num_frames, self.sample_rate, target_sr)


def resampled_length(num_frames: int, orig_sr: int, target_sr: int) -> int:
    """Samples after resampling ``num_frames`` from ``orig_sr`` to ``target_sr`` (torchaudio's rule)."""
    if orig_sr == target_sr:
        return num_frames
    return math.ceil(num_frames * target_sr / orig_sr)


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read a file's header without decoding it.

    Raises:
        AudioError: the file is missing, empty or not a format soundfile can open.
    """
    path = str(path)
    try:
        if os.path.getsize(path) == 0:
            raise AudioError(path, "file is empty (0 bytes); re-create or remove it")
        info = sf.info(path)
    except AudioError:
        raise
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(path, f"cannot read audio header ({_short(err)}); re-create or remove the file") from err
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames), str(info.format))


def resample(wave: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Resample ``wave`` ``[..., samples]`` from ``orig_sr`` to ``target_sr`` (identity when equal)."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got orig_sr={orig_sr}, target_sr={target_sr}")
    if orig_sr == target_sr:
        return wave
    return AF.resample(wave, orig_sr, target_sr)


def normalize_wave(wave: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance over a whole utterance ``[samples]`` (fairseq ``normalize=True``, what
    LARGE LV-60 models expect); a constant waveform becomes zeros."""
    if wave.dim() != 1:
        raise ValueError(f"normalize_wave expects one utterance [samples], got shape {tuple(wave.shape)}")
    return F.layer_norm(wave, wave.shape)


def pad_batch(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms ``[S_i]`` as one zero-padded batch: ``(source [B, max S_i] float32, padding_mask
    [B, max S_i] bool, True at padding)``; an empty list gives ``[0, 0]`` tensors."""
    longest = max((int(w.shape[0]) for w in waves), default=0)
    source = torch.zeros(len(waves), longest, dtype=torch.float32)
    padding_mask = torch.ones(len(waves), longest, dtype=torch.bool)
    for row, wave in enumerate(waves):
        if wave.dim() != 1:
            raise ValueError(f"expected 1-D waveforms [samples], got shape {tuple(wave.shape)}")
        source[row, : wave.shape[0]] = wave
        padding_mask[row, : wave.shape[0]] = False
    return source, padding_mask


def find_audio_files(directory: str | os.PathLike,
                     extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Audio files below ``directory``, recursively, by extension (case-insensitive, with or without a dot).

    Hidden files and folders (names starting with ``.``) are skipped and folder links are followed. Files
    come in walk order: folders and names sorted, a folder's files before its subfolders' files.
    """
    wanted = {e.strip().lower().lstrip(".") for e in extensions if e.strip()}
    found = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / name for name in sorted(files)
                  if not name.startswith(".") and Path(name).suffix.lower().lstrip(".") in wanted]
    return found


def load_audio(path: str | os.PathLike, target_sr: int | None = SAMPLE_RATE) -> tuple[torch.Tensor, AudioInfo]:
    """Decode a file to a mono float32 waveform.

    Args:
        path: an audio file soundfile can read.
        target_sr: resample to this rate; ``None`` keeps the file's rate.

    Returns:
        ``(wave, info)``: ``wave`` is float32 ``[samples]`` with ``samples == info.num_samples(target_sr)``
        (channels averaged, resampled as described in the module docstring); ``info`` describes the
        file as stored.

    Raises:
        AudioError: the file is missing, empty, has no samples, cannot be decoded, or holds NaN or
            infinite samples.
    """
    info = audio_info(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(path, f"cannot decode audio ({_short(err)}); re-create or remove the file") from err
    if data.shape[0] == 0:
        raise AudioError(path, "audio has no samples; remove the file or exclude it from the manifest")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise AudioError(path, f"{bad} of {data.size} samples are NaN or infinite (a corrupt float file); "
                         "re-create or remove the file")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    wave = torch.from_numpy(np.ascontiguousarray(mono))
    if target_sr is not None:
        wave = resample(wave, int(sr), target_sr)
    # the decoded length is authoritative (a header can promise more frames than a truncated file holds)
    info = AudioInfo(info.path, int(sr), info.num_channels, int(data.shape[0]), info.format)
    return wave, info


def write_audio(path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int,
                subtype: str = "PCM_16") -> None:
    """Write a mono waveform ``[samples]`` (float in [-1, 1]) atomically; the format follows the suffix.

    The file is written under a temporary name in the same directory and renamed into place, so a
    reader never sees a half-written file.
    """
    path = Path(path)
    data = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if data.ndim != 1:
        raise ValueError(f"write_audio expects a mono waveform [samples], got shape {tuple(data.shape)} for {path}")
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        raise ValueError(f"{path}: unknown audio format {fmt!r}; use one of .flac, .wav, .ogg")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        sf.write(str(tmp), np.clip(data, -1.0, 1.0), sample_rate, subtype=subtype, format=fmt)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _short(err: BaseException) -> str:
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
