"""Length-sorted batching: the one packing rule behind training samplers, evaluation and extraction.

Items are sorted by length and packed greedily in that order: an item joins the current batch unless
the batch already holds ``max_batch_size`` items or its padded size with the newcomer,
``(len(batch) + 1) * max(length in batch)``, would exceed ``max_tokens`` (fairseq's ``--max-tokens``).
Neighbours in length share a batch, so little is padded. An item longer than ``max_tokens`` ends up in
a batch of its own; callers that cannot accept that (training) check for such items first.

Ties in length keep index order, or a seeded random order when a generator is given (so batch
composition can change from epoch to epoch). The function is pure: the caller owns the generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_sorted_batches(sizes: Sequence[int] | np.ndarray, max_tokens: int | None = None,
                          max_batch_size: int | None = None, *, longest_first: bool = False,
                          rng: np.random.Generator | None = None) -> list[list[int]]:
    """Group item indices into batches of similar length (see the module docstring).

    Args:
        sizes: ``[num_items]`` length of each item in samples, as it will be batched.
        max_tokens: bound on the padded batch size ``len(batch) * max(size)`` in samples; ``None``: no bound.
        max_batch_size: bound on items per batch; ``None``: no bound.
        longest_first: sort by decreasing length (evaluation, extraction) instead of increasing (training).
        rng: breaks ties in length at random (one ``permutation`` draw); ``None``: ties keep index order.

    Returns:
        batches of item indices in sorted order; every index appears exactly once.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1:
        raise ValueError(f"sizes must be 1-D [num_items], got shape {sizes.shape}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
    if max_batch_size is not None and max_batch_size <= 0:
        raise ValueError(f"max_batch_size must be positive or None, got {max_batch_size}")
    order = np.arange(len(sizes)) if rng is None else rng.permutation(len(sizes))
    keys = -sizes[order] if longest_first else sizes[order]
    order = order[np.argsort(keys, kind="stable")]
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for index in order.tolist():
        size = int(sizes[index])
        full = max_batch_size is not None and len(batch) >= max_batch_size
        too_big = max_tokens is not None and (len(batch) + 1) * max(longest, size) > max_tokens
        if batch and (full or too_big):
            batches.append(batch)
            batch, longest = [], 0
        batch.append(index)
        longest = max(longest, size)
    if batch:
        batches.append(batch)
    return batches
