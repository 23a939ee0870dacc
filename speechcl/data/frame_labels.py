"""Frame labels beside the manifests: one integer per encoder frame of every utterance (HuBERT's targets).

``speechcl cluster`` (:mod:`speechcl.cluster`) writes, for a manifest ``DIR/<split>.tsv`` and a label name
``ext``:

- ``DIR/<split>.<ext>``: one line per manifest item, in manifest order, holding that utterance's labels
  separated by spaces; the count is the encoder's frame count for the item's length in samples
  (:func:`num_label_frames`: ``floor((L - k) / s) + 1`` per conv layer; 16000 samples -> 49 labels with the
  wav2vec 2.0 stack). An utterance shorter than the receptive field has an empty line.
- ``DIR/<ext>.json``: what made them (:data:`INFO_KEYS`): ``num_clusters``, ``features`` (``mfcc`` or
  ``model``), ``model``, ``layer``, ``frame_stride``, ``receptive_field``, ``conv_layers`` (the
  ``[kernel, stride]`` of each conv layer whose frames the labels follow), ``frame_formula``, ``seed`` and,
  per finished split, its lines, frames and label statistics.

Reading (:func:`read_frame_labels`) checks each line's count against the frame count of its item for the
encoder that will train on them; a mismatch is an error naming the file, the line and both counts, never a
silent shift.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechcl.data.manifest import Manifest
from speechcl.models.feature_encoder import conv_geometry, conv_output_lengths

ConvSpec = Sequence[int]  # (dim, kernel, stride) as in the model config, or (kernel, stride)

INFO_KEYS = ("num_clusters", "features", "model", "layer", "frame_stride", "receptive_field", "conv_layers",
             "frame_formula", "seed")


def _kernel_strides(conv_layers: Sequence[ConvSpec]) -> list[tuple[int, int]]:
    """``[(kernel, stride), ...]`` of a model config's ``(dim, kernel, stride)`` layers (or of the pairs)."""
    return [(int(s[-2]), int(s[-1])) for s in conv_layers]


def frame_geometry(conv_layers: Sequence[ConvSpec]) -> dict[str, Any]:
    """What ``<ext>.json`` records of the frame formula: stride, receptive field, per-layer (kernel, stride)."""
    pairs = _kernel_strides(conv_layers)
    hop, field = conv_geometry([(0, k, s) for k, s in pairs])
    return {"frame_stride": hop, "receptive_field": field, "conv_layers": [list(p) for p in pairs],
            "frame_formula": "frames(L) = floor((L - k) / s) + 1 per conv layer (k, s) of conv_layers"
                             f" = floor((L - {field}) / {hop}) + 1 for L >= {field}, else 0"}


def num_label_frames(sizes: Sequence[int] | np.ndarray, conv_layers: Sequence[ConvSpec]) -> np.ndarray:
    """Encoder frames ``[N]`` (int64) for utterances of ``sizes`` samples (the conv formula, layer by layer)."""
    pairs = [(0, k, s) for k, s in _kernel_strides(conv_layers)]
    lengths = torch.as_tensor(np.asarray(sizes, dtype=np.int64))
    return conv_output_lengths(lengths, pairs).numpy()


def labels_path(manifest_dir: str | os.PathLike, split: str, ext: str) -> Path:
    return Path(manifest_dir) / f"{split}.{ext}"


def info_path(manifest_dir: str | os.PathLike, ext: str) -> Path:
    return Path(manifest_dir) / f"{ext}.json"


def read_label_info(manifest_dir: str | os.PathLike, ext: str) -> dict[str, Any]:
    """The ``<ext>.json`` that ``speechcl cluster`` wrote (FileNotFoundError / ValueError say what to do)."""
    path = info_path(manifest_dir, ext)
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: make the frame labels first with `speechcl cluster "
                                f"{manifest_dir} --ext {ext} ...`, or set data.frame_labels to the --ext "
                                "it was given") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): re-run speechcl cluster") from None
    if not isinstance(info, dict) or type(info.get("num_clusters")) is not int or info["num_clusters"] < 1:
        raise ValueError(f"{path} has no positive integer 'num_clusters': re-run speechcl cluster")
    return info


def check_label_geometry(info: dict[str, Any], conv_layers: Sequence[ConvSpec], source: str) -> None:
    """Raise ``ValueError`` when labels described by ``info`` follow another frame formula than ``conv_layers``."""
    recorded = info.get("conv_layers")
    if not isinstance(recorded, list) or not all(isinstance(p, list) and len(p) == 2 for p in recorded):
        raise ValueError(f"{source} records no frame formula ('conv_layers': [[kernel, stride], ...], got "
                         f"{recorded!r}), so the labels cannot be checked against the encoder's frames: re-run "
                         "speechcl cluster (with --overwrite) to make them with this version")
    ours = frame_geometry(conv_layers)
    if [tuple(p) for p in recorded] != [tuple(p) for p in ours["conv_layers"]]:
        raise ValueError(
            f"{source}: the labels follow frames of stride {info.get('frame_stride')} and receptive field "
            f"{info.get('receptive_field')} samples (conv (kernel, stride) {recorded}), but the model's encoder "
            f"makes frames of stride {ours['frame_stride']} and field {ours['receptive_field']} "
            f"({ours['conv_layers']}): re-run speechcl cluster with --frames-for matching model=")


def manifest_digest(path: str | os.PathLike) -> str:
    """What ``<ext>.json`` records of the manifest a split's labels were made for (a hash of its bytes)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_label_split(info: dict[str, Any], manifest: str | os.PathLike, ext: str, source: str) -> None:
    """Raise ``ValueError`` unless ``info["splits"]`` holds the split of ``manifest`` (``DIR/<split>.tsv``) made
    from this very manifest (its recorded digest equals :func:`manifest_digest` of the file now)."""
    manifest = Path(manifest)
    split = manifest.stem
    redo = (f"re-run speechcl cluster {manifest.parent} --splits {split} --ext {ext} (with the settings of the "
            "other splits)")
    splits = info.get("splits")
    entry = splits.get(split) if isinstance(splits, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"{source} has no finished split '{split}' (its labels are missing or were not completed): "
                         f"{redo}")
    if entry.get("manifest") != manifest_digest(manifest):
        raise ValueError(f"{source}: the labels of '{split}' were made for another version of {manifest} (digest "
                         f"{entry.get('manifest')!r}, now {manifest_digest(manifest)!r}); the manifest changed "
                         f"since: {redo}")


def format_line(labels: np.ndarray) -> str:
    """One label line: the integers separated by single spaces (an empty string for no frames)."""
    return " ".join(map(str, np.asarray(labels, dtype=np.int64).tolist()))


def parse_line(line: str, path: str | os.PathLike, number: int) -> np.ndarray:
    """The labels of line ``number`` (1-based) of ``path`` as int32 ``[frames]`` (ValueError on junk)."""
    try:
        values = np.array(line.split(), dtype=np.int64)
    except ValueError:
        raise ValueError(f"{path} line {number}: expected space-separated integers, got {line[:60]!r}") from None
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{path} line {number}: labels must be non-negative integers, got {values.min()}")
    return values.astype(np.int32)


def read_frame_labels(path: str | os.PathLike, manifest: Manifest, conv_layers: Sequence[ConvSpec]
                      ) -> list[np.ndarray]:
    """The labels of every item of ``manifest`` from ``path``, each ``[frames]`` int32.

    Raises:
        FileNotFoundError: no such file (the message says how to make it).
        ValueError: the line count differs from the manifest's item count, or a line's label count differs
            from the encoder's frame count for its item (the message names the file, the line, the audio file
            and both counts).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"frame labels {path} not found: run `speechcl cluster {path.parent} --splits "
                                f"{path.stem} --ext {path.suffix.lstrip('.')} ...` (every split the run reads "
                                "needs its labels)") from None
    if len(lines) != len(manifest):
        raise ValueError(f"{path} has {len(lines)} lines but its manifest has {len(manifest)} items; they must line "
                         "up: re-run speechcl cluster for this split")
    expected = num_label_frames(manifest.sizes, conv_layers)
    out = []
    for i, line in enumerate(lines):
        labels = parse_line(line, path, i + 1)
        if labels.size != expected[i]:
            raise ValueError(
                f"{path} line {i + 1} ({manifest.paths[i]}, {manifest.sizes[i]} samples): {labels.size} labels "
                f"but the encoder makes {int(expected[i])} frames of it; the labels were made for another frame "
                "formula or another manifest: re-run speechcl cluster")
        out.append(labels)
    return out
