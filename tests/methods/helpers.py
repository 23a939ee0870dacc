"""Helpers of the method tests: small random batches, seeded generators, and rank simulation for the methods'
DDP logic (``gather_rows`` across threads, one thread per rank)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from speechcl.methods.base import Method


def random_batch(ids: list[int], seed: int, samples: int = 18000) -> dict[str, torch.Tensor]:
    """A collater-shaped batch of noise for items ``ids`` (epoch 0, nothing padded)."""
    g = torch.Generator().manual_seed(seed)
    return {"id": torch.tensor(ids), "epoch": torch.zeros(len(ids), dtype=torch.long),
            "source": torch.randn(len(ids), samples, generator=g) * 0.1,
            "padding_mask": torch.zeros(len(ids), samples, dtype=torch.bool)}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def in_process_all_gather(world: int) -> tuple[threading.local, Callable[[torch.Tensor], torch.Tensor]]:
    """``gather_rows`` across ``world`` threads (one per rank, ``local.rank`` set by each): rows in rank order."""
    barrier, slots = threading.Barrier(world), [None] * world
    local = threading.local()

    def gather(x: torch.Tensor) -> torch.Tensor:
        slots[local.rank] = x.clone()
        barrier.wait()
        out = torch.cat(list(slots))
        barrier.wait()
        return out

    return local, gather


def after_update_on_ranks(ranks: Sequence[Method], local: threading.local, num_updates: int) -> None:
    """Each rank's ``after_update(num_updates)`` in its own thread, as DDP runs them side by side."""

    def run(rank: int) -> None:
        local.rank = rank
        ranks[rank].after_update(num_updates)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(ranks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
