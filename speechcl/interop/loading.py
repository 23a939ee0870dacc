"""Load a model from any checkpoint format speechcl reads, together with what the checkpoint says besides
its weights.

:func:`detect_format` tells the formats apart and :func:`load_model` dispatches to their readers:

- ``"speechcl"``: a directory whose ``config.json`` has ``"format": "speechcl"``
  (:func:`speechcl.models.checkpoint.load_checkpoint`);
- ``"transformers"``: a directory whose ``config.json`` has ``"model_type": "wav2vec2"``, with
  ``model.safetensors``, ``pytorch_model.bin`` or a sharded index of either
  (:func:`speechcl.interop.transformers.load_hf_model`);
- ``"fairseq"``: a ``.pt`` file (:func:`speechcl.interop.fairseq.load_fairseq_checkpoint`).

:class:`ModelMetadata` holds the CTC ``labels`` (all output symbols in index order, the four specials
first: blank, pad, eos, unk) and ``normalize`` (whether the model expects per-utterance normalised audio).
They live in a speechcl ``config.json`` (``labels``, ``normalize``), in a transformers directory's
``vocab.json`` and ``preprocessor_config.json`` (``do_normalize``), and in a fairseq checkpoint's task
config (``normalize``) and, for a fine-tuned model saved by fairseq's trainer, its task state's target
dictionary (older files keep the labels only in a separate ``dict.ltr.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from speechcl.interop.fairseq import (
    fairseq_labels,
    fairseq_normalize,
    load_fairseq_checkpoint,
    model_from_fairseq,
    read_fairseq_checkpoint,
)
from speechcl.interop.transformers import load_hf_model, read_hf_labels, read_hf_normalize
from speechcl.models.checkpoint import (
    CONFIG_NAME,
    FORMAT,
    SpeechclModel,
    is_speechcl_directory,
    load_checkpoint,
    read_config,
)

CheckpointFormat = Literal["speechcl", "transformers", "fairseq"]


@dataclass
class ModelMetadata:
    """What a checkpoint says besides its weights (see the module docstring)."""

    labels: list[str] | None = None
    normalize: bool = False


def detect_format(path: str | Path) -> CheckpointFormat:
    """Which reader ``path`` needs.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a directory whose ``config.json`` is unreadable or belongs to neither format, or a
            file that is not a ``.pt``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if path.is_dir():
        config = read_config(path) if (path / CONFIG_NAME).is_file() else {}
        if config.get("format") == FORMAT:
            return "speechcl"
        if config.get("model_type") == "wav2vec2":
            return "transformers"
        found = f" (its config.json has model_type {config['model_type']!r})" if "model_type" in config else ""
        raise ValueError(
            f"{path} is neither a speechcl checkpoint (config.json with format 'speechcl') nor a transformers "
            f"Wav2Vec2 directory (config.json with model_type 'wav2vec2'){found}"
        )
    if path.suffix == ".pt":
        return "fairseq"
    raise ValueError(f"{path}: expected a checkpoint directory or a fairseq .pt file")


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SpeechclModel:
    """Load a model from a speechcl checkpoint directory, a transformers Wav2Vec2 model directory
    (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, whole or sharded) or a fairseq
    checkpoint (``.pt``).

    Returns, in eval mode on ``map_location``, a :class:`~speechcl.models.wav2vec2.Wav2Vec2ForPretraining`,
    a :class:`~speechcl.models.wav2vec2.Wav2Vec2ForCTC`, or — for a bare transformers ``Wav2Vec2Model`` or
    a fairseq model without a quantizer — a :class:`~speechcl.models.wav2vec2.Wav2Vec2Encoder`; all have
    ``extract_features``.
    """
    fmt = detect_format(path)
    if fmt == "speechcl":
        return load_checkpoint(path, map_location)
    if fmt == "transformers":
        return load_hf_model(Path(path), map_location)
    return load_fairseq_checkpoint(path, map_location)


def read_metadata(path: str | Path) -> ModelMetadata:
    """Labels and normalisation recorded in a speechcl dir, a transformers dir or a fairseq ``.pt``.

    A directory that is not a speechcl checkpoint is read the transformers way (``vocab.json``,
    ``preprocessor_config.json``, whichever it has); anything else records nothing.
    """
    path = Path(path)
    if path.is_dir():
        if is_speechcl_directory(path):
            return _speechcl_metadata(path)
        return ModelMetadata(read_hf_labels(path), read_hf_normalize(path))
    if path.suffix == ".pt":
        ckpt = read_fairseq_checkpoint(path)
        return ModelMetadata(fairseq_labels(ckpt), fairseq_normalize(ckpt))
    return ModelMetadata()


def load_model_with_metadata(path: str | Path, map_location: str | torch.device = "cpu"
                             ) -> tuple[SpeechclModel, ModelMetadata]:
    """:func:`load_model` plus :func:`read_metadata`, reading a fairseq file only once."""
    if detect_format(path) == "fairseq":
        ckpt = read_fairseq_checkpoint(path)
        model = model_from_fairseq(ckpt, str(path)).to(map_location)
        return model, ModelMetadata(fairseq_labels(ckpt), fairseq_normalize(ckpt))
    return load_model(path, map_location), read_metadata(path)


def _speechcl_metadata(directory: Path) -> ModelMetadata:
    meta = read_config(directory)
    labels, normalize = meta.get("labels"), meta.get("normalize", False)
    if labels is not None and not (isinstance(labels, list) and all(isinstance(s, str) for s in labels)):
        raise ValueError(f"{directory / CONFIG_NAME}: 'labels' must be a list of strings, got {labels!r}")
    if not isinstance(normalize, bool):
        raise ValueError(f"{directory / CONFIG_NAME}: 'normalize' must be true or false, got {normalize!r}")
    return ModelMetadata(labels, normalize)
