"""Process-group set-up for ``torchrun`` (DDP; gloo on CPU, NCCL on GPU) and small collectives."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``values`` over ranks (returns the input unchanged for one process)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(items: list, info: DistInfo) -> list:
    """The concatenation over ranks (in rank order) of each rank's list of picklable ``items``."""
    if not info.enabled:
        return list(items)
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group; call it before the process exits.

    The collection frees what still holds the group (a finished ``DistributedDataParallel`` sits in a
    reference cycle), so gloo's worker threads stop now: left to interpreter shutdown, they can abort
    the process ("terminate called without an active exception") while releasing their last work.
    """
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()
