"""Rank simulation for the methods' DDP logic: ``gather_rows`` across threads, one thread per rank."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from speechcl.methods.base import Method


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
