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


def test_shipped_configs_are_the_repository_conf_folder():
    """The package ``speechcl.conf`` is the checkout's conf/ (the editable install maps it there)."""
    from speechcl.utils.config import conf_dir, shipped_conf_dir

    assert shipped_conf_dir().samefile(CONF) and conf_dir().samefile(CONF)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture()
def user_conf(tmp_path: Path) -> Path:
    """A user config folder (a space and a comma in its path): a top-level config that extends the
    shipped pretrain_cpu, and a model option of its own on the shipped tiny preset."""
    user = tmp_path / "my configs, v1"
    _write(user / "my_pretrain.yaml", "defaults:\n  - pretrain_cpu\n  - _self_\n\nexp_dir: exp/mine\n"
                                      "trainer:\n  max_update: 7\n")
    _write(user / "model" / "foo.yaml", "defaults:\n  - tiny\n  - _self_\n\nencoder_layers: 3\n")
    return user


def test_user_config_folder_is_searched_with_the_shipped_configs(user_conf: Path):
    cfg = compose("my_pretrain", [], [user_conf])
    assert cfg.exp_dir == "exp/mine" and cfg.trainer.max_update == 7
    assert cfg.model.encoder_embed_dim == 256 and cfg.schedule.kind == "polynomial"  # shipped model=small
    assert cfg.optim.lr == 0.0005 and cfg.trainer.threads == compose("pretrain_cpu", []).trainer.threads
    foo = compose("my_pretrain", ["model=foo"], [user_conf])
    assert foo.model.encoder_layers == 3 and foo.model.encoder_embed_dim == 64  # user option on shipped tiny
    shipped = compose("pretrain_cpu", ["model=foo"], [user_conf])  # a shipped top-level config, a user option
    assert shipped.model.encoder_layers == 3 and shipped.exp_dir == "exp/pretrain_cpu"


@pytest.mark.parametrize("config_name", ["pretrain", "pretrain_cpu", "finetune_cpu", "finetune_base_10m"])
def test_an_empty_user_folder_changes_nothing(config_name: str, tmp_path: Path):
    assert compose(config_name, ["data.manifest_dir=x"], [tmp_path]) == compose(config_name, ["data.manifest_dir=x"])


def test_the_first_folder_with_a_file_wins(user_conf: Path, tmp_path: Path):
    _write(user_conf / "optim" / "adam.yaml", "lr: 0.123\n")
    assert compose("pretrain", [], [user_conf]).optim == {"lr": 0.123}  # replaces the shipped optim/adam
    other = tmp_path / "other"
    _write(other / "model" / "foo.yaml", "encoder_layers: 5\n")
    assert compose("pretrain_cpu", ["model=foo"], [other, user_conf]).model.encoder_layers == 5
    assert compose("pretrain_cpu", ["model=foo"], [user_conf, other]).model.encoder_layers == 3
    _write(other / "pretrain_cpu.yaml", "exp_dir: exp/other\n")
    assert compose("pretrain_cpu", [], [other]) == {"exp_dir": "exp/other"}


def test_folder_names_with_quotes_backslashes_and_commas(tmp_path: Path):
    first = tmp_path / "first"
    first.mkdir()
    odd = tmp_path / "it's a \\ odd, dir\\"  # a later folder goes into Hydra's searchpath override
    _write(odd / "model" / "foo.yaml", "encoder_layers: 5\n")
    assert compose("pretrain_cpu", ["model=foo"], [first, odd]).model.encoder_layers == 5


def test_missing_user_folder_or_config_name_is_a_clear_error(tmp_path: Path, user_conf: Path):
    with pytest.raises(FileNotFoundError, match="nope not found"):
        compose("pretrain", [], [tmp_path / "nope"])
    with pytest.raises(ValueError, match="no config mine.yaml in .*my configs, v1"):
        compose("mine", [], [user_conf])
    with pytest.raises(ValueError, match="huge"):
        compose("my_pretrain", ["model=huge"], [user_conf])


def test_speechcl_conf_replaces_the_shipped_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import shutil

    copy = shutil.copytree(CONF, tmp_path / "conf")
    tiny = copy / "model" / "tiny.yaml"
    tiny.write_text(tiny.read_text().replace("encoder_layers: 2", "encoder_layers: 4"))
    monkeypatch.setenv("SPEECHCL_CONF", str(copy))
    assert compose("pretrain_cpu", ["model=tiny"]).model.encoder_layers == 4
    monkeypatch.setenv("SPEECHCL_CONF", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SPEECHCL_CONF"):
        compose("pretrain_cpu", [])
