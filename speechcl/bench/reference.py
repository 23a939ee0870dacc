"""The reference side of the benchmarks: transformers' Wav2Vec2 with the same config and weights as ours.

Ours is built first (seeded); the transformers model gets the equivalent config
(:func:`speechcl.interop.transformers.config_to_hf`) and our weights renamed by
:func:`speechcl.interop.transformers.speechcl_to_hf_state`, loaded strictly, so both sides compute the
same function. transformers is imported only here and only when a benchmark needs it.
"""

from __future__ import annotations

import contextlib
import os
import platform
from types import ModuleType
from typing import Any

import torch
from torch import nn

from speechcl.interop.transformers import config_to_hf, speechcl_to_hf_state
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForPretraining
from speechcl.training.trainer import autocast_context


def require_transformers() -> ModuleType:
    """Import transformers, or explain how to get it (the ``bench`` extra, not a dependency)."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError("the benchmarks compare against transformers, which is not installed: "
                          "pip install 'speechcl[bench]' (or pip install 'transformers>=4.40')") from err
    return transformers


def hf_config(cfg: Wav2Vec2Config) -> Any:
    """transformers ``Wav2Vec2Config`` equivalent to ``cfg`` (fairseq's mask_prob 0.65 becomes
    ``mask_time_prob``, and so on; transformers has no ``feature_grad_mult``)."""
    transformers = require_transformers()
    values = config_to_hf(cfg)
    values.pop("model_type", None)
    return transformers.Wav2Vec2Config(**values)


def _load_same_weights(target: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{what}: weights do not map one-to-one (missing {missing[:5]}, unexpected {unexpected[:5]})")


def reference_pretraining(model: Wav2Vec2ForPretraining) -> nn.Module:
    """transformers ``Wav2Vec2ForPreTraining`` with ``model``'s config and weights (on ``model``'s device)."""
    transformers = require_transformers()
    ref = transformers.Wav2Vec2ForPreTraining(hf_config(model.cfg))
    _load_same_weights(ref, speechcl_to_hf_state(model.state_dict()), "Wav2Vec2ForPreTraining")
    return ref.to(next(model.parameters()).device)


def reference_encoder(encoder: Wav2Vec2Encoder) -> nn.Module:
    """transformers ``Wav2Vec2Model`` with ``encoder``'s config and weights (on ``encoder``'s device)."""
    transformers = require_transformers()
    ref = transformers.Wav2Vec2Model(hf_config(encoder.cfg))
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    _load_same_weights(ref, speechcl_to_hf_state(state, bare=True), "Wav2Vec2Model")
    return ref.to(next(encoder.parameters()).device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The trainer's context for ``precision`` (:func:`speechcl.training.trainer.autocast_context`), so a
    benchmark measures what training runs; the benchmarks compare ``fp32`` and ``bf16`` only."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return autocast_context(device, precision)


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: versions, threads, processor or GPU."""
    transformers = require_transformers()
    env: dict[str, Any] = {
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": str(device), "threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "processor": _cpu_name(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
