"""Public Python API: :func:`load_model`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from speechcl.interop.transformers import config_from_hf, hf_to_speechcl_state, is_hf_directory, load_hf_state
from speechcl.models.checkpoint import (
    SpeechclModel,
    is_speechcl_directory,
    load_checkpoint,
    load_state_strict,
)
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForCTC, Wav2Vec2ForPretraining


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SpeechclModel:
    """Load a model from a speechcl checkpoint directory, a transformers Wav2Vec2 model directory
    (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) or a fairseq checkpoint (``.pt``).

    Returns, in eval mode, a :class:`Wav2Vec2ForPretraining`, a :class:`Wav2Vec2ForCTC`, or — for a bare
    transformers ``Wav2Vec2Model`` — a :class:`Wav2Vec2Encoder`; all have ``extract_features``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if path.is_dir():
        if is_speechcl_directory(path):
            return load_checkpoint(path, map_location)
        if is_hf_directory(path):
            return _load_hf(path, map_location)
        raise ValueError(
            f"{path} is neither a speechcl checkpoint (config.json with format 'speechcl') nor a transformers "
            "Wav2Vec2 directory (config.json with model_type 'wav2vec2')"
        )
    if path.suffix == ".pt":
        from speechcl.interop.fairseq import load_fairseq_checkpoint

        return load_fairseq_checkpoint(path, map_location)
    raise ValueError(f"{path}: expected a checkpoint directory or a fairseq .pt file")


def _load_hf(path: Path, map_location: str | torch.device) -> SpeechclModel:
    hf_cfg = json.loads((path / "config.json").read_text())
    cfg = config_from_hf(hf_cfg)
    state = hf_to_speechcl_state(load_hf_state(path))
    model: SpeechclModel
    if "head.weight" in state:
        model = Wav2Vec2ForCTC(cfg, vocab_size=state["head.weight"].shape[0])
    elif "quantizer.codevectors" in state:
        model = Wav2Vec2ForPretraining(cfg)
    else:
        model = Wav2Vec2Encoder(cfg)
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
    # transformers omits the mask embedding when its config disables masking; ours keeps a fresh one.
    load_state_strict(model, state, str(path), allow_missing=("mask_emb",))
    return model.to(map_location).eval()
