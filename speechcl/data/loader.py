"""A resumable DataLoader: worker processes, prefetching, and a sampler position that counts what the
training loop consumed (not what the workers prefetched).

``build_dataloader(dataset, sampler, num_workers=...)`` returns a :class:`ResumableLoader`. Save its
``state_dict()`` in the trainer state and restore it with ``load_state_dict()``: the next pass over the
loader yields exactly the batches of the interrupted epoch that the loop had not received yet.
Workers run one torch thread each and decode audio in parallel (soundfile decodes FLAC at several
hundred times real time per core, so two workers keep ahead of a CPU training step).

Tar shards (``data.format=shards``) are read by :class:`speechcl.data.shard_stream.ShardStreamLoader`,
which has the same interface (``len``, ``set_epoch``, ``state_dict``, ``load_state_dict``, ``dataset``,
``sampler``), so the trainer takes either.
"""

from __future__ import annotations

import atexit
import signal
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from speechcl.data.dataset import AudioDataset
from speechcl.data.sampler import BucketBatchSampler


class _EpochTagged(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Yields the sampler's batches as ``(index, epoch)`` pairs, so workers know the epoch."""

    def __init__(self, sampler: BucketBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.sampler:
            yield [(i, self.sampler.epoch) for i in batch]


def worker_init(worker_id: int) -> None:
    """One thread per worker; SIGTERM and SIGINT ignored: a signal to the whole process group (Ctrl-C, a
    cluster's preemption, ``pkill -f``) reaches the workers too, and a worker killed by it would crash the
    main process before it saves. The main process handles the signal and shuts the workers down itself."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_ITERATORS: weakref.WeakSet[Any] = weakref.WeakSet()  # DataLoader iterators with worker processes
_WORKERS: set[Any] = set()  # and those processes


def stop_workers_at_exit(iterator: Iterator[Any]) -> Iterator[Any]:
    """Have a DataLoader iterator's worker processes stopped when the interpreter exits; returns the iterator.

    Workers ignore SIGTERM (:func:`worker_init`), so when an uncaught exception ends the program while a
    loader is mid-pass, ``multiprocessing``'s exit handler (which terminates, then joins, its daemonic
    children) would wait forever for them. This exit handler, registered after that one and so run before
    it, shuts the iterators' workers down and kills any that outlived their iterator (they hold nothing
    that needs saving)."""
    if hasattr(iterator, "_shutdown_workers"):
        _ITERATORS.add(iterator)
        _WORKERS.intersection_update([w for w in _WORKERS if w.is_alive()])
        _WORKERS.update(getattr(iterator, "_workers", ()))
    return iterator


@atexit.register
def _stop_live_workers() -> None:
    for iterator in list(_ITERATORS):
        iterator._shutdown_workers()
    for worker in list(_WORKERS):
        if worker.is_alive():
            worker.kill()


class ResumableLoader:
    """Iterable over collated batches with ``set_epoch``, ``state_dict`` and ``load_state_dict``.

    Args:
        dataset: the dataset (its ``collater`` batches the items).
        sampler: the batch sampler (holds epoch and position).
        num_workers: decoding processes (0: in the main process).
        pin_memory: pin batches for faster host-to-GPU copies; default: when CUDA is available.
        persistent_workers: keep workers alive across epochs; default: when ``num_workers > 0``.
        prefetch_factor: batches each worker prepares ahead.
    """

    def __init__(self, dataset: AudioDataset, sampler: BucketBatchSampler, num_workers: int = 0,
                 pin_memory: bool | None = None, persistent_workers: bool | None = None,
                 prefetch_factor: int = 2) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.sampler = sampler
        self._epoch = sampler.epoch
        self._position = sampler.position  # batches of this epoch handed to the caller
        extra: dict[str, Any] = {}
        if num_workers > 0:
            extra = {"prefetch_factor": prefetch_factor, "worker_init_fn": worker_init,
                     "persistent_workers": True if persistent_workers is None else persistent_workers}
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=_EpochTagged(sampler), collate_fn=dataset.collater, num_workers=num_workers,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, **extra,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (a no-op for the current one, so a resumed position is kept)."""
        self.sampler.set_epoch(epoch)
        self._sync()

    def _sync(self) -> None:
        if self.sampler.epoch != self._epoch:  # the epoch moved on: start it from the sampler's position
            self._epoch, self._position = self.sampler.epoch, self.sampler.position

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from the first one not yet handed out (after a complete pass: the epoch again)."""
        self._sync()
        if self._position >= len(self.sampler):
            self._position = 0
        # the sampler ran ahead by the prefetched batches; rewind it to what the caller received
        self.sampler.position = self._position
        for batch in stop_workers_at_exit(iter(self.loader)):
            self._position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state with ``position`` = batches of this epoch handed to the caller so far."""
        self._sync()
        state = self.sampler.state_dict()
        state["epoch"], state["position"] = self._epoch, self._position
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self._epoch, self._position = self.sampler.epoch, self.sampler.position


def build_dataloader(dataset: AudioDataset, sampler: BucketBatchSampler, num_workers: int = 0,
                     pin_memory: bool | None = None, persistent_workers: bool | None = None,
                     prefetch_factor: int = 2) -> ResumableLoader:
    """A :class:`ResumableLoader` over ``dataset`` batched by ``sampler`` (arguments as there)."""
    return ResumableLoader(dataset, sampler, num_workers, pin_memory, persistent_workers, prefetch_factor)
