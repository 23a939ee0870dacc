"""``speechcl pretrain``: Hydra-composed configuration in, a trained checkpoint directory out."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from speechcl.utils.io import atomic_write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="wav2vec 2.0 pretraining (Hydra key=value overrides on conf/pretrain.yaml)",
        description="Pretrain with conf/<config-name>.yaml composed with key=value overrides, e.g. "
                    "`speechcl pretrain data.manifest_dir=data/ls model=small trainer.max_update=1000`. "
                    "Rerunning with the same exp_dir resumes from its last checkpoint.",
    )
    p.add_argument("--config-name", default="pretrain", help="top-level config in conf/ (pretrain, pretrain_cpu)")
    p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    p.set_defaults(func=run_pretrain, accepts_overrides=True)


def run_pretrain(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from speechcl.models.config import Wav2Vec2Config
    from speechcl.training.pretrain import DataConfig, LossConfig, run_pretraining
    from speechcl.training.schedules import ScheduleConfig
    from speechcl.training.trainer import OptimConfig, TrainerConfig
    from speechcl.utils.config import compose, to_dataclass, to_plain

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: expected key=value overrides, got {bad}", file=sys.stderr)
        return 2
    try:
        cfg = compose(args.config_name, args.overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
        plain = to_plain(cfg)
        model_cfg = to_dataclass(Wav2Vec2Config, plain["model"], "model")
        data = to_dataclass(DataConfig, plain["data"], "data")
        optim = to_dataclass(OptimConfig, plain["optim"], "optim")
        schedule = to_dataclass(ScheduleConfig, plain["schedule"], "schedule")
        trainer = to_dataclass(TrainerConfig, plain["trainer"], "trainer")
        loss = to_dataclass(LossConfig, plain["loss"], "loss")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if model_cfg.layerdrop > 0:
        trainer.find_unused_parameters = True
    exp_dir = Path(plain["exp_dir"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(exp_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    try:
        result = run_pretraining(model_cfg, data, optim, schedule, trainer, loss, exp_dir, run_config=plain)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {result['num_updates']} updates; checkpoints in {exp_dir / 'checkpoints'}")
    return 0
