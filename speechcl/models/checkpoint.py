"""speechcl checkpoint directories: ``config.json`` (full model config) + ``model.safetensors``.

``config.json`` holds ``{"format": "speechcl", "version": 1, "architecture": ..., "model": {...}}`` and,
for CTC models, ``vocab_size`` and optionally ``labels`` (the dictionary symbols, blank first).
Weights never go through pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from speechcl.models.config import Wav2Vec2Config
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from speechcl.utils.io import atomic_save, atomic_write_json

FORMAT = "speechcl"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

SpeechclModel = Wav2Vec2ForPretraining | Wav2Vec2ForCTC | Wav2Vec2Encoder


def architecture_of(model: nn.Module) -> str:
    for cls in (Wav2Vec2ForPretraining, Wav2Vec2ForCTC, Wav2Vec2Encoder):
        if isinstance(model, cls):
            return cls.__name__
    raise ValueError(f"cannot save a {type(model).__name__}; expected a speechcl wav2vec 2.0 model")


def build_model(architecture: str, cfg: Wav2Vec2Config, vocab_size: int | None = None) -> SpeechclModel:
    if architecture == "Wav2Vec2ForPretraining":
        return Wav2Vec2ForPretraining(cfg)
    if architecture == "Wav2Vec2ForCTC":
        if vocab_size is None:
            raise ValueError("a Wav2Vec2ForCTC checkpoint needs vocab_size in its config.json")
        return Wav2Vec2ForCTC(cfg, vocab_size)
    if architecture == "Wav2Vec2Encoder":
        return Wav2Vec2Encoder(cfg)
    raise ValueError(f"unknown architecture {architecture!r}")


def save_checkpoint(model: nn.Module, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each file atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg: Wav2Vec2Config = model.cfg  # type: ignore[assignment]
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "architecture": architecture_of(model),
                            "model": cfg.to_dict()}
    if isinstance(model, Wav2Vec2ForCTC):
        meta["vocab_size"] = model.vocab_size
    if extra:
        meta.update(extra)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    atomic_write_json(directory / CONFIG_NAME, meta)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a speechcl checkpoint directory") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint may be truncated") from None
    return data


def is_speechcl_directory(directory: str | Path) -> bool:
    try:
        return read_config(directory).get("format") == FORMAT
    except (FileNotFoundError, ValueError):
        return False


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> SpeechclModel:
    """Rebuild the model saved by :func:`save_checkpoint` (returned in eval mode)."""
    directory = Path(directory)
    meta = read_config(directory)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG_NAME} is not a speechcl checkpoint config")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{directory} was written by a newer speechcl (format version {meta['version']})")
    cfg = Wav2Vec2Config.from_dict(meta["model"])
    model = build_model(meta["architecture"], cfg, meta.get("vocab_size"))
    weights = directory / WEIGHTS_NAME
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found: the checkpoint directory is incomplete")
    state = load_file(str(weights), device=str(map_location))
    load_state_strict(model, state, str(weights))
    return model.eval()


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                      allow_missing: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` with an error that names the source and the mismatching keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(k.endswith(a) for a in allow_missing)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights in {source} do not fit the model: missing {missing[:6]}, unexpected {unexpected[:6]}, "
            f"shape mismatches {shapes[:6]}"
        )
    model.load_state_dict(state, strict=False)
