"""``speechcl cluster``'s work: sample frames of one split, fit k-means, label every split (resumable).

For a manifest folder ``DIR``, splits ``S1 S2 …`` and a label name ``ext``:

1. **fit** — utterances of the fit split (the first one unless named) are taken in a seeded random order
   until ``sample_fraction`` of them or ``max_frames`` frames are reached; their features
   (:mod:`speechcl.cluster.features`) are cached in ``DIR/.<ext>.cluster/fit/chunk-NNNNN.npy`` (``chunk_size``
   utterances each), rows beyond ``max_frames`` are dropped at random (seeded), and k-means is fitted
   (:mod:`speechcl.cluster.kmeans`). The centres go to ``DIR/<ext>.centers.npy`` and ``DIR/<ext>.json`` records
   the settings.
2. **label** — every split's utterances, in manifest order and ``chunk_size`` at a time, get the label of each
   frame's nearest centre (cached per chunk in ``DIR/.<ext>.cluster/labels/<split>-<manifest digest>/``, so
   chunks of an earlier version of the manifest are never reused); when all chunks are there
   ``DIR/<split>.<ext>`` is written (one line per manifest line: :mod:`speechcl.data.frame_labels`) and the
   split is entered in ``<ext>.json`` with its statistics and its manifest's digest.

Every file is written atomically; SIGTERM/SIGINT stop the run after the current chunk (:class:`Preempted`). A
rerun with the same settings skips what is done (the fit, finished splits, cached chunks), so an interrupted
run continues; a new split is labelled with the existing centres. Other settings for an existing ``ext`` are
refused unless ``overwrite``, which then removes the earlier run's record, centres, labels and cache (with
equal settings ``overwrite`` removes nothing, so an interrupted ``overwrite`` run continues too). The cache
folder is removed once every split asked for is done (``keep_cache`` keeps it).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from speechcl.audio.io import SAMPLE_RATE, AudioError, load_audio
from speechcl.cluster.features import FrameFeatures
from speechcl.cluster.kmeans import KMeansConfig, assign_labels, fit_kmeans
from speechcl.data.frame_labels import (
    format_line,
    frame_geometry,
    info_path,
    labels_path,
    manifest_digest,
    num_label_frames,
)
from speechcl.data.manifest import Manifest, read_manifest
from speechcl.objectives.hubert import perplexity
from speechcl.utils.io import atomic_path, atomic_write_json, remove_stale_temporaries, write_lines
from speechcl.utils.signals import Preempted, Preemption, preemptible


@dataclass
class ClusterSummary:
    """What one run did."""

    fitted: bool = False  # False: the centres of an earlier run were reused
    fit_frames: int = 0
    inertia: float = float("nan")
    labelled: list[str] = field(default_factory=list)  # splits written by this run
    skipped: list[str] = field(default_factory=list)  # splits that were done already
    seconds: float = 0.0


def centres_path(manifest_dir: Path, ext: str) -> Path:
    return manifest_dir / f"{ext}.centers.npy"


def _save_npy(target: Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def sample_items(frames: np.ndarray, fraction: float, max_frames: int | None, seed: int) -> list[int]:
    """Items (indices into ``frames [N]``, frames per item) to fit on: a seeded random order of the items with
    frames, taken while fewer than ``ceil(fraction · N)`` are taken and their frames stay under ``max_frames``
    (the item that reaches it is included)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--sample-fraction must be in (0, 1], got {fraction}")
    order = np.random.default_rng([seed, 17]).permutation(len(frames))
    limit = math.ceil(fraction * len(frames))
    chosen, total = [], 0
    for i in order:
        if len(chosen) >= limit or (max_frames is not None and total >= max_frames):
            break
        if frames[i] > 0:
            chosen.append(int(i))
            total += int(frames[i])
    return chosen


class _Split:
    """A split's manifest, frame counts and audio."""

    def __init__(self, manifest_dir: Path, name: str, conv_layers: Sequence[Sequence[int]]) -> None:
        self.name = name
        self.path = manifest_dir / f"{name}.tsv"
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest {self.path} not found: run `speechcl prepare` first or fix --splits")
        self.manifest: Manifest = read_manifest(self.path)
        self.frames = num_label_frames(self.manifest.sizes, conv_layers)
        self.digest = manifest_digest(self.path)

    def wave(self, index: int) -> torch.Tensor:
        path = self.manifest.full_path(index)
        try:
            wave, _ = load_audio(path, SAMPLE_RATE)
        except AudioError as err:
            raise ValueError(f"{self.path} item {index + 1}: {err}; every manifest line needs its labels, so fix or "
                             "drop the file (speechcl prepare --verify leaves out unreadable files)") from None
        if wave.numel() != self.manifest.sizes[index]:
            raise ValueError(f"{path}: decoded {wave.numel()} samples but {self.path} says "
                             f"{self.manifest.sizes[index]}; the file changed since preparation: re-run speechcl prepare")
        return wave


def _features(source: FrameFeatures, split: _Split, items: Sequence[int]) -> list[np.ndarray]:
    """Features ``[frames, D]`` of ``items`` of ``split``; frame counts checked against the formula."""
    waves = [split.wave(i) for i in items]
    feats = source(waves, [split.manifest.full_path(i) for i in items])
    for i, f in zip(items, feats, strict=True):
        if f.shape[0] != split.frames[i]:
            raise ValueError(f"{split.manifest.full_path(i)}: {f.shape[0]} feature frames for {split.frames[i]} "
                             "encoder frames")
    return feats


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i: i + size]) for i in range(0, len(items), size)]


def cluster_manifests(manifest_dir: str | Path, splits: Sequence[str], source: FrameFeatures, kmeans: KMeansConfig,
                      ext: str = "km", *, fit_split: str | None = None, sample_fraction: float = 1.0,
                      max_frames: int | None = 250_000, chunk_size: int = 256, overwrite: bool = False,
                      keep_cache: bool = False, progress: bool = True) -> ClusterSummary:
    """Fit k-means on frames of one split and write ``<split>.<ext>`` for each of ``splits`` (see the module
    docstring).

    Raises:
        FileNotFoundError: a manifest is missing.
        ValueError: bad settings, an existing ``ext`` made with other settings (without ``overwrite``), unreadable
            audio, or features whose frame count differs from the encoder's.
        Preempted: a signal stopped the run between chunks (what is done is kept: rerun to continue).
    """
    with preemptible() as stop:
        return _cluster(Path(manifest_dir), splits, source, kmeans, ext, fit_split, sample_fraction, max_frames,
                        chunk_size, overwrite, keep_cache, progress, stop)


def _stop_here(stop: Preemption, where: str) -> None:
    if stop.requested():
        raise Preempted(f"stopped by {stop.name} {where}; run the same command again to continue", stop.signum)


def _cluster(manifest_dir: Path, splits: Sequence[str], source: FrameFeatures, kmeans: KMeansConfig, ext: str,
             fit_split: str | None, sample_fraction: float, max_frames: int | None, chunk_size: int, overwrite: bool,
             keep_cache: bool, progress: bool, stop: Preemption) -> ClusterSummary:
    start = time.perf_counter()
    if not splits:
        raise ValueError("name at least one split (--splits train valid ...)")
    if not ext or "/" in ext or ext.startswith(".") or ext in ("tsv", "ltr", "wrd", "spk", "phn", "json"):
        raise ValueError(f"--ext {ext!r} must be a plain name that is not a manifest or label extension (e.g. km)")
    if chunk_size < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"--chunk-size and --max-frames must be positive, got {chunk_size}, {max_frames}")
    fit_split = fit_split or splits[0]
    geometry = frame_geometry(source.conv_layers)
    fit = _Split(manifest_dir, fit_split, source.conv_layers)
    settings = {"ext": ext, "source": source.describe(), "kmeans": kmeans.to_dict(), "fit_split": fit_split,
                "fit_manifest": fit.digest, "sample_fraction": sample_fraction, "max_frames": max_frames,
                "conv_layers": geometry["conv_layers"], "chunk_size": chunk_size}
    work = manifest_dir / f".{ext}.cluster"
    info_file = info_path(manifest_dir, ext)
    info = _read_info(info_file)
    if info is not None and info.get("settings") != settings:
        if not overwrite:
            raise ValueError(f"{info_file}: labels '{ext}' were made with other settings "
                             f"({_diff(info.get('settings'), settings)}); pass --overwrite to replace them, or "
                             "choose another --ext")
        # nothing of the replaced run is kept: its cache, centres, record and label files (with the same settings,
        # --overwrite keeps them, so an interrupted --overwrite run continues when rerun)
        done = list(info.get("splits", {}))
        for stale in (work, info_file, centres_path(manifest_dir, ext), *(labels_path(manifest_dir, s, ext) for s in done)):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        info = None
    work.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(work)
    _check_work_settings(work, settings)

    summary = ClusterSummary()
    if info is None or not centres_path(manifest_dir, ext).is_file():
        centres, fit_info = _fit(fit, source, kmeans, work, sample_fraction, max_frames, chunk_size, progress, stop)
        _save_npy(centres_path(manifest_dir, ext), centres)
        info = {"num_clusters": kmeans.num_clusters, "features": source.describe()["features"],
                "model": source.describe().get("model"), "layer": source.describe().get("layer"), **geometry,
                "seed": kmeans.seed, "source": source.describe(), "kmeans": kmeans.to_dict(),
                "centers": centres_path(manifest_dir, ext).name, "fit": fit_info, "splits": {}, "settings": settings}
        atomic_write_json(info_file, info)
        summary.fitted, summary.fit_frames, summary.inertia = True, fit_info["frames"], fit_info["inertia"]
    centres = np.load(centres_path(manifest_dir, ext))
    if centres.shape[0] != kmeans.num_clusters:
        raise ValueError(f"{centres_path(manifest_dir, ext)} holds {centres.shape[0]} centres, not "
                         f"{kmeans.num_clusters}: pass --overwrite")

    for name in splits:
        split = fit if name == fit_split else _Split(manifest_dir, name, source.conv_layers)
        done = info["splits"].get(name)
        if done is not None and done.get("manifest") == split.digest and labels_path(manifest_dir, name, ext).is_file():
            summary.skipped.append(name)
            continue
        info["splits"][name] = _label_split(split, source, centres, work, manifest_dir, ext, chunk_size, progress,
                                            stop)
        atomic_write_json(info_file, info)
        summary.labelled.append(name)
    if not keep_cache:
        shutil.rmtree(work, ignore_errors=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _read_info(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a broken record: start again
    return info if isinstance(info, dict) else None


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix: values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _diff(old: Any, new: dict[str, Any]) -> str:
    """``key: old -> new`` for every setting that changed (nested keys dotted)."""
    if not isinstance(old, dict):
        return "no settings recorded"
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys) or "none"


def _check_work_settings(work: Path, settings: dict[str, Any]) -> None:
    """The cache folder belongs to one set of settings: one made with others is cleared (its chunks would not
    fit); one with these settings is kept, whatever --overwrite says."""
    path = work / "settings.json"
    if path.is_file():
        try:
            same = json.loads(path.read_text()) == settings
        except (json.JSONDecodeError, UnicodeDecodeError):
            same = False
        if same:
            return
        for child in work.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    atomic_write_json(path, settings)


def _fit(split: _Split, source: FrameFeatures, kmeans: KMeansConfig, work: Path, fraction: float,
         max_frames: int | None, chunk_size: int, progress: bool, stop: Preemption
         ) -> tuple[np.ndarray, dict[str, Any]]:
    items = sample_items(split.frames, fraction, max_frames, kmeans.seed)
    if not items:
        raise ValueError(f"{split.path}: no utterance is long enough for one encoder frame")
    parts = []
    with tqdm(total=len(items), desc=f"features ({split.name}, fit)", unit="utt", disable=not progress) as bar:
        for c, chunk in enumerate(_chunks(items, chunk_size)):
            _stop_here(stop, f"while sampling features of {split.name} for the fit")
            path = work / "fit" / f"chunk-{c:05d}.npy"
            if path.is_file():
                feats = np.load(path)
            else:
                feats = np.concatenate(_features(source, split, chunk))
                _save_npy(path, feats)
            parts.append(feats)
            bar.update(len(chunk))
    x = np.concatenate(parts)
    if max_frames is not None and x.shape[0] > max_frames:
        keep = np.sort(np.random.default_rng([kmeans.seed, 23]).choice(x.shape[0], max_frames, replace=False))
        x = x[keep]
    if progress:
        print(f"k-means: {kmeans.num_clusters} clusters on {x.shape[0]} frames x {x.shape[1]} dims "
              f"from {len(items)} utterances of {split.name}", flush=True)
    centres, inertia = fit_kmeans(x, kmeans)
    return centres, {"split": split.name, "utterances": len(items), "frames": int(x.shape[0]), "dim": int(x.shape[1]),
                     "inertia": inertia}


def _label_split(split: _Split, source: FrameFeatures, centres: np.ndarray, work: Path, manifest_dir: Path,
                 ext: str, chunk_size: int, progress: bool, stop: Preemption) -> dict[str, Any]:
    folder = work / "labels" / f"{split.name}-{split.digest}"  # chunks of another version of the manifest don't fit
    n = len(split.manifest)
    chunks = _chunks(range(n), chunk_size)
    pending = [c for c in range(len(chunks)) if not (folder / f"chunk-{c:05d}.npy").is_file()]
    with tqdm(total=n, initial=n - sum(len(chunks[c]) for c in pending), desc=f"labels ({split.name})", unit="utt",
              disable=not progress) as bar:
        for c in pending:
            _stop_here(stop, f"while labelling {split.name}")
            items = [i for i in chunks[c] if split.frames[i] > 0]
            feats = _features(source, split, items) if items else []
            labels = assign_labels(np.concatenate(feats), centres) if feats else np.zeros(0, dtype=np.int64)
            _save_npy(folder / f"chunk-{c:05d}.npy", labels.astype(np.int32))
            bar.update(len(chunks[c]))
    lines, counts = [], np.zeros(centres.shape[0], dtype=np.int64)
    for c, chunk in enumerate(chunks):
        labels = np.load(folder / f"chunk-{c:05d}.npy")
        expected = int(sum(split.frames[i] for i in chunk))
        if labels.shape[0] != expected:
            raise ValueError(f"{folder / f'chunk-{c:05d}.npy'} holds {labels.shape[0]} labels for {expected} frames: "
                             "delete the cache folder and rerun")
        counts += np.bincount(labels, minlength=centres.shape[0])
        offset = 0
        for i in chunk:
            lines.append(format_line(labels[offset: offset + split.frames[i]]))
            offset += int(split.frames[i])
    write_lines(labels_path(manifest_dir, split.name, ext), lines)
    total = int(counts.sum())
    return {"lines": n, "frames": total, "manifest": split.digest,
            "majority_frequency": float(counts.max() / total) if total else float("nan"),
            "perplexity": perplexity(torch.from_numpy(counts)), "clusters_used": int((counts > 0).sum())}
