"""The Hydra configs in conf/ agree with the library's presets and dataclasses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from speechcl.models.config import PRESETS, Wav2Vec2Config, preset
from speechcl.utils.config import compose, to_dataclass, to_plain

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_yaml_matches_preset(name):
    data = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    assert Wav2Vec2Config.from_dict(data) == preset(name)


@pytest.mark.parametrize("config_name", ["pretrain", "pretrain_cpu", "finetune", "finetune_cpu",
                                         "finetune_base_10m", "finetune_base_1h", "finetune_base_10h",
                                         "finetune_base_100h"])
def test_top_level_configs_compose(config_name):
    from speechcl.training.schedules import ScheduleConfig
    from speechcl.training.trainer import OptimConfig, TrainerConfig

    plain = to_plain(compose(config_name, ["data.manifest_dir=x"]))
    to_dataclass(OptimConfig, plain["optim"], "optim")
    to_dataclass(ScheduleConfig, plain["schedule"], "schedule")
    to_dataclass(TrainerConfig, plain["trainer"], "trainer")
    if config_name.startswith("pretrain"):
        to_dataclass(Wav2Vec2Config, plain["model"], "model")
    else:
        from speechcl.training.finetune import FinetuneDataConfig, FinetuneModelConfig

        to_dataclass(FinetuneModelConfig, plain["model"], "model")
        to_dataclass(FinetuneDataConfig, plain["data"], "data")
