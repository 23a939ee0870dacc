"""Every hidden state of a frozen model for a manifest's files, extracted once and kept on disk.

The cache of a model and a split lives in ``ROOT/<model name>-<fingerprint>/<split>/``, where the
fingerprint hashes the model's resolved path and the names, sizes and modification times of its files
(so a retrained checkpoint at the same path gets a fresh cache). It is written by
:func:`speechcl.features.extract_to_directory` (``layers="all"``, ``npy`` format: one
``<key>.npy`` of ``[L + 1, frames, D]`` float32 per file, written atomically), which makes it resumable and
skips what exists: a rerun, or another probe of the same model and split, extracts nothing new. Files the
extractor cannot use (undecodable, too short) are reported and left out.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechcl.data.manifest import Manifest, write_manifest
from speechcl.features.extract import ExtractionSummary, extract_to_directory
from speechcl.features.inputs import read_tsv_manifest
from speechcl.features.writers import NpyWriter


def model_fingerprint(path: str | os.PathLike) -> str:
    """12 hex digits identifying the checkpoint at ``path`` (its resolved path and its files' sizes and times)."""
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256(str(path).encode())
    for f in files:
        stat = f.stat()
        digest.update(f"\0{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def model_cache_name(path: str | os.PathLike) -> str:
    """``<readable name>-<fingerprint>`` for the checkpoint at ``path`` (``exp/checkpoints/best`` → ``exp-best-…``)."""
    resolved = Path(path).resolve()
    parts = [p for p in (resolved.parent.parent.name, resolved.parent.name, resolved.name) if p][-2:]
    slug = re.sub(r"[^A-Za-z0-9._]+", "_", "-".join(parts)).strip("_.") or "model"
    return f"{slug[:60]}-{model_fingerprint(resolved)}"


@dataclass
class CachedSplit:
    """The cached features of a manifest's items.

    Attributes:
        features: per item, ``[L + 1, frames, D]`` float32 (memory-mapped), or ``None`` when the extractor
            could not use the file (see ``failed``).
        failed: ``(path, reason)`` of the items left out.
        summary: what the extraction run did (``extracted == 0`` when everything came from the cache).
    """

    features: list[np.ndarray | None]
    failed: list[tuple[str, str]] = field(default_factory=list)
    summary: ExtractionSummary | None = None


def cache_split(model: nn.Module, manifest: Manifest, directory: str | os.PathLike, *, normalize: bool = False,
                device: str | torch.device = "cpu", max_tokens: int | None = None, num_workers: int | None = None,
                progress: bool = True) -> CachedSplit:
    """Extract (or reuse) every hidden state of ``model`` for the items of ``manifest`` into ``directory``.

    Args:
        model: a loaded speechcl model; the cache directory must belong to this model alone (see
            :func:`model_cache_name`), since a loaded model carries no path to check it by.
        manifest: the items (any subset of a split: items already cached are reused).
        directory: ``ROOT/<model name>/<split>``.
        normalize: per-utterance normalisation before the model (what the checkpoint records).
        device, max_tokens, num_workers, progress: as :func:`~speechcl.features.extract_to_directory`.

    Raises:
        ValueError: ``directory`` holds features made with other settings.
        Preempted: SIGTERM/SIGINT stopped the extraction (what is done is kept; rerun to continue).
    """
    directory = Path(directory)
    request = directory.parent / f"{directory.name}.request.tsv"
    write_manifest(request, manifest)
    options = {} if max_tokens is None else {"max_tokens": max_tokens}
    summary = extract_to_directory(model, request, directory, layers="all", fmt="npy", device=device,
                                   normalize=normalize, num_workers=num_workers, progress=progress, **options)
    writer = NpyWriter(directory)
    failed = dict(summary.failed)
    features: list[np.ndarray | None] = []
    for item in read_tsv_manifest(request):
        if item.path in failed or not writer.is_done(item.key):
            features.append(None)
            failed.setdefault(item.path, "no features were extracted")
        else:
            features.append(np.load(writer.path(item.key), mmap_mode="r"))
    return CachedSplit(features, list(failed.items()), summary)
