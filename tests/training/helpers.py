"""Helpers for the training tests: run ``speechcl pretrain`` in a subprocess or in-process, build the
loop's pieces directly, read checkpoints and logs.

Every run uses the ``tiny`` model, 2-second crops and 3 crops per batch: the 12 training utterances of
the session corpus (``conftest.manifest_dir``) make 4 batches per epoch (even, so 2 ranks share an
epoch exactly), and an update takes ~0.1-0.3 s on one core.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch

from speechcl.data.synth import SynthConfig

# ~1 minute of training speech in 12 utterances of 4-8 s; dev-clean for validation
CORPUS = SynthConfig(minutes=1.0, speakers=4, dev_minutes=0.3, test_minutes=0.3, heldout_speakers=2, seed=3,
                     chapter_minutes=0.5)
TRAIN, VALID = "train-clean-100", "dev-clean"
BATCHES_PER_EPOCH = 4

# the data settings of every run (the Hydra overrides and the matching DataConfig fields)
DATA = {"train_subset": TRAIN, "valid_subset": VALID, "max_sample_size": 32000, "min_sample_size": 8000,
        "max_tokens": 96000, "num_workers": 0}


def overrides(manifest_dir: Path, exp_dir: Path, **extra: Any) -> list[str]:
    """``key=value`` overrides for a tiny CPU pretraining run; ``extra`` uses ``__`` for dots
    (``trainer__max_update=4``)."""
    values: dict[str, Any] = {"data.manifest_dir": manifest_dir, "exp_dir": exp_dir, "model": "tiny",
                              "trainer.tensorboard": "false", "trainer.threads": 1, "trainer.log_interval": 1,
                              "trainer.valid_interval": 0, "trainer.save_interval": 0}
    values |= {f"data.{k}": v for k, v in DATA.items()}
    values |= {k.replace("__", "."): v for k, v in extra.items()}
    return [f"{k}={v}" for k, v in values.items()]


def pretrain_argv(manifest_dir: Path, exp_dir: Path, **extra: Any) -> list[str]:
    """``python -m speechcl pretrain --config-name pretrain_cpu ...`` for a subprocess."""
    return [sys.executable, "-m", "speechcl", "pretrain", "--config-name", "pretrain_cpu",
            *overrides(manifest_dir, exp_dir, **extra)]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_pretrain_verb(argv: list[str]) -> int:
    """``speechcl pretrain ARGV`` in this process, through the verb's own ``register`` (as the CLI does)."""
    parser = argparse.ArgumentParser(prog="speechcl")
    importlib.import_module("speechcl.training.commands").register(parser.add_subparsers(dest="verb", required=True))
    args, extra = parser.parse_known_args(["pretrain", *argv])
    args.overrides = list(extra)
    return int(args.func(args) or 0)


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def read_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=True)


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def optimizer_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter tensors (``exp_avg``, ``exp_avg_sq``, ``step``) by a flat name."""
    out = {}
    for index, slots in state["optimizer"]["state"].items():
        for name, value in slots.items():
            out[f"{index}.{name}"] = torch.as_tensor(value)
    return out


def tiny_pieces(manifest_dir: Path, seed: int = 1, valid: bool = True) -> tuple[Any, Any, Any, Any]:
    """``(model, task, train_loader, valid_loader)`` for an in-process :func:`train` call: the tiny
    preset (initialised from ``seed``) over the session corpus, as ``run_pretraining`` builds them."""
    from speechcl.models.config import preset
    from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
    from speechcl.training.pretrain import DataConfig, LossConfig, PretrainTask, build_loader

    cfg = preset("tiny")
    torch.manual_seed(seed)
    model = Wav2Vec2ForPretraining(cfg)
    data = DataConfig(manifest_dir=str(manifest_dir), **DATA)
    train_loader = build_loader(data, TRAIN, True)
    valid_loader = build_loader(data, VALID, False) if valid else None
    return model, PretrainTask(cfg, LossConfig()), train_loader, valid_loader


def tiny_configs(**trainer: Any) -> tuple[Any, Any, Any]:
    """``(TrainerConfig, OptimConfig, ScheduleConfig)`` for a few CPU updates."""
    from speechcl.training.schedules import ScheduleConfig
    from speechcl.training.trainer import OptimConfig, TrainerConfig

    values: dict[str, Any] = {"max_update": 4, "device": "cpu", "threads": 1, "log_interval": 1,
                              "valid_interval": 0, "save_interval": 0, "tensorboard": False}
    return (TrainerConfig(**(values | trainer)), OptimConfig(lr=1e-3, clip_norm=10.0),
            ScheduleConfig(kind="polynomial", warmup_updates=2))


def read_log(exp_dir: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in (exp_dir / "log.jsonl").read_text().splitlines() if line.strip()]
