"""The labels the probes read beside a manifest, checked line by line against it.

For a manifest directory ``D`` and a split ``S`` (``D/S.tsv``, :mod:`speechcl.data.manifest`), each task
reads one label file whose lines correspond to the manifest's items, in order:

- ``phone``: ``D/S.phn_frames``, one phone label per model frame, space-separated (``sil`` where no phone
  is spoken), and the symbols in ``D/dict.phn.txt`` (``SYMBOL COUNT`` lines). A line must hold exactly
  :func:`~speechcl.models.feature_encoder.num_frames` labels for the item's ``num_samples``;
- ``ctc``: ``D/S.ltr`` (letters separated by spaces, ``|`` between words; :mod:`speechcl.data.labels`) and
  ``D/dict.ltr.txt``;
- ``speaker``: ``D/S.spk``, one speaker id per line; without it, the speaker of a LibriSpeech-style path
  ``.../<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``;
- ``keyword``: ``D/S.kw``, one label per line, and the classes in ``D/dict.kw.txt``.

Every mismatch raises a ``ValueError`` naming the file, the line and both counts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Sequence
from pathlib import Path, PurePosixPath

from speechcl.data.labels import read_lines
from speechcl.data.manifest import Manifest
from speechcl.models.config import ConvSpec
from speechcl.models.feature_encoder import num_frames

TASKS: tuple[str, ...] = ("phone", "ctc", "speaker", "keyword")
SILENCE = "sil"
"""The phone label of frames where no phone is spoken."""

_LIBRISPEECH_STEM = re.compile(r"^([^-/]+)-([^-/]+)-([^-/]+)$")


def label_path(manifest_dir: str | os.PathLike, split: str, task: str) -> Path:
    """The label file of ``task`` for ``split`` (``speaker``: the optional ``.spk`` file)."""
    suffix = {"phone": "phn_frames", "ctc": "ltr", "speaker": "spk", "keyword": "kw"}[task]
    return Path(manifest_dir) / f"{split}.{suffix}"


def dictionary_path(manifest_dir: str | os.PathLike, task: str) -> Path | None:
    """The symbol list of ``task`` (``None`` for ``speaker``: its classes are the training speakers)."""
    name = {"phone": "dict.phn.txt", "ctc": "dict.ltr.txt", "keyword": "dict.kw.txt"}.get(task)
    return None if name is None else Path(manifest_dir) / name


def read_symbols(path: str | os.PathLike) -> list[str]:
    """The symbols of a ``SYMBOL COUNT`` file, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line or a repeated symbol (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the probe needs its symbol list ('SYMBOL COUNT' lines)")
    symbols: list[str] = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected 'SYMBOL COUNT', got {line!r}")
        if parts[0] in symbols:
            raise ValueError(f"{path}:{number}: symbol {parts[0]!r} appears twice")
        symbols.append(parts[0])
    if not symbols:
        raise ValueError(f"{path} lists no symbols")
    return symbols


def read_aligned_lines(path: str | os.PathLike, manifest: Manifest, manifest_path: str | os.PathLike) -> list[str]:
    """The lines of a label file that has one line per manifest item.

    Raises:
        FileNotFoundError: no such file (the message says which task needs it).
        ValueError: the line count differs from the manifest's item count.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the probe needs one label line per item of {manifest_path}")
    lines = read_lines(path)
    if len(lines) != len(manifest):
        raise ValueError(f"{path} has {len(lines)} lines but {manifest_path} lists {len(manifest)} files; the "
                         "label file must have exactly one line per manifest item, in the same order")
    return lines


def read_phone_frames(path: str | os.PathLike, manifest: Manifest, manifest_path: str | os.PathLike,
                      conv_layers: Sequence[ConvSpec]) -> list[list[str]]:
    """Per item, its phone label per model frame, checked against the model's frame count.

    Args:
        conv_layers: the model's feature encoder (``cfg.conv_layers``): item ``i`` must have
            ``num_frames(manifest.sizes[i], conv_layers)`` labels.

    Raises:
        ValueError: a line whose label count is not the model's frame count (names the file, the line and
            both counts), or a line count that differs from the manifest's.
    """
    lines = read_aligned_lines(path, manifest, manifest_path)
    out = []
    for number, (line, size) in enumerate(zip(lines, manifest.sizes), start=1):
        labels = line.split()
        frames = num_frames(size, conv_layers)
        if len(labels) != frames:
            raise ValueError(f"{path}:{number}: {len(labels)} phone labels, but the model makes {frames} frames of "
                             f"the {size} samples of {manifest.paths[number - 1]}; the frame labels must be made "
                             "at this model's frame rate (one per 20 ms frame, its conv geometry)")
        out.append(labels)
    return out


def speaker_of_path(rel: str) -> str | None:
    """The speaker of a LibriSpeech-style path (``.../103/1240/103-1240-0000.flac`` → ``"103"``), else ``None``."""
    stem = PurePosixPath(rel).stem
    match = _LIBRISPEECH_STEM.match(stem)
    return match.group(1) if match else None


def read_speakers(manifest_dir: str | os.PathLike, split: str, manifest: Manifest,
                  manifest_path: str | os.PathLike) -> list[str]:
    """Speaker id per item: ``D/S.spk`` when it exists, else taken from LibriSpeech-style paths.

    Raises:
        ValueError: a path without a speaker when there is no ``.spk`` file, or an empty line in it.
    """
    path = label_path(manifest_dir, split, "speaker")
    if path.is_file():
        speakers = [line.strip() for line in read_aligned_lines(path, manifest, manifest_path)]
        for number, speaker in enumerate(speakers, start=1):
            if not speaker:
                raise ValueError(f"{path}:{number}: empty speaker id")
        return speakers
    out = []
    for number, rel in enumerate(manifest.paths, start=2):
        speaker = speaker_of_path(rel)
        if speaker is None:
            raise ValueError(f"{manifest_path}:{number}: cannot tell the speaker of {rel!r} (not a LibriSpeech-style "
                             f"'<spk>-<chapter>-<utt>' name) and there is no {path}; write one speaker id per "
                             "manifest line there")
        out.append(speaker)
    return out


def holdout_split(groups: Sequence[Hashable], fraction: float) -> tuple[list[int], list[int]]:
    """Split item indices into ``(train, test)`` deterministically, holding out ``fraction`` of each group.

    Within each group (a class, or one group for everything), items are taken in order and the ``j``-th
    goes to test when ``round((j + 1) * fraction)`` exceeds ``round(j * fraction)``: with 0.2, the 3rd, 8th,
    13th... item of every group of at least three.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction}")
    seen: dict[Hashable, int] = {}
    train, test = [], []
    for index, group in enumerate(groups):
        j = seen.get(group, 0)
        seen[group] = j + 1
        (test if int((j + 1) * fraction + 0.5) > int(j * fraction + 0.5) else train).append(index)
    return train, test


def evenly_spaced(count: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(count)`` (all of them when ``limit`` is ``None`` or larger)."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit <= 0:
        raise ValueError(f"--max-utterances must be positive, got {limit}")
    return [i * count // limit for i in range(limit)]
