"""Labeled subsets for fine-tuning: LibriLight's limited-resource sets, or seeded random subsets.

LibriLight (``librispeech_finetuning/``, found inside the LibriSpeech root or given as the root's
sibling) holds ``1h/{0..5}/{clean,other}/<spk>/<chap>/...`` and ``9h/{clean,other}/...`` in
LibriSpeech's layout. As in fairseq's fine-tuning recipes it gives three sets:

- ``librilight-10m``: ``1h/0`` (clean and other);
- ``librilight-1h``: all of ``1h``;
- ``librilight-10h``: ``1h`` plus ``9h``.

Without it, :func:`select_subset` draws a random subset of a split with a given total duration,
requested on the command line as ``--subset SPLIT:DURATION`` (e.g. ``train-clean-100:10m``,
``train-clean-100:1h``, ``train-clean-100:1.5h``, ``dev-clean:90s``) and written as
``<SPLIT>-<DURATION>.{tsv,wrd,ltr}`` (``train-clean-100-10m.tsv``). Subsets of one split drawn with one
seed are nested: the 10-minute set is contained in the 1-hour set, like LibriLight's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LIBRILIGHT_DIR = "librispeech_finetuning"
LIBRILIGHT_SETS: dict[str, tuple[str, ...]] = {
    "librilight-10m": ("1h/0",),
    "librilight-1h": ("1h",),
    "librilight-10h": ("1h", "9h"),
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def parse_duration(text: str) -> float:
    """``"10m"`` -> 600.0; accepts ``s``/``sec``, ``m``/``min``, ``h``/``hr`` suffixes."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"cannot parse duration {text!r}; write e.g. 90s, 10m, 1h or 1.5h")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return seconds


@dataclass(frozen=True)
class SubsetSpec:
    """A random labeled subset: ``seconds`` of audio drawn from ``split``, written as ``name``."""

    split: str
    seconds: float
    name: str


def parse_subset_spec(text: str) -> SubsetSpec:
    """``"train-clean-100:10m"`` -> ``SubsetSpec("train-clean-100", 600.0, "train-clean-100-10m")``."""
    split, sep, duration = text.rpartition(":")
    if not sep or not split:
        raise ValueError(f"cannot parse subset {text!r}; write SPLIT:DURATION, e.g. train-clean-100:10m")
    seconds = parse_duration(duration)
    return SubsetSpec(split, seconds, f"{split}-{duration.strip().lower()}")


def select_subset(sizes: Sequence[int], target: int, seed: int) -> list[int]:
    """Indices of a random subset whose sizes sum to at least ``target`` (or everything when smaller).

    Items are taken in a seeded random order until the total reaches ``target``, so the subset
    overshoots by less than one item and subsets with the same seed are nested.

    Args:
        sizes: length of each item (samples).
        target: wanted total length (samples).
        seed: random seed.

    Returns:
        the chosen indices, sorted ascending.
    """
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    order = np.random.default_rng(seed).permutation(len(sizes))
    totals = np.cumsum(np.asarray(sizes, dtype=np.int64)[order])
    count = int(np.searchsorted(totals, target, side="left")) + 1
    return sorted(int(i) for i in order[:count])


def find_librilight(root: str | Path) -> Path | None:
    """The LibriLight fine-tuning directory inside ``root`` or next to it, if any."""
    root = Path(root)
    for candidate in (root / LIBRILIGHT_DIR, root.parent / LIBRILIGHT_DIR, root):
        if (candidate / "1h").is_dir() and (candidate / "9h").is_dir():
            return candidate
    return None
