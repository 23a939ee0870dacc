"""speechcl checkpoint directories: ``config.json`` (full model config) + ``model.safetensors``.

``config.json`` holds ``{"format": "speechcl", "version": 1, "architecture": ..., "model": {...}}`` and,
for CTC models, ``vocab_size`` and optionally ``labels`` (the dictionary symbols, blank first); for the
models of the other pretraining objectives (:mod:`speechcl.methods`), ``objective`` (``{"name": ...,
**settings}``) and the method's class name as ``architecture``.
``version`` is the checkpoint format version (absent means 1); a checkpoint of a newer version than
:data:`VERSION` is refused. Weights never go through pickle.

Every way a checkpoint can be broken (unreadable or incomplete ``config.json``, a damaged
``model.safetensors``, weights that do not fit the config) raises a ``ValueError`` that names the file
and says what to do (a missing file: ``FileNotFoundError``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from speechcl.methods import METHODS, Method, build_method
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from speechcl.utils.io import atomic_save, atomic_write_json

FORMAT = "speechcl"
VERSION = 1
"""The newest checkpoint format version this speechcl reads and the one it writes."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

SpeechclModel = Wav2Vec2ForPretraining | Wav2Vec2ForCTC | Wav2Vec2Encoder | Method


def architecture_of(model: nn.Module) -> str:
    if isinstance(model, Method):
        return type(model).__name__
    for cls in (Wav2Vec2ForPretraining, Wav2Vec2ForCTC, Wav2Vec2Encoder):
        if isinstance(model, cls):
            return cls.__name__
    raise ValueError(f"cannot save a {type(model).__name__}; expected a speechcl wav2vec 2.0 model")


def build_model(architecture: str, cfg: Wav2Vec2Config, vocab_size: int | None = None,
                objective: dict[str, Any] | None = None) -> SpeechclModel:
    if objective is not None:
        method = build_method(cfg, objective)
        if type(method).__name__ != architecture:
            raise ValueError(f"architecture {architecture!r} does not match objective {objective.get('name')!r} "
                             f"(whose model is {type(method).__name__})")
        return method
    if architecture == "Wav2Vec2ForPretraining":
        return Wav2Vec2ForPretraining(cfg)
    if architecture == "Wav2Vec2ForCTC":
        if vocab_size is None:
            raise ValueError("a Wav2Vec2ForCTC checkpoint needs vocab_size in its config.json")
        return Wav2Vec2ForCTC(cfg, vocab_size)
    if architecture == "Wav2Vec2Encoder":
        return Wav2Vec2Encoder(cfg)
    if architecture in {cls.__name__ for cls in METHODS.values()}:
        raise ValueError(f"a {architecture} checkpoint needs its 'objective' entry in config.json")
    raise ValueError(f"unknown architecture {architecture!r} (expected Wav2Vec2ForPretraining, Wav2Vec2ForCTC, "
                     f"Wav2Vec2Encoder or one of {', '.join(cls.__name__ for cls in METHODS.values())})")


DCP_DIR = "dcp"  # an FSDP training checkpoint's model and optimizer shards (speechcl.training.sharding)


def save_checkpoint(model: nn.Module, directory: str | Path, extra: dict[str, Any] | None = None,
                    state: dict[str, torch.Tensor] | None = None, weights: bool = True) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each file atomically).

    ``state`` replaces ``model.state_dict()`` (e.g. the full weights gathered from an FSDP-sharded model);
    ``weights=False`` writes ``config.json`` only."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg: Wav2Vec2Config = model.cfg  # type: ignore[assignment]
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "architecture": architecture_of(model),
                            "model": cfg.to_dict()}
    if isinstance(model, Wav2Vec2ForCTC):
        meta["vocab_size"] = model.vocab_size
    if isinstance(model, Method):
        meta["objective"] = model.objective_config()
    if extra:
        meta.update(extra)
    if weights:
        tensors = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()}
        atomic_save(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write_json(directory / CONFIG_NAME, meta)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The JSON object in ``directory/config.json`` (any checkpoint format that has one)."""
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a speechcl checkpoint directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint may be truncated") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(data).__name__}")
    return data


def is_speechcl_directory(directory: str | Path) -> bool:
    try:
        return read_config(directory).get("format") == FORMAT
    except (FileNotFoundError, ValueError):
        return False


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> SpeechclModel:
    """Rebuild the model saved by :func:`save_checkpoint` (returned in eval mode on ``map_location``)."""
    directory = Path(directory)
    model = model_from_config(read_config(directory), str(directory / CONFIG_NAME))
    weights = directory / WEIGHTS_NAME
    if weights.exists():
        load_state_strict(model, read_safetensors(weights), str(weights))
    elif (directory / DCP_DIR / ".metadata").exists():
        load_dcp_weights(model, directory / DCP_DIR)
    else:
        raise FileNotFoundError(f"{weights} not found: the checkpoint directory is incomplete")
    return model.to(map_location).eval()


def dcp_error_reason(err: BaseException) -> str:
    """The last line of a ``torch.distributed.checkpoint`` error, whose message embeds each rank's traceback."""
    return (str(err).strip().splitlines() or [type(err).__name__])[-1]


def load_dcp_weights(model: nn.Module, source: Path) -> None:
    """Load the model entries of a ``torch.distributed.checkpoint`` folder (an FSDP training checkpoint's
    ``dcp/``, written by any number of ranks) into ``model``, in this process (no process group needed)."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message=".*load in a single process", category=UserWarning)
            dcp.load(state, checkpoint_id=str(source), no_dist=True)
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - (DCP's is a BaseException) name the folder
        raise ValueError(f"cannot read the model shards in {source} into the model its config.json describes "
                         f"({dcp_error_reason(err)}); the checkpoint may be incomplete or from another model") from err
    load_state_strict(model, state["model"], str(source))


def model_from_config(meta: dict[str, Any], source: str) -> SpeechclModel:
    """A freshly initialised model for a speechcl ``config.json`` dict read from ``source``.

    Raises:
        ValueError: not a speechcl config, a newer format version, a missing entry or a value of the
            wrong type; the message names ``source``.
    """
    if meta.get("format") != FORMAT:
        raise ValueError(f"{source} is not a speechcl checkpoint config (its 'format' is {meta.get('format')!r})")
    version = meta.get("version", 1)
    if type(version) is not int:
        raise ValueError(f"{source}: 'version' must be an integer, got {version!r}")
    if version > VERSION:
        raise ValueError(f"{source} was written by a newer speechcl (checkpoint format version {version}; this "
                         f"speechcl reads up to version {VERSION}): upgrade speechcl to load it")
    for key, kind in (("architecture", str), ("model", dict)):
        if key not in meta:
            raise ValueError(f"{source} has no {key!r} entry: the config is incomplete; re-save the checkpoint")
        if not isinstance(meta[key], kind):
            raise ValueError(f"{source}: {key!r} must be a JSON {'string' if kind is str else 'object'}, "
                             f"got {meta[key]!r}")
    vocab_size = meta.get("vocab_size")
    if vocab_size is not None and (type(vocab_size) is not int or vocab_size < 1):
        raise ValueError(f"{source}: 'vocab_size' must be a positive integer, got {vocab_size!r}")
    objective = meta.get("objective")
    if objective is not None and not isinstance(objective, dict):
        raise ValueError(f"{source}: 'objective' must be a JSON object, got {objective!r}")
    _check_config_types(meta["model"], source)
    try:
        cfg = Wav2Vec2Config.from_dict(meta["model"])
        return build_model(meta["architecture"], cfg, vocab_size, objective)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: invalid model config: {err}") from None


def _check_config_types(values: dict[str, Any], source: str) -> None:
    """Each ``model`` entry has the JSON type of its :class:`Wav2Vec2Config` default (ints for floats too)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Wav2Vec2Config)}
    for name, value in values.items():
        default = defaults.get(name)  # unknown names are reported by Wav2Vec2Config.from_dict
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int | float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and (isinstance(value, int) or isinstance(default, float))
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, tuple):
            ok = isinstance(value, list | tuple)
        else:
            ok = True
        if not ok:
            raise ValueError(f"{source}: model.{name} must be of type {type(default).__name__} (default "
                             f"{default!r}), got {value!r}")


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a damaged file raises a ``ValueError`` naming it."""
    try:
        return load_file(str(path), device=str(device))
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it is truncated or corrupt: "
                         "save or download it again") from None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                      allow_missing: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` with an error that names the source and the mismatching keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(k.endswith(a) for a in allow_missing)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in state
              if k in own and state[k].shape != own[k].shape]
    problems = [f"{what} {len(keys)} ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
                if keys]
    if problems:
        raise ValueError(
            f"weights in {source} do not fit the model its config describes: {'; '.join(problems)}. The weights "
            "and the config come from different models: load them together with the config they were saved with"
        )
    model.load_state_dict(state, strict=False)
