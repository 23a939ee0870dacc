"""Hydra at the edge: compose the configs with command-line overrides and turn sections into dataclasses.

The configs ship inside the package as ``speechcl.conf`` (the repository's top-level ``conf/``, mapped
into the package by ``setup.py``), so a wheel install and an editable install find them the same way.
``$SPEECHCL_CONF`` names another folder to use instead. Folders of the user's own configs come first in
the search path: a user's top-level config can use the shipped groups (``model/``, ``optim/``, ...), and a
user's ``model/foo.yaml`` is selected with ``model=foo``; a user file of the same name as a shipped one
replaces it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def shipped_conf_dir() -> Path:
    """The folder of the configs that ship with speechcl (the package ``speechcl.conf``)."""
    try:
        path = Path(str(importlib.resources.files("speechcl.conf")))
    except ModuleNotFoundError:
        raise FileNotFoundError("the configs package speechcl.conf is not installed: reinstall speechcl "
                                "(pip install -e . in a checkout) or set SPEECHCL_CONF to a config folder") from None
    if not (path / "pretrain.yaml").is_file():
        raise FileNotFoundError(f"{path} holds no pretrain.yaml: reinstall speechcl or set SPEECHCL_CONF")
    return path


def conf_dir() -> Path:
    """The base config folder: ``$SPEECHCL_CONF`` when set, else the shipped configs."""
    env = os.environ.get("SPEECHCL_CONF")
    if not env:
        return shipped_conf_dir()
    path = Path(env)
    if not (path / "pretrain.yaml").is_file():
        raise FileNotFoundError(f"SPEECHCL_CONF={env}: no pretrain.yaml there (point it at a speechcl conf/ folder)")
    return path


def search_path(config_dirs: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """The config folders in search order: ``config_dirs`` as given, then :func:`conf_dir`."""
    user = [Path(d).expanduser().resolve() for d in config_dirs]
    for path in user:
        if not path.is_dir():
            raise FileNotFoundError(f"config folder {path} not found")
    return [*user, conf_dir().resolve()]


def _quoted(text: str) -> str:
    """``text`` as a quoted value of a Hydra override: a quote is written ``\\'``, and backslashes are
    escaped only where Hydra reads them as escapes (before a quote and at the end)."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + "'"


def _searchpath_override(folders: Sequence[Path]) -> str:
    """``hydra.searchpath=[...]`` naming ``folders`` (quoted, so spaces and commas in paths are kept)."""
    return f"hydra.searchpath=[{','.join(_quoted(f'file://{f}') for f in folders)}]"


_PRIMARY = "_speechcl_primary"


def compose(config_name: str, overrides: Sequence[str], config_dirs: Sequence[str | os.PathLike] = ()) -> Any:
    """Compose ``<config_name>.yaml`` with ``key=value`` overrides; returns a resolved DictConfig.

    Args:
        config_name: a top-level config (``pretrain``, ``pretrain_cpu``, or one in ``config_dirs``).
        overrides: Hydra overrides (``model=small``, ``trainer.max_update=100``).
        config_dirs: the user's config folders, searched in this order before the base configs.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    folders = search_path(config_dirs)
    name = config_name.removesuffix(".yaml")
    if not any((folder / f"{name}.yaml").is_file() for folder in folders):
        raise ValueError(f"no config {name}.yaml in {', '.join(str(f) for f in folders)}")
    # Hydra reads the primary config from the first folder alone (hydra.searchpath extends the search
    # after that), so the primary is a stored stub whose defaults list names the requested config, which is
    # then looked up along the whole search path like every group option.
    ConfigStore.instance().store(name=_PRIMARY, node={"defaults": [name, "_self_"]})
    primary, *rest = folders
    extra = [_searchpath_override(rest)] if rest else []
    try:
        with initialize_config_dir(config_dir=str(primary), version_base=None):
            cfg = hydra_compose(config_name=_PRIMARY, overrides=[*overrides, *extra])
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
