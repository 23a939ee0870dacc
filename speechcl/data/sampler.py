"""Length-bucketed batching by total samples, DDP-aware and resumable mid-epoch.

The pure part, :func:`batch_by_size`, packs items shortest first with
:func:`speechcl.data.batching.length_sorted_batches` (ties broken by a seeded shuffle, so batch
composition changes from epoch to epoch): the padded size ``len(batch) * max(size in batch)`` of every
batch stays within ``max_tokens`` (fairseq's ``--max-tokens``), and similar lengths share a batch so
little is padded. The batch order is then shuffled with ``(seed, epoch)``.

Sizes are the lengths *as batched* (after cropping to ``max_sample_size``; see
:attr:`speechcl.data.dataset.AudioDataset.sizes`). An item longer than ``max_tokens`` is rejected
with a ``ValueError``: raise ``max_tokens`` or lower ``max_sample_size`` (crop) / filter long items.

Distributed: all ranks compute the same batch list; :func:`divisible_batches` makes its length a
multiple of ``world_size`` by splitting the batches with the most items (splitting never breaks the
``max_tokens`` bound), and rank ``r`` takes batches ``r, r + world_size, ...``. So every rank gets the
same number of batches and every item appears exactly once per epoch across ranks. Only when the
batches cannot be split any further (fewer items than ranks) are the last ``len % world_size``
batches dropped, with a warning.

:class:`BucketBatchSampler` wraps this with state: ``set_epoch(e)``, and ``state_dict()`` /
``load_state_dict()`` holding the epoch and the number of batches already yielded, so a resumed run
continues with exactly the remaining batches of that epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from speechcl.data.batching import length_sorted_batches


def batch_by_size(sizes: Sequence[int] | np.ndarray, max_tokens: int, max_batch_size: int | None = None,
                  seed: int | None = 0, epoch: int = 0) -> list[list[int]]:
    """Pack item indices into batches whose padded size ``len(batch) * max(size)`` is ``<= max_tokens``.

    Args:
        sizes: ``[num_items]`` length of each item in samples, as it will be batched.
        max_tokens: bound on the padded batch size in samples (fairseq ``max_tokens``; e.g. 1.4M for BASE).
        max_batch_size: optional bound on items per batch.
        seed: seed of the tie-breaking and batch-order shuffle; ``None`` keeps items sorted by size
            (ties by index) and batches in ascending length order.
        epoch: mixed into the seed so every epoch draws a different order.

    Returns:
        batches of item indices; every index appears exactly once.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1:
        raise ValueError(f"sizes must be 1-D [num_items], got shape {sizes.shape}")
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    too_long = np.nonzero(sizes > max_tokens)[0]
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(f"item {i} has {int(sizes[i])} samples > max_tokens={max_tokens} ({too_long.size} such "
                         "items); raise max_tokens, crop with max_sample_size or filter long items")
    rng = None if seed is None else np.random.default_rng([seed, epoch])
    batches = length_sorted_batches(sizes, max_tokens, max_batch_size, rng=rng)
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def divisible_batches(batches: list[list[int]], world_size: int) -> list[list[int]]:
    """Split the fullest batches until ``len(batches) % world_size == 0`` (see the module docstring).

    Deterministic: the batch with the most items (first such) is split in halves, in place.
    When no batch has two items left, the last ``len % world_size`` batches are dropped with a warning.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    batches = [list(b) for b in batches]
    while len(batches) % world_size:
        position = max(range(len(batches)), key=lambda i: len(batches[i]))
        fullest = batches[position]
        if len(fullest) < 2:
            drop = len(batches) % world_size
            warnings.warn(f"{len(batches)} single-item batches cannot be shared evenly by {world_size} ranks; "
                          f"dropping the last {drop} this epoch", stacklevel=2)
            return batches[: len(batches) - drop]
        half = len(fullest) // 2
        batches[position: position + 1] = [fullest[:half], fullest[half:]]
    return batches


def shard_batches(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """Batches ``rank, rank + world_size, ...`` of a list whose length is a multiple of ``world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if len(batches) % world_size:
        raise ValueError(f"{len(batches)} batches cannot be sharded evenly over {world_size} ranks; "
                         "use divisible_batches first")
    return batches[rank::world_size]


def _distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    return rank, world_size


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices bounded by ``max_tokens`` padded samples, for one rank.

    Args:
        sizes: ``[num_items]`` item lengths as batched (``AudioDataset.sizes``).
        max_tokens: bound on ``len(batch) * max(size)``, in samples.
        max_batch_size: optional bound on items per batch.
        shuffle: shuffle per epoch (tie-breaking and batch order) with ``(seed, epoch)``; otherwise
            batches come in ascending length order, the same every epoch.
        seed: shuffle seed; must be equal on all ranks.
        rank, world_size: this process's rank and the number of ranks; default from
            ``torch.distributed`` when initialised, else 0 and 1.

    ``len(sampler)`` is the number of batches this rank gets per epoch (equal on all ranks).
    Iterating yields the batches of the current epoch from the current position; after a complete
    pass, the next iteration repeats the epoch unless ``set_epoch`` moved it on.
    """

    def __init__(self, sizes: Sequence[int] | np.ndarray, max_tokens: int, max_batch_size: int | None = None,
                 shuffle: bool = True, seed: int = 0, rank: int | None = None, world_size: int | None = None) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.max_tokens = int(max_tokens)
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = _distributed_defaults(rank, world_size)
        if len(self.sizes) < self.world_size:
            raise ValueError(f"{len(self.sizes)} items cannot give each of {self.world_size} ranks a batch")
        self.epoch = 0
        self.position = 0  # batches of this epoch already yielded
        self._cache: tuple[int, list[list[int]]] | None = None
        self.batches()  # validate sizes against max_tokens now rather than mid-training

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (cached)."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = batch_by_size(self.sizes, self.max_tokens, self.max_batch_size,
                                    seed=self.seed if self.shuffle else None, epoch=self.epoch)
            batches = divisible_batches(batches, self.world_size)
            self._cache = (self.epoch, shard_batches(batches, self.rank, self.world_size))
        return self._cache[1]

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (from its first batch); a no-op when already there, to keep a resumed position."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        if self.position >= len(batches):
            self.position = 0
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield list(batch)

    def state_dict(self) -> dict[str, Any]:
        """Plain ints (safe for ``torch.load(weights_only=True)``): where to resume."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size,
                "num_items": len(self.sizes), "max_tokens": self.max_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s epoch and position; the data and batching settings must match."""
        if state.get("format", "manifest") != "manifest":
            raise ValueError(f"the loader state was saved by a data.format={state['format']} run; resume it with "
                             f"data.format={state['format']} (this run reads a manifest)")
        for key, mine in (("num_items", len(self.sizes)), ("seed", self.seed), ("world_size", self.world_size),
                          ("max_tokens", self.max_tokens)):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {key}={mine}; "
                                 "resume with the same data, seed, max_tokens and number of ranks")
        epoch, position = int(state["epoch"]), int(state["position"])
        self.epoch, self.position = epoch, 0
        if not 0 <= position <= len(self):
            raise ValueError(f"sampler state position {position} is outside epoch {epoch}'s {len(self)} batches")
        self.position = position
