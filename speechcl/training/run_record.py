"""The record of a training run's configuration: ``<exp_dir>/config.yaml`` and its history.

A run's folder keeps the resolved config it was started with and every config it was resumed with:
``config.yaml`` is the config in force, ``config_history/NNN.yaml`` one file per start that brought a new
config (``000.yaml`` is the original). Resuming a run — its folder has ``checkpoints/last`` — with a
config that differs from the saved one is refused with a readable diff unless the change is allowed
explicitly (``--allow-config-change``); then the new config is added to the history, so nothing of the
original record is lost. Two kinds of change need no permission, because they leave the trajectory alone
(both are still recorded in the history): a stopping rule that is not part of any schedule
(:data:`STOPPING_KEYS`: extend a time budget or an epoch limit), and keys the saved config lacks (a newer
speechcl's settings, whose defaults keep the old behaviour).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from speechcl.utils.io import atomic_write_text

HISTORY = "config_history"
STOPPING_KEYS = frozenset({"trainer.max_minutes", "trainer.budget_clock", "trainer.max_epoch"})
"""Where a run stops, and nothing else: a resume may change them freely (``max_update`` also sets the
learning-rate schedule, so it is not one of them)."""


class ConfigChangedError(ValueError):
    """A run would resume with a config other than the one it was saved with."""


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out |= flatten(value, name)
        else:
            out[name] = value
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], *, benign: bool | None = None) -> list[str]:
    """One line per changed, added or removed key: ``key: old -> new``. ``benign=True`` keeps only the
    changes a resume may make without permission (see the module docstring), ``False`` only the others."""
    a, b = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        free = key not in a or key in STOPPING_KEYS
        if benign is not None and free != benign:
            continue
        if key not in b:
            lines.append(f"  {key}: {a[key]!r} -> (removed)")
        elif key not in a:
            lines.append(f"  {key}: (new) -> {b[key]!r}")
        elif a[key] != b[key]:
            lines.append(f"  {key}: {a[key]!r} -> {b[key]!r}")
    return lines


def _read_yaml(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # noqa: BLE001 - any parse failure: name the file
        raise ValueError(f"{path}: cannot read the saved run config ({err}); restore it from "
                         f"{path.parent / HISTORY} or move the run folder away") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: the saved run config is not a mapping; restore it from {path.parent / HISTORY}")
    return loaded  # type: ignore[return-value]


def record_config(exp_dir: str | os.PathLike, config_yaml: str, config: dict[str, Any],
                  allow_change: bool = False, write: bool = True) -> list[str]:
    """Check ``config`` (resolved, plain) against the run's saved one and record it.

    Args:
        exp_dir: the run folder.
        config_yaml: ``config`` as YAML, what is written.
        config: the resolved config as plain dicts and lists.
        allow_change: accept a changed config for a run that resumes.
        write: write the record (the main process); other ranks only check.

    Returns:
        The diff lines against the saved config (empty when unchanged or new).

    Raises:
        ConfigChangedError: the run resumes (``checkpoints/last`` exists), the config changed in more than
            its stopping rule or new keys, and ``allow_change`` is False. Nothing is written then.
    """
    exp_dir = Path(exp_dir)
    current, history = exp_dir / "config.yaml", exp_dir / HISTORY
    saved = _read_yaml(current) if current.exists() else {}
    diff = config_diff(saved, config) if current.exists() else []
    blocking = config_diff(saved, config, benign=False) if current.exists() else []
    resuming = (exp_dir / "checkpoints" / "last").exists()
    if blocking and resuming and not allow_change:
        raise ConfigChangedError(
            f"{exp_dir} holds a run saved with another config; resuming it would change:\n" + "\n".join(blocking)
            + f"\nrerun with the saved settings (see {current}), use another exp_dir for a new run, or pass "
            "--allow-config-change to resume with the new config (the old one stays in "
            f"{history})"
        )
    if not write:
        return diff
    history.mkdir(parents=True, exist_ok=True)
    entries = sorted(history.glob("[0-9][0-9][0-9].yaml"))
    if not entries and current.exists():  # a run recorded before histories were kept: keep its original
        atomic_write_text(history / "000.yaml", current.read_text())
        entries = [history / "000.yaml"]
    if diff or not entries:
        note = "".join(f"# {line.strip()}\n" for line in diff)
        header = f"# resumed with these changes to {entries[-1].name}:\n{note}" if diff else ""
        atomic_write_text(history / f"{len(entries):03d}.yaml", header + config_yaml)
        atomic_write_text(current, config_yaml)
    return diff
