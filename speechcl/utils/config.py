"""Hydra at the edge: compose ``conf/`` with command-line overrides and turn sections into dataclasses."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def conf_dir() -> Path:
    """The Hydra config folder: ``$SPEECHCL_CONF`` or the repository's ``conf/``."""
    env = os.environ.get("SPEECHCL_CONF")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "pretrain.yaml").exists():
        raise FileNotFoundError(f"config folder {path} not found (set SPEECHCL_CONF to the speechcl conf/ folder)")
    return path


def compose(config_name: str, overrides: list[str]) -> Any:
    """Compose ``<conf>/<config_name>.yaml`` with ``key=value`` overrides; returns a resolved DictConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as err:
        raise ValueError(f"bad configuration or override: {err}") from None
    OmegaConf.resolve(cfg)
    return cfg


def to_plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def to_dataclass(cls: type[T], values: dict[str, Any], section: str) -> T:
    """``cls(**values)`` with an error naming the section and the unknown keys; lists become tuples
    where the field default is a tuple."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown keys in {section}: {unknown}; valid keys are {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        default = fields[key].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        expected = type(default) if isinstance(default, (bool, int, float, str)) else None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is not None and (type(value) is not expected):
            raise ValueError(f"{section}.{key} must be a {expected.__name__}, got {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid {section}: {err}") from None
