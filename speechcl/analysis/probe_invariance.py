"""How much a probe's score drops when its test audio is transformed: the labelled half of the invariance analysis.

For a probe (:mod:`speechcl.analysis.probe`: ``phone``, ``ctc``, ``speaker`` or ``keyword``) and a set of
:class:`~speechcl.analysis.invariance.Transformation` s, :func:`measure_probe_drops`

1. trains the probe's heads exactly as ``speechcl probe`` does (:func:`~speechcl.analysis.probe.prepare_probe`
   and :func:`~speechcl.analysis.probe.fit_probe`: clean features of the training split from the shared cache
   ``OUT/cache/<model>/<split>/``, one head per selected hidden state and one on the weighted sum);
2. scores every head on the clean test split and on ``t(test)`` for each transformation ``t``. The
   features of ``t(x)`` come from :func:`transformed_features`: the transformed audio (the augmentation
   chain's random draws seeded by ``(seed, manifest row)``, babble talkers taken from the next rows of the
   split) is written as float WAV, extracted by the same cached extraction as the clean features into
   ``OUT/cache/<model>/<split>@<tag>/`` (``tag``: the label and a hash of the transformation and the seed)
   and the audio is deleted again. A rerun, or another probe of the same split, extracts nothing new.
   ``identity`` reuses the clean features themselves, so its drop is exactly 0;
3. maps the labels through the transformation's time map where they are per frame (``phone``): frame ``k``
   of ``t(x)`` takes the label of the frame of ``x`` at the same moment of the original audio, found with
   :func:`~speechcl.analysis.invariance.align_frames` (the alignment the frame-aligned cosine uses, with
   ``"nearest"`` since labels cannot be interpolated), and frames of ``t(x)`` outside ``x`` (what a shift
   pads in) are not scored. ``ctc`` (a transcript), ``speaker`` and ``keyword`` (one label per utterance)
   need no mapping.

The **drop** is how much worse the score gets, in the metric's units: ``clean - transformed`` for accuracy,
``transformed - clean`` for CER; positive means worse. Deterministic given the seed (heads as in the
probe, transformations as in the invariance analysis).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import nn
from tqdm import tqdm

from speechcl.analysis.features_cache import cache_split, model_cache_name
from speechcl.analysis.heads import ProbeHead
from speechcl.analysis.invariance import (
    IDENTITY,
    NO_COMMON_FRAMES,
    InvarianceTables,
    SimilarityAccumulator,
    Transformation,
    align_frames,
    apply_transformation,
)
from speechcl.analysis.probe import (
    UTTERANCE_TASKS,
    PreparedProbe,
    ProbeConfig,
    ProbeResult,
    ProbeSet,
    _units,
    evaluate_head,
    fit_probe,
    pool_features,
    prepare_probe,
)
from speechcl.audio.io import SAMPLE_RATE, AudioError, load_audio
from speechcl.data.manifest import Manifest, read_manifest
from speechcl.features.writers import NpyWriter
from speechcl.models.feature_encoder import conv_geometry
from speechcl.models.wav2vec2 import encoder_of
from speechcl.utils.io import atomic_save

WEIGHTED_SUM = "weighted_sum"
"""Row name of the weighted-sum head in :class:`ProbeDrop`."""


# --- labels through the time map ---------------------------------------------------------------------------

def map_frame_labels(labels: np.ndarray, frames_t: int, scale: float, offset: float, hop: int,
                     receptive_field: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame labels of ``x`` carried over to the ``frames_t`` frames of ``t(x)`` through the time map.

    Args:
        labels: ``[T_x]`` one label per frame of ``x``.
        scale, offset: the time map (output sample = ``scale * input sample + offset``).
        hop, receptive_field: the frame geometry in samples.

    Returns:
        ``(frames [N], labels [N])``: the frames of ``t(x)`` that fall inside ``x`` (int64, increasing) and
        the label of the nearest frame of ``x`` at the same moment
        (:func:`~speechcl.analysis.invariance.align_frames` with ``alignment="nearest"``).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"map_frame_labels expects [frames] labels, got shape {labels.shape}")
    aligned = align_frames(frames_t, labels.shape[0], scale, offset, hop, receptive_field, "nearest")
    return aligned.target.numpy(), labels[aligned.lower.numpy()]


def transformed_probe_set(task: str, clean: ProbeSet, features: Mapping[int, np.ndarray | None], scale: float,
                          offset: float, hop: int, receptive_field: int, name: str | None = None) -> ProbeSet:
    """The test set ``clean`` with its features replaced by those of ``t(x)`` (``features[row]``, ``None`` or
    missing where ``t(x)`` has none: the utterance is left out), frame labels mapped (:func:`map_frame_labels`)
    for ``phone``; only the compared frames of ``t(x)`` are kept, so the heads score exactly them.
    """
    kept: list[np.ndarray] = []
    targets: list[Any] = []
    texts: list[str] = []
    rows: list[int] = []
    for j, row in enumerate(clean.rows):
        f = features.get(row)
        if f is None:
            continue
        target = clean.targets[j]
        if task == "phone":
            frames, target = map_frame_labels(target, f.shape[1], scale, offset, hop, receptive_field)
            if frames.size == 0:
                continue
            if frames.size != f.shape[1] or bool((frames != np.arange(f.shape[1])).any()):
                f = np.ascontiguousarray(f[:, frames])
        kept.append(f)
        targets.append(target)
        rows.append(row)
        if clean.texts:
            texts.append(clean.texts[j])
    data = ProbeSet(name or clean.name, kept, targets, texts, rows=rows)
    if task in UTTERANCE_TASKS and kept:
        data.pooled = pool_features(kept)
    return data


# --- features of t(x), cached ------------------------------------------------------------------------------

def transform_tag(t: Transformation, seed: int) -> str:
    """Cache name of ``t`` at ``seed``: its label (made path-safe) and a hash of its name, parameters and seed."""
    digest = hashlib.sha256(json.dumps([t.name, sorted(t.kwargs.items()), int(seed)]).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", t.label).strip("_.")[:60] or "t"
    return f"{slug}-{digest}"


def _babble_rows(t: Transformation, row: int, count: int) -> list[int]:
    from speechcl.audio.augment.chain import TRANSFORMS

    if t.name != "babble":
        return []
    speakers = int(t.kwargs.get("speakers", TRANSFORMS["babble"].params["speakers"].default))
    return [(row + j) % count for j in range(1, min(speakers, count - 1) + 1)]


def transformed_features(t: Transformation, encoder: nn.Module, manifest: Manifest, rows: Sequence[int],
                         directory: str | Path, *, seed: int = 0, normalize: bool = False,
                         device: str | torch.device = "cpu", max_tokens: int | None = None,
                         num_workers: int | None = None, progress: bool = False
                         ) -> tuple[dict[int, np.ndarray | None], list[tuple[str, str]]]:
    """Every hidden state of ``t(x)`` for the items ``rows`` of ``manifest``, extracted once into ``directory``.

    Args:
        t: a transformation other than ``identity`` (whose features are the clean ones).
        encoder: the model (as :func:`~speechcl.analysis.features_cache.cache_split` takes it).
        manifest: the whole split (babble's talkers are the next rows of it, cyclically).
        rows: positions in ``manifest``; each is the item id of the augmentation's random draws.
        directory: ``OUT/cache/<model>/<split>@<tag>`` (:func:`transform_tag`).
        seed, normalize, device, max_tokens, num_workers, progress: as the clean cache.

    Returns:
        ``(row → [L + 1, frames, D] float32 memory-mapped or None, [(path, reason)] of the items left out)``.
    """
    if t.name == IDENTITY:
        raise ValueError("identity needs no transformed features: use the clean ones")
    directory = Path(directory)
    rows = sorted(set(rows))
    request = directory.parent / f"{directory.name}.request.tsv"
    audio = directory.parent / f"{directory.name}.audio"
    rels = [str(PurePosixPath(manifest.paths[r]).with_suffix(".wav")) for r in rows]
    writer = NpyWriter(directory)
    known: dict[str, int] = {}
    if request.is_file():
        previous = read_manifest(request)
        known = dict(zip(previous.paths, previous.sizes))
    failed: list[tuple[str, str]] = []
    if all(rel in known for rel in rels) and all(writer.is_done(str(PurePosixPath(r).with_suffix(""))) for r in rels):
        target = Manifest(str(audio), rels, [known[rel] for rel in rels])  # all cached: no audio needed
    else:
        if t.name == "babble" and len(manifest) < 2:
            return {r: None for r in rows}, [(manifest.full_path(r), "babble needs at least 2 files in the split")
                                             for r in rows]
        target = Manifest(str(audio))
        waves: dict[int, torch.Tensor] = {}

        def wave_of(r: int) -> torch.Tensor:
            if r not in waves:
                waves[r] = load_audio(manifest.full_path(r), SAMPLE_RATE)[0]
            return waves[r]

        for r, rel in tqdm(list(zip(rows, rels)), desc=f"transform {t.label}", unit="file", disable=not progress,
                           dynamic_ncols=True):
            try:
                wave = wave_of(r)
                others = [wave_of(o) for o in _babble_rows(t, r, len(manifest))]
            except AudioError as err:
                failed.append((manifest.full_path(r), err.reason))
                continue
            out, _, _ = apply_transformation(t, wave, seed=seed, item=r, others=others)
            data = out.detach().cpu().numpy().astype(np.float32)
            atomic_save(audio / rel, lambda p, d=data: sf.write(p, d, SAMPLE_RATE, subtype="FLOAT", format="WAV"))
            target.paths.append(rel)
            target.sizes.append(int(data.shape[0]))
            if len(waves) > 64:  # babble reads neighbours; keep only recent ones
                waves.pop(next(iter(waves)))
    cached = cache_split(encoder, target, directory, normalize=normalize, device=device, max_tokens=max_tokens,
                         num_workers=num_workers, progress=progress)
    shutil.rmtree(audio, ignore_errors=True)
    by_rel = dict(zip(target.paths, cached.features))
    failed += cached.failed
    return {r: by_rel.get(rel) for r, rel in zip(rows, rels)}, failed


# --- the drops ---------------------------------------------------------------------------------------------

@dataclass
class ProbeDrop:
    """One probe under the transformations (what ``results.json`` holds under ``probes``).

    Row ``i`` is hidden state ``rows[i]`` (``"0"..``) or the weighted sum (``"weighted_sum"``, last).

    Attributes:
        clean: ``[rows]`` score on the clean test split (the probe's own ``per_layer`` / ``weighted_sum``).
        transformed: ``[rows]`` of ``{label: score on t(test)}`` (``None`` where nothing could be scored).
        drop: ``[rows]`` of ``{label: how much worse than clean}`` (positive = worse; module docstring).
        units: ``{label: frames, letters or utterances scored}`` (``clean`` for the clean split).
        probe: the probe's full result (``speechcl probe``'s results.json).
    """

    task: str
    metric: str
    higher_is_better: bool
    chance: float
    rows: list[str]
    clean: list[float]
    transformed: list[dict[str, float | None]]
    drop: list[dict[str, float | None]]
    units: dict[str, int]
    probe: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worse_by(higher_is_better: bool, clean: float, transformed: float) -> float:
    """How much worse ``transformed`` is than ``clean``: accuracy falls, CER rises (positive = worse)."""
    return clean - transformed if higher_is_better else transformed - clean


def measure_probe_drops(prepared: PreparedProbe, transformations: Sequence[Transformation],
                        features: Mapping[str, Mapping[int, np.ndarray | None]]) -> tuple[ProbeDrop, ProbeResult]:
    """Train the probe's heads (:func:`~speechcl.analysis.probe.fit_probe`) and score each on every ``t(test)``.

    Args:
        prepared: the probe (clean features cached).
        transformations: the columns, in order.
        features: ``{label: {test row: [L + 1, frames, D] of t(x) or None}}`` for every non-identity label
            (:func:`transformed_features`); ``identity`` uses the clean features.
    """
    cfg, test = prepared.cfg, prepared.test
    heads: list[tuple[list[int], ProbeHead]] = []
    result = fit_probe(prepared, on_head=lambda chosen, head: heads.append((chosen, head)))
    hop, receptive_field = conv_geometry(prepared.conv_layers)
    rows = [str(chosen[0]) if len(chosen) == 1 else WEIGHTED_SUM for chosen, _ in heads]
    clean = [*(result.per_layer[r] for r in rows[:-1]), result.weighted_sum]
    transformed: list[dict[str, float | None]] = [{} for _ in rows]
    drop: list[dict[str, float | None]] = [{} for _ in rows]
    units = {"clean": _units(cfg.task, test)}
    device = torch.device(cfg.device)
    for t in transformations:
        if t.name == IDENTITY:
            chosen_features: Mapping[int, np.ndarray | None] = dict(zip(test.rows, test.features))
        else:
            chosen_features = features[t.label]
        scale, offset = t.time_map()
        data = transformed_probe_set(cfg.task, test, chosen_features, scale, offset, hop, receptive_field,
                                     name=f"{test.name}@{t.label}")
        units[t.label] = _units(cfg.task, data) if len(data) else 0
        for i, (chosen, head) in enumerate(heads):
            if not len(data):
                transformed[i][t.label] = drop[i][t.label] = None
                continue
            value = evaluate_head(cfg.task, head, data, chosen, cfg.batch_size, device, prepared.dictionary)
            transformed[i][t.label] = value
            drop[i][t.label] = worse_by(result.higher_is_better, clean[i], value)
    summary = ProbeDrop(task=cfg.task, metric=result.metric, higher_is_better=result.higher_is_better,
                        chance=result.chance, rows=rows, clean=clean, transformed=transformed, drop=drop, units=units,
                        probe=result.to_dict())
    return summary, result


def feature_directory(output: str | Path, model: str, split: str, t: Transformation, seed: int) -> Path:
    """``OUT/cache/<model>/<split>@<tag>``: where :func:`transformed_features` keeps ``t(split)``'s features."""
    return Path(output) / "cache" / model_cache_name(model) / f"{split}@{transform_tag(t, seed)}"


# --- the probes beside the similarity tables ---------------------------------------------------------------

@dataclass
class ProbeRun:
    """What :func:`run_probe_drops` measured: a :class:`ProbeDrop` per probe, and cosine/CKA ``tables`` over the
    probes' test utterances (from the same clean and transformed features), which ``inputs`` describes."""

    drops: list[ProbeDrop]
    tables: InvarianceTables
    inputs: dict[str, Any]
    skipped: list[dict[str, str]]
    hop: int
    receptive_field: int
    normalize: bool


def run_probe_drops(probes: Sequence[ProbeConfig], transformations: Sequence[Transformation],
                    loaded: tuple[nn.Module, Any], *, seed: int = 0, alignment: str = "linear") -> ProbeRun:
    """Prepare each probe (clean features cached), extract ``t(test)`` once per transformation for all of them,
    measure cosine and CKA on those features, then train and score the heads (:func:`measure_probe_drops`).

    Args:
        probes: probes of one model on one test split of one manifest directory, writing into one output
            (tasks and head settings may differ).
        loaded: ``(model, metadata)`` of ``probes[i].model``.
        seed: the transformations' random draws (the heads use each probe's own seed).
        alignment: of the cosine and CKA (labels always take the nearest frame).

    Raises:
        ValueError: probes on different models, splits, manifest directories or outputs; as
            :func:`~speechcl.analysis.probe.run_probe`.
    """
    if not probes:
        raise ValueError("run_probe_drops needs at least one probe")
    first = probes[0]
    for p in probes[1:]:
        for name in ("model", "manifest_dir", "test", "output"):
            if getattr(p, name) != getattr(first, name):
                raise ValueError(f"the probes must share {name}: got {getattr(first, name)!r} and {getattr(p, name)!r}")
    prepared = [prepare_probe(p, loaded)[0] for p in probes]
    encoder = encoder_of(loaded[0])
    hop, receptive_field = conv_geometry(encoder.cfg.conv_layers)
    normalize = prepared[0].normalize
    manifest = prepared[0].test_manifest
    clean: dict[int, np.ndarray] = {}
    for p in prepared:
        clean.update(zip(p.test.rows, p.test.features))
    rows = sorted(clean)
    skipped = [{"file": path, "transform": "*", "reason": "no features could be extracted"}
               for path in dict.fromkeys(path for p in prepared for path in p.skipped)]
    features: dict[str, dict[int, np.ndarray | None]] = {}
    for t in transformations:
        if t.name == IDENTITY:
            continue
        directory = feature_directory(first.output, first.model, first.test, t, seed)
        features[t.label], failed = transformed_features(
            t, encoder, manifest, rows, directory, seed=seed, normalize=normalize, device=first.device,
            max_tokens=first.max_tokens, num_workers=first.num_workers, progress=first.progress)
        skipped += [{"file": path, "transform": t.label, "reason": reason} for path, reason in failed]
    del encoder

    tables = InvarianceTables(layers=list(range(prepared[0].num_layers + 1)))
    for t in transformations:
        similarity = SimilarityAccumulator(hop, receptive_field, alignment)
        scale, offset = t.time_map()
        for row in rows:
            hx = torch.from_numpy(np.array(clean[row]))  # a copy: the cache is memory-mapped read-only
            other = clean[row] if t.name == IDENTITY else features[t.label].get(row)
            if other is None:
                continue
            ht = hx if other is clean[row] else torch.from_numpy(np.array(other))
            if not similarity.add(hx, ht, scale, offset):
                skipped.append({"file": manifest.paths[row], "transform": t.label, "reason": NO_COMMON_FRAMES})
        tables.add(t.label, similarity)

    drops = [measure_probe_drops(p, transformations, features)[0] for p in prepared]
    inputs = {"path": str(Path(first.manifest_dir) / f"{first.test}.tsv"), "count": len(rows),
              "files": [manifest.paths[r] for r in rows],
              "seconds": round(sum(manifest.sizes[r] for r in rows) / SAMPLE_RATE, 3),
              "note": "the probes' test utterances; their clean and transformed features are the probes' own"}
    return ProbeRun(drops, tables, inputs, skipped, hop, receptive_field, normalize)
