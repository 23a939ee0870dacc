"""``speechcl pretrain`` and ``speechcl finetune``: Hydra-composed configuration in, a trained checkpoint
directory out. ``speechcl curves``: the training curves of such directories as a PNG."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

_CONFIG_EPILOG = ("Configs are looked up in each --config-dir in the order given, then in the configs shipped "
                  "with speechcl (or $SPEECHCL_CONF when set). A user folder may hold a top-level config that "
                  "uses the shipped groups (defaults: [model: small, ...]) and group options of its own "
                  "(DIR/model/foo.yaml, selected with model=foo); a file named like a shipped one replaces it.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="wav2vec 2.0 pretraining (Hydra key=value overrides on the pretrain config)",
        description="Pretrain with the config --config-name (shipped: pretrain, pretrain_cpu) composed with "
                    "key=value overrides, e.g. `speechcl pretrain data.manifest_dir=data/ls model=small "
                    "trainer.max_update=1000`. Rerunning with the same exp_dir resumes from its last checkpoint.",
        epilog=_CONFIG_EPILOG,
    )
    _add_config_options(p, "pretrain", "pretrain, pretrain_cpu")
    p.set_defaults(func=run_pretrain, accepts_overrides=True)

    f = sub.add_parser(
        "finetune", help="CTC fine-tuning (Hydra key=value overrides on the finetune config)",
        description="Fine-tune with CTC using the config --config-name (shipped: finetune_base_10m, "
                    "finetune_base_1h, finetune_base_10h, finetune_base_100h, finetune_cpu) and key=value "
                    "overrides, e.g. `speechcl finetune --config-name finetune_base_10m data.manifest_dir=data "
                    "model.init=exp/pretrain/checkpoints/best exp_dir=exp/ft_10m`. model.init='' trains from "
                    "scratch. Rerunning with the same exp_dir resumes.",
        epilog=_CONFIG_EPILOG,
    )
    _add_config_options(f, "finetune", "finetune, finetune_cpu, finetune_base_10m, ...")
    f.set_defaults(func=run_finetune, accepts_overrides=True)

    c = sub.add_parser(
        "curves", help="plot training curves of pretrain/finetune experiments (PNG)",
        description="Plot the metrics logged in each EXP/log.jsonl against the number of updates: one panel per "
                    "--metric, one line per experiment. Pretraining validates valid:loss (bits per masked step) "
                    "and valid:accuracy; fine-tuning valid:loss, valid:wer and valid:cer; both log train:* "
                    "values (e.g. train:loss) every log interval.",
    )
    c.add_argument("experiments", nargs="+", metavar="EXP", help="experiment folders (their exp_dir)")
    c.add_argument("--names", nargs="+", default=None, metavar="N",
                   help="legend names, one per EXP (default: the folder names)")
    c.add_argument("--metric", nargs="+", required=True, metavar="SPLIT:KEY",
                   help="what to plot, e.g. valid:loss valid:accuracy")
    c.add_argument("--output", required=True, metavar="PNG", help="the PNG file to write (atomically)")
    c.add_argument("--title", default=None, help="figure title")
    c.set_defaults(func=run_curves)


def _add_config_options(parser: argparse.ArgumentParser, default: str, shipped: str) -> None:
    parser.add_argument("--config-name", default=default,
                        help=f"top-level config (default {default}; shipped: {shipped}; or one in --config-dir)")
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own configs, searched before the shipped ones (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume a run with a config that differs from its saved one (the diff is printed; "
                             "every config the run used is kept in <exp_dir>/config_history/)")


def _compose(args: argparse.Namespace) -> tuple[object, dict] | int:
    from omegaconf import OmegaConf

    from speechcl.utils.config import compose, to_plain

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: expected key=value overrides, got {bad}", file=sys.stderr)
        return 2
    try:
        cfg = compose(args.config_name, args.overrides, args.config_dir)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    return cfg, to_plain(cfg)


def _save_config(cfg: object, plain: dict, exp_dir: Path, allow_change: bool) -> None:
    """Check the config against a resumed run's and record it (main process); ConfigChangedError if refused."""
    from omegaconf import OmegaConf

    from speechcl.training.run_record import record_config

    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        exp_dir.mkdir(parents=True, exist_ok=True)
    diff = record_config(exp_dir, OmegaConf.to_yaml(cfg), plain, allow_change=allow_change, write=main)
    if diff and main:
        print(f"warning: resuming with a changed config (recorded in {exp_dir / 'config_history'}):\n"
              + "\n".join(diff), file=sys.stderr)


def _sections(plain: dict, spec: dict[str, type]) -> dict[str, object]:
    """The config sections named in ``spec`` as their dataclasses (ValueError naming the bad key)."""
    from speechcl.utils.config import to_dataclass

    return {name: to_dataclass(cls, plain[name], name) for name, cls in spec.items()}


def _run(args: argparse.Namespace, spec: dict[str, type], runner, find_unused) -> int:
    """Compose, convert, save the resolved config, train; errors become one line and exit code 2."""
    from speechcl.training.schedules import ScheduleConfig
    from speechcl.training.trainer import OptimConfig, TrainerConfig

    composed = _compose(args)
    if isinstance(composed, int):
        return composed
    cfg, plain = composed
    try:
        parts = _sections(plain, {**spec, "optim": OptimConfig, "schedule": ScheduleConfig,
                                  "trainer": TrainerConfig})
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if find_unused(parts["model"]):
        parts["trainer"].find_unused_parameters = True  # layers skipped or frozen on some updates
    exp_dir = Path(plain["exp_dir"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from speechcl.training.checkpoints import CheckpointWriteError
    from speechcl.training.trainer import CollapseError, NonFiniteError
    from speechcl.utils.signals import EXIT_PREEMPTED, Preempted

    try:
        _save_config(cfg, plain, exp_dir, args.allow_config_change)
        result = runner(parts, exp_dir, plain)
    except Preempted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (ValueError, FileNotFoundError, NonFiniteError, CollapseError, CheckpointWriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        valid = result.get("valid") or {}
        extra = f"; valid WER {valid['wer']:.4f} CER {valid['cer']:.4f}" if "wer" in valid else ""
        print(f"done: {result['num_updates']} updates{extra}; checkpoints in {exp_dir / 'checkpoints'}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from speechcl.audio.augment import AugmentConfig
    from speechcl.training.finetune import FinetuneDataConfig, FinetuneModelConfig, run_finetuning

    return _run(
        args, {"model": FinetuneModelConfig, "data": FinetuneDataConfig, "augment": AugmentConfig},
        lambda p, exp_dir, plain: run_finetuning(p["model"], p["data"], p["optim"], p["schedule"], p["trainer"],
                                                 exp_dir, run_config=plain, augment=p["augment"]),
        lambda m: m.layerdrop > 0 or m.freeze_finetune_updates > 0,
    )


def run_pretrain(args: argparse.Namespace) -> int:
    from speechcl.audio.augment import AugmentConfig
    from speechcl.models.config import Wav2Vec2Config
    from speechcl.training.pretrain import DataConfig, LossConfig, run_pretraining

    def runner(p: dict, exp_dir: Path, plain: dict) -> dict:
        if (plain.get("objective") or {}).get("name", "wav2vec2") != "wav2vec2":
            p["trainer"].find_unused_parameters = True  # e.g. mask_emb in the methods that never mask
        augment = _sections(plain, {"augment": AugmentConfig})["augment"] if "augment" in plain else None
        return run_pretraining(p["model"], p["data"], p["optim"], p["schedule"], p["trainer"], p["loss"], exp_dir,
                               run_config=plain, objective=plain.get("objective"), augment=augment)

    return _run(args, {"model": Wav2Vec2Config, "data": DataConfig, "loss": LossConfig}, runner,
                lambda m: m.layerdrop > 0)


def run_curves(args: argparse.Namespace) -> int:
    from speechcl.training.curves import curves_png, parse_metric, read_log

    names = args.names or [Path(exp).resolve().name for exp in args.experiments]
    if len(names) != len(args.experiments):
        print(f"error: {len(names)} --names for {len(args.experiments)} experiments; give one name per EXP",
              file=sys.stderr)
        return 2
    try:
        metrics = [parse_metric(m) for m in args.metric]
        runs = [(name, read_log(exp)) for name, exp in zip(names, args.experiments)]
        path = curves_png(runs, metrics, args.output, args.title)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
