"""A speechcl model as an s3prl upstream, so s3prl's own downstream tasks can run on it.

s3prl's upstream interface: ``forward`` takes a list of unpadded 1-D waveforms (16 kHz float tensors) and
returns a dict whose ``hidden_states`` is a list of padded ``[B, T, D]`` tensors (s3prl's ``Featurizer``
takes a weighted sum of them), and ``get_downsample_rates(key)`` gives the samples per output frame.
:class:`SpeechclUpstream` implements exactly that over any model :func:`speechcl.load_model` reads, with no
s3prl import: hand it to s3prl where an upstream is expected (e.g. ``Featurizer(SpeechclUpstream(path))``).

The waveforms are padded into one batch with a padding mask, so each row's valid frames are what the model
gives for that batch (and, for padding-invariant models, for the waveform alone); frames past a row's
length are zero. Gradients flow (s3prl can fine-tune an upstream); call ``.eval()`` for deterministic
features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor, nn

from speechcl.audio.io import normalize_wave, pad_batch
from speechcl.models.feature_encoder import conv_geometry
from speechcl.models.wav2vec2 import encoder_of


class SpeechclUpstream(nn.Module):
    """An s3prl-style upstream over a speechcl encoder (see the module docstring).

    Args:
        path_or_model: a checkpoint path :func:`speechcl.load_model` accepts, or a loaded speechcl model.
        normalize: zero-mean unit-variance per waveform before the model (``None``: what the checkpoint
            records for a path, off for a loaded model).
    """

    def __init__(self, path_or_model: str | os.PathLike | nn.Module, normalize: bool | None = None) -> None:
        super().__init__()
        if isinstance(path_or_model, nn.Module):
            model = path_or_model
        else:
            from speechcl.interop.loading import load_model_with_metadata

            model, meta = load_model_with_metadata(path_or_model)
            normalize = meta.normalize if normalize is None else normalize
        self.encoder = encoder_of(model)
        self.normalize = bool(normalize)
        self.hop = conv_geometry(self.encoder.cfg.conv_layers)[0]

    @property
    def num_layers(self) -> int:
        """Transformer layers ``L``: ``hidden_states`` holds ``L + 1`` tensors."""
        return self.encoder.cfg.encoder_layers

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Samples per output frame, for every key (320 for wav2vec 2.0's feature encoder)."""
        return self.hop

    def forward(self, wavs: Sequence[Tensor]) -> dict[str, Tensor | list[Tensor]]:
        """``wavs``: ``B`` 1-D waveforms at 16 kHz (any lengths).

        Returns:
            ``hidden_states``: ``L + 1`` tensors ``[B, T, D]`` (transformers' ``output_hidden_states`` order:
            0 = input to the first transformer layer); ``last_hidden_state``: ``[B, T, D]``, the encoder
            output. Frames at and after a row's valid length are zero.
        """
        if len(wavs) == 0:
            raise ValueError("SpeechclUpstream needs at least one waveform")
        waves = []
        for i, wave in enumerate(wavs):
            if wave.dim() != 1:
                raise ValueError(f"waveform {i} must be 1-D [samples] at 16 kHz, got shape {tuple(wave.shape)}")
            wave = wave.float()
            waves.append(normalize_wave(wave) if self.normalize else wave)
        device = self.encoder.mask_emb.device
        batch, padding = pad_batch([w.to(device) for w in waves])
        mask = padding.to(device) if bool(padding.any()) else None
        out = self.encoder(batch.to(device), mask, return_hidden=True)

        def valid(x: Tensor) -> Tensor:
            return x if out.padding_mask is None else x.masked_fill(out.padding_mask[..., None], 0.0)

        return {"hidden_states": [valid(h) for h in out.hidden_states], "last_hidden_state": valid(out.x)}
