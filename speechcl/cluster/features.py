"""Frame features to cluster, one row per encoder frame: MFCC+Δ+ΔΔ (HuBERT iteration 1) or a hidden layer of
a trained model (iteration 2).

Both produce, for a 16 kHz waveform of ``S`` samples, ``[frames(S), D]`` float32 with ``frames(S)`` the
encoder's conv formula (:func:`~speechcl.data.frame_labels.num_label_frames`; ``floor((S − 400) / 320) + 1``
for the wav2vec 2.0 stack), so every label lands on exactly one encoder frame:

- :class:`MfccFeatures`: Kaldi MFCCs (``torchaudio.compliance.kaldi.mfcc``, as fairseq's HuBERT
  ``dump_mfcc_feature.py``: 13 cepstra, no energy, 23 mel bins, Povey window, pre-emphasis 0.97, no dither)
  with Δ and ΔΔ (``torchaudio.functional.compute_deltas``, window 5): 39 dims. As in HuBERT (MFCC + deltas at
  10 ms, 100 Hz labels of which the 50 Hz model takes every second), the MFCCs and their deltas are computed
  at half the encoder's frame stride (160 samples = 10 ms for the 320-sample stack, so Δ spans ±20 ms) and
  every second frame is kept. The window is 25 ms (400 samples), without edge padding, so kept frame ``t``
  covers samples ``[320 t, 320 t + 400)``: encoder frame ``t``'s receptive field. Its count
  ``ceil((1 + (S − 400) // 160) / 2) = 1 + (S − 400) // 320`` then equals ``frames(S)``; for a conv stack
  whose receptive field is not 400 samples the counts can differ by a frame or two at the end, and the
  sequence is made to match by dropping trailing frames or repeating the last one (audio shorter than one
  window is zero-padded to one window first). An odd frame stride is used as the shift itself.
- :class:`ModelFeatures`: hidden state ``layer`` of any model :func:`speechcl.load_model` reads (index 0 =
  input to the first transformer layer, ``i`` = output of layer ``i``, as ``speechcl extract --layers``),
  through :class:`~speechcl.features.extractor.FeatureExtractor`. Its frame count must equal ``frames(S)`` of
  the frame formula the labels are for; a model with another frame rate is an error naming both counts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from speechcl.audio.io import SAMPLE_RATE
from speechcl.data.frame_labels import frame_geometry, num_label_frames

ConvSpec = Sequence[int]


class FrameFeatures(Protocol):
    """What the clustering driver needs of a feature source."""

    conv_layers: list[tuple[int, int, int]]  # the frame formula the labels follow

    def describe(self) -> dict[str, Any]: ...  # settings, recorded in <ext>.json (a changed one restarts)

    def __call__(self, waves: Sequence[Tensor], names: Sequence[str]) -> list[np.ndarray]: ...


def match_frames(features: np.ndarray, frames: int) -> np.ndarray:
    """``features [n, D]`` made ``[frames, D]``: trailing rows dropped, or the last row repeated."""
    n = features.shape[0]
    if n == frames:
        return features
    if n > frames:
        return features[:frames]
    if n == 0:
        raise ValueError(f"no feature frame to repeat for {frames} frames")
    return np.concatenate([features, np.repeat(features[-1:], frames - n, axis=0)])


class MfccFeatures:
    """MFCC + Δ + ΔΔ per encoder frame (see the module docstring).

    Args:
        conv_layers: the encoder's conv stack (model config ``conv_layers``): frame stride and count.
        num_ceps: cepstra (13, Kaldi and fairseq).
        window_ms: analysis window (25 ms).
        deltas: 2 = Δ and ΔΔ (39 dims), 1 = Δ only, 0 = none.
    """

    def __init__(self, conv_layers: Sequence[ConvSpec], num_ceps: int = 13, window_ms: float = 25.0,
                 deltas: int = 2) -> None:
        if num_ceps < 1 or window_ms <= 0 or deltas not in (0, 1, 2):
            raise ValueError(f"MFCC needs num_ceps >= 1, window_ms > 0 and deltas in 0..2, got {num_ceps}, "
                             f"{window_ms}, {deltas}")
        self.conv_layers = [(0, int(s[-2]), int(s[-1])) for s in conv_layers]
        self.stride = int(frame_geometry(conv_layers)["frame_stride"])
        self.step = 2 if self.stride % 2 == 0 else 1  # MFCC frames per encoder frame
        self.shift = self.stride // self.step  # MFCC (and delta) frame shift in samples: 160 for stride 320
        self.num_ceps = num_ceps
        self.window_ms = window_ms
        self.window = int(round(window_ms * SAMPLE_RATE / 1000))
        self.deltas = deltas

    @property
    def dim(self) -> int:
        return self.num_ceps * (1 + self.deltas)

    def describe(self) -> dict[str, Any]:
        return {"features": "mfcc", "num_ceps": self.num_ceps, "window_ms": self.window_ms,
                "shift_samples": self.shift, "frame_step": self.step, "deltas": self.deltas, "dim": self.dim,
                "implementation": "torchaudio.compliance.kaldi.mfcc (use_energy=False, dither=0, snip_edges) + "
                                  "torchaudio.functional.compute_deltas (win_length=5), both at shift_samples; "
                                  "every frame_step-th frame kept (HuBERT: 10 ms MFCC + deltas, 20 ms labels)",
                "frame_alignment": f"kept frame t covers samples [{self.stride} t, {self.stride} t + {self.window}); "
                                   "counts are made equal to the encoder's by dropping trailing frames or "
                                   "repeating the last one (none is needed when its receptive field is "
                                   f"{self.window} samples)"}

    def raw(self, wave: Tensor) -> np.ndarray:
        """``[n, dim]`` float32 for ``wave [S]`` (``S >= window``): MFCC + deltas at ``shift`` samples, every
        ``step``-th frame kept; ``n = ceil((1 + (S - window) // shift) / step)``, before :func:`match_frames`."""
        from torchaudio.compliance import kaldi
        from torchaudio.functional import compute_deltas

        mfcc = kaldi.mfcc(wave.float().reshape(1, -1), sample_frequency=SAMPLE_RATE, frame_length=self.window_ms,
                          frame_shift=1000.0 * self.shift / SAMPLE_RATE, num_ceps=self.num_ceps, use_energy=False,
                          dither=0.0, snip_edges=True)  # [n * step, num_ceps]
        parts = [mfcc.t()]
        for _ in range(self.deltas):
            parts.append(compute_deltas(parts[-1], win_length=5))  # at the fine shift, as HuBERT
        feats = torch.cat(parts, dim=0).t()[:: self.step]
        return feats.contiguous().numpy().astype(np.float32)

    def one(self, wave: Tensor) -> np.ndarray:
        """``[frames(S), dim]`` float32 for ``wave [S]`` at 16 kHz."""
        frames = int(num_label_frames([wave.numel()], self.conv_layers)[0])
        if frames == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        wave = wave.float().reshape(1, -1)
        if wave.shape[1] < self.window:
            wave = torch.nn.functional.pad(wave, (0, self.window - wave.shape[1]))
        return match_frames(self.raw(wave), frames)

    def __call__(self, waves: Sequence[Tensor], names: Sequence[str]) -> list[np.ndarray]:
        return [self.one(w) for w in waves]


class ModelFeatures:
    """Hidden state ``layer`` of a trained model per encoder frame (see the module docstring).

    Args:
        model_path: anything :func:`speechcl.load_model` reads.
        layer: hidden-state index (0 .. encoder layers).
        conv_layers: the frame formula the labels are for; ``None``: the model's own.
        device, max_tokens: where and in what batches the model runs.
        normalize: per-utterance normalisation; ``None``: what the checkpoint records.
    """

    def __init__(self, model_path: str | os.PathLike, layer: int, conv_layers: Sequence[ConvSpec] | None = None,
                 device: str | torch.device = "cpu", max_tokens: int = 960_000, normalize: bool | None = None) -> None:
        from speechcl.analysis.features_cache import model_fingerprint
        from speechcl.features.extractor import FeatureExtractor
        from speechcl.interop.loading import load_model_with_metadata

        model, meta = load_model_with_metadata(model_path)
        self.normalize = meta.normalize if normalize is None else bool(normalize)
        self.extractor = FeatureExtractor(model, [layer], device=device, max_tokens=max_tokens,
                                          normalize=self.normalize)
        self.layer = self.extractor.layers[0]
        self.model_path = str(Path(model_path).resolve())
        self.fingerprint = model_fingerprint(model_path)
        model_conv = [tuple(int(v) for v in s) for s in self.extractor.cfg.conv_layers]
        self.model_conv_layers = model_conv
        self.conv_layers = [(0, int(s[-2]), int(s[-1])) for s in (model_conv if conv_layers is None else conv_layers)]

    @property
    def dim(self) -> int:
        return self.extractor.dim

    def describe(self) -> dict[str, Any]:
        return {"features": "model", "model": self.model_path, "model_fingerprint": self.fingerprint,
                "layer": self.layer, "dim": self.dim, "normalize": self.normalize,
                "frame_alignment": "the model's own frames (their count is checked against the frame formula)"}

    def __call__(self, waves: Sequence[Tensor], names: Sequence[str]) -> list[np.ndarray]:
        feats = self.extractor.extract(list(waves))
        expected = num_label_frames([w.numel() for w in waves], self.conv_layers)
        out = []
        for f, n, name, wave in zip(feats, expected, names, waves, strict=True):
            if f.shape[0] != n:
                raise ValueError(
                    f"{self.model_path} makes {f.shape[0]} frames of {name} ({wave.numel()} samples) but the labels "
                    f"must have {int(n)} (frame stride {frame_geometry(self.conv_layers)['frame_stride']}, field "
                    f"{frame_geometry(self.conv_layers)['receptive_field']}): the model's frame rate differs from "
                    "the labels'; drop --frames-for or give the model the labels are for")
            out.append(f.numpy().astype(np.float32, copy=False))
        return out
