"""Pretraining methods on the shared encoder, by the name ``objective=<name>`` selects.

``wav2vec2`` is :class:`~speechcl.models.wav2vec2.Wav2Vec2ForPretraining` with its own task (its numbers
are the reference's); every other method is a :class:`~speechcl.methods.base.Method` listed in
:data:`METHODS`.
"""

from __future__ import annotations

from typing import Any

from speechcl.methods.base import Method, MethodOutput
from speechcl.methods.bestrq import BestRQ
from speechcl.methods.byol import BYOL
from speechcl.methods.cpc import CPC, Wav2Vec
from speechcl.methods.data2vec import Data2Vec
from speechcl.methods.hubert import Hubert
from speechcl.methods.moco import MoCo
from speechcl.methods.pirl import PIRL
from speechcl.methods.simclr import SimCLR
from speechcl.models.config import Wav2Vec2Config
from speechcl.utils.config import to_dataclass

METHODS: dict[str, type[Method]] = {
    "bestrq": BestRQ,
    "byol": BYOL,
    "cpc": CPC,
    "data2vec": Data2Vec,
    "hubert": Hubert,
    "moco": MoCo,
    "pirl": PIRL,
    "simclr": SimCLR,
    "wav2vec": Wav2Vec,
}
"""Objective name -> method class (one module per method in this package)."""

OBJECTIVES: tuple[str, ...] = ("wav2vec2", *METHODS)
"""Every name ``objective=`` accepts."""


def method_config(name: str, values: dict[str, Any], source: str = "objective") -> Any:
    """The ``Config`` of method ``name`` from plain ``values`` (unknown keys and wrong types: ValueError
    naming ``source``)."""
    if name not in METHODS:
        raise ValueError(f"{source}.name: unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return to_dataclass(METHODS[name].Config, values, source)


def build_method(cfg: Wav2Vec2Config, objective: dict[str, Any], source: str = "objective") -> Method:
    """A freshly initialised method model from ``objective`` (``{"name": ..., **settings}``)."""
    values = dict(objective)
    name = values.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"{source} needs a 'name' (one of {', '.join(OBJECTIVES)}), got {name!r}")
    return METHODS[name](cfg, method_config(name, values, source))


__all__ = ["METHODS", "OBJECTIVES", "Method", "MethodOutput", "build_method", "method_config"]
