"""k-means on frame features: scikit-learn's ``MiniBatchKMeans`` to fit, an exact nearest-centre search to label.

The fit settings default to those of fairseq's HuBERT recipe (``examples/hubert/simple_kmeans/learn_kmeans.py``:
k-means++ init, batch 10000, 100 iterations, 20 inits, no reassignment, stop after 100 batches without
improvement). Only the centres are kept (a ``.npy``, never a pickle): a frame's label is the index of its nearest
centre in squared Euclidean distance, computed in float64, ties to the lower index, so labels depend on the
centres alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KMeansConfig:
    """What the fit uses (fairseq ``learn_kmeans.py`` defaults)."""

    num_clusters: int  # K (HuBERT: 100 on MFCC for iteration 1, 500 for iteration 2)
    seed: int = 0  # random_state of MiniBatchKMeans (init and batches)
    batch_size: int = 10000
    max_iter: int = 100
    n_init: int = 20
    max_no_improvement: int = 100
    reassignment_ratio: float = 0.0
    init_size: int | None = None  # None: 3 x batch_size, as scikit-learn

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def fit_kmeans(x: np.ndarray, cfg: KMeansConfig) -> tuple[np.ndarray, float]:
    """Fit on ``x [N, D]``; returns ``(centres [K, D] float32, inertia per frame)`` (the mean squared distance
    of ``x`` to its nearest centre).

    Raises:
        ValueError: fewer frames than clusters, or ``x`` holds NaN/Inf.
    """
    from sklearn.cluster import MiniBatchKMeans

    if x.ndim != 2:
        raise ValueError(f"k-means needs features [frames, dim], got shape {x.shape}")
    if cfg.num_clusters < 2:
        raise ValueError(f"--num-clusters must be at least 2, got {cfg.num_clusters}")
    if x.shape[0] < cfg.num_clusters:
        raise ValueError(f"only {x.shape[0]} frames were sampled for {cfg.num_clusters} clusters: raise "
                         "--sample-fraction / --max-frames or lower --num-clusters")
    if not np.isfinite(x).all():
        raise ValueError("the sampled features hold NaN or Inf values; check the audio (speechcl prepare --verify) "
                         "or the model")
    km = MiniBatchKMeans(n_clusters=cfg.num_clusters, init="k-means++", max_iter=cfg.max_iter,
                         batch_size=cfg.batch_size, tol=0.0, max_no_improvement=cfg.max_no_improvement,
                         init_size=cfg.init_size, n_init=cfg.n_init, reassignment_ratio=cfg.reassignment_ratio,
                         random_state=cfg.seed, compute_labels=False, verbose=0)
    km.fit(x)
    centres = km.cluster_centers_.astype(np.float32)
    _, distance = nearest_centres(x, centres, return_distance=True)
    return centres, float(distance.mean())


def nearest_centres(x: np.ndarray, centres: np.ndarray, block: int = 8192, return_distance: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Index of the nearest centre of every row of ``x [N, D]`` among ``centres [K, D]`` (``[N]`` int64) and, when
    asked, the squared distance (``[N]`` float64); float64 arithmetic, ties to the lower index."""
    if x.ndim != 2 or centres.ndim != 2 or x.shape[1] != centres.shape[1]:
        raise ValueError(f"features {x.shape} and centres {centres.shape} must be [N, D] and [K, D] with equal D")
    c = centres.astype(np.float64)
    c_sq = (c * c).sum(1)
    labels = np.empty(x.shape[0], dtype=np.int64)
    dist = np.empty(x.shape[0], dtype=np.float64) if return_distance else None
    for start in range(0, x.shape[0], block):
        xb = x[start: start + block].astype(np.float64)
        d = (xb * xb).sum(1)[:, None] - 2.0 * xb @ c.T + c_sq[None, :]  # [n, K] squared distances
        labels[start: start + block] = d.argmin(1)
        if dist is not None:
            dist[start: start + block] = np.maximum(d.min(1), 0.0)
    return labels, dist


def assign_labels(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Cluster label ``[N]`` int64 of every frame of ``x [N, D]`` (see :func:`nearest_centres`)."""
    return nearest_centres(x, centres)[0]
