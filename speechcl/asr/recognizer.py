"""A CTC model with its dictionary and input convention: waveforms in, frame logits out.

Where the dictionary comes from (first that applies):

1. the checkpoint: a speechcl ``config.json`` with ``labels`` (all ``vocab_size`` symbols in index
   order, blank first), or a transformers directory's ``vocab.json``;
2. a ``dict.ltr.txt`` passed by the caller (``--dict``), or the one next to the manifest.

Either way the result is a :class:`speechcl.data.labels.Dictionary`: index 0 blank, 1 ``<pad>``,
2 ``</s>``, 3 ``<unk>``, then the symbols of ``dict.ltr.txt`` in file order; its size must equal the
model's output size. Whether inputs are normalised per utterance (zero mean, unit variance, as the
LV-60 models expect) comes from ``normalize`` in the checkpoint's ``config.json`` (transformers:
``do_normalize`` in ``preprocessor_config.json``) unless the caller says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from speechcl.audio.io import SAMPLE_RATE, AudioError, load_audio, normalize_wave, pad_batch
from speechcl.data.labels import SPECIAL_SYMBOLS, Dictionary
from speechcl.interop.loading import ModelMetadata, load_model_with_metadata, read_metadata
from speechcl.models.feature_encoder import conv_geometry, num_frames
from speechcl.models.wav2vec2 import Wav2Vec2ForCTC


def labels_to_dictionary(labels: Sequence[str], source: str) -> Dictionary:
    """A :class:`Dictionary` from a full label list (specials at 0-3, then the symbols).

    The four specials may be named as in speechcl (``<blank> <pad> </s> <unk>``), fairseq
    (``<s> <pad> </s> <unk>``) or transformers (``<pad> <s> </s> <unk>``): only their positions matter.
    """
    labels = list(labels)
    specials = labels[: len(SPECIAL_SYMBOLS)]
    if len(labels) <= len(SPECIAL_SYMBOLS) or not all(s.startswith("<") and s.endswith(">") for s in specials):
        raise ValueError(
            f"{source}: labels must start with the four special symbols (blank, pad, eos, unk) followed by the "
            f"letters, got {labels[:8]}"
        )
    return Dictionary(labels[len(SPECIAL_SYMBOLS):])


def checkpoint_dictionary(path: str | os.PathLike, metadata: ModelMetadata | None = None) -> Dictionary | None:
    """The dictionary a checkpoint carries (speechcl ``labels`` or transformers ``vocab.json``), if any.

    ``metadata`` (from :func:`~speechcl.interop.loading.read_metadata`) avoids reading the checkpoint again.
    """
    if metadata is None:
        metadata = read_metadata(path) if Path(path).is_dir() else ModelMetadata()
    return labels_to_dictionary(metadata.labels, str(path)) if metadata.labels else None


def checkpoint_normalize(path: str | os.PathLike) -> bool:
    """Whether a checkpoint expects per-utterance normalised input (False when it does not say)."""
    return read_metadata(path).normalize


def resolve_dictionary(model_path: str | os.PathLike, dict_path: str | os.PathLike | None,
                       vocab_size: int, metadata: ModelMetadata | None = None) -> Dictionary:
    """The checkpoint's dictionary, else ``dict_path``; checks it against the model's ``vocab_size``.

    Raises:
        ValueError: neither source exists, both exist and disagree, or the size does not match.
    """
    dictionary = checkpoint_dictionary(model_path, metadata)
    if dict_path is not None and Path(dict_path).is_file():
        given = Dictionary.load(dict_path)
        if dictionary is not None and given.symbols != dictionary.symbols:
            raise ValueError(
                f"{dict_path} does not match the labels stored with {model_path} "
                f"({given.symbols[4:12]}... vs {dictionary.symbols[4:12]}...); drop --dict to use the checkpoint's"
            )
        dictionary = dictionary or given
    if dictionary is None:
        where = f" and {dict_path} does not exist" if dict_path is not None else ""
        raise ValueError(
            f"{model_path} carries no labels{where}: pass --dict DIR/dict.ltr.txt (the fine-tuning dictionary)"
        )
    if len(dictionary) != vocab_size:
        raise ValueError(
            f"the dictionary has {len(dictionary)} symbols (4 specials + {len(dictionary) - 4} from "
            f"dict.ltr.txt) but the model outputs {vocab_size}; use the dictionary the model was fine-tuned with"
        )
    return dictionary


@dataclass
class Recognizer:
    """A CTC model ready for inference.

    Attributes:
        model: the model (kept in eval mode).
        dictionary: its output units.
        normalize: normalise each waveform to zero mean and unit variance before the model.
    """

    model: Wav2Vec2ForCTC
    dictionary: Dictionary
    normalize: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, Wav2Vec2ForCTC):
            raise ValueError(f"expected a CTC model (Wav2Vec2ForCTC), got {type(self.model).__name__}; "
                             "pretrained checkpoints must be fine-tuned before decoding")
        self.model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def frame_seconds(self) -> float:
        """Seconds between frames (the product of the conv strides at 16 kHz; 0.02 for wav2vec 2.0)."""
        return self.hop / SAMPLE_RATE

    @property
    def hop(self) -> int:
        """Samples between frames (320 for wav2vec 2.0)."""
        return conv_geometry(self.model.cfg.conv_layers)[0]

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees (400 for wav2vec 2.0): shorter audio gives no frame at all."""
        return conv_geometry(self.model.cfg.conv_layers)[1]

    def num_frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` at 16 kHz."""
        return num_frames(num_samples, self.model.cfg.conv_layers)

    def load(self, path: str | os.PathLike) -> Tensor:
        """A file as the model's input: mono float32 ``[samples]`` at 16 kHz (:func:`load_audio`).

        Raises:
            AudioError: the file cannot be decoded, holds NaN/Inf samples, or is too short for one frame
                (fewer samples than :attr:`receptive_field`); the message names the file.
        """
        wave, _ = load_audio(path)
        if self.num_frames(wave.shape[0]) < 1:
            raise AudioError(path, f"too short: {wave.shape[0]} samples at 16 kHz, the model needs at least "
                             f"{self.receptive_field} for one frame; remove the file or exclude it")
        return wave

    @torch.inference_mode()
    def forward(self, waves: Sequence[Tensor], normalized: bool = False) -> tuple[Tensor, Tensor]:
        """Logits ``[B, T, V]`` (float32, on CPU) and frames ``[B]`` for 1-D 16 kHz waveforms ``[S_i]``.

        The batch is zero-padded to its longest item with a padding mask. ``normalized``: the waveforms
        are already normalised (windows of a whole utterance normalised once), so ``normalize`` is skipped.
        """
        if not waves:
            raise ValueError("forward needs at least one waveform")
        rows = []
        for wave in waves:
            if wave.dim() != 1:
                raise ValueError(f"expected 1-D waveforms [samples], got shape {tuple(wave.shape)}")
            wave = wave.float()
            rows.append(normalize_wave(wave) if self.normalize and not normalized else wave)
        longest = max(w.shape[0] for w in rows)
        if self.num_frames(longest) < 1:
            raise ValueError(f"audio of {longest} samples is shorter than one frame of the model")
        batch, pad = pad_batch(rows)
        device = self.device
        logits, lengths = self.model(batch.to(device), pad.to(device) if bool(pad.any()) else None)
        return logits.float().cpu(), lengths.cpu()


def load_recognizer(model_path: str | os.PathLike, dict_path: str | os.PathLike | None = None,
                    fallback_dict: str | os.PathLike | None = None, normalize: bool | None = None,
                    device: str | torch.device = "cpu") -> Recognizer:
    """A :class:`Recognizer` for a CTC checkpoint (speechcl, transformers or fairseq).

    The dictionary is the checkpoint's own labels, else ``dict_path``, else ``fallback_dict`` (e.g. the
    ``dict.ltr.txt`` beside a manifest); only an explicit ``dict_path`` is checked against the
    checkpoint's labels, so a corpus's dictionary never overrides them. ``normalize`` defaults to what
    the checkpoint records.

    Raises:
        FileNotFoundError: the model or ``dict_path`` does not exist.
        ValueError: the checkpoint is not a CTC model, or the dictionary does not fit it.
    """
    if dict_path is not None and not Path(dict_path).is_file():
        raise FileNotFoundError(f"dictionary {dict_path} not found")
    if not Path(model_path).exists():
        raise FileNotFoundError(f"model path {model_path} does not exist")
    model, metadata = load_model_with_metadata(model_path)  # a fairseq .pt is read once
    model = model.to(device)
    if not isinstance(model, Wav2Vec2ForCTC):
        raise ValueError(f"{model_path} holds a {type(model).__name__}, not a CTC model: fine-tune it first")
    chosen = dict_path if dict_path is not None or metadata.labels else fallback_dict
    dictionary = resolve_dictionary(model_path, chosen, model.vocab_size, metadata)
    return Recognizer(model, dictionary, metadata.normalize if normalize is None else normalize)
