"""Streaming training batches from tar shards (:mod:`speechcl.data.shards`), with exact mid-epoch resume.

How an epoch is read, on rank ``r`` of ``W``, with ``S = max(1, num_workers)`` streams per rank (one per
DataLoader worker):

1. **Shard order.** The shards are shuffled with ``(seed, epoch)`` and dealt out to the ``W * S``
   streams, each to the stream holding the least audio so far, ranks interleaved (the first ``W``
   shards go to ``W`` different ranks); :func:`assign_shards`. A stream reads its shards front to back.
2. **Shuffle buffer with length bucketing.** A stream fills a buffer of ``shuffle_buffer`` items in
   reading order. When it is full, the buffer is packed into batches of similar length bounded by
   ``max_tokens`` padded samples (:func:`~speechcl.data.batching.length_sorted_batches`, the rule
   :class:`~speechcl.data.sampler.BucketBatchSampler` uses, ties broken at random), batches leave in a
   random order until half of the buffered items are gone, and reading goes on; at the end of the
   stream everything left leaves. :func:`buffer_batches`, a pure function of the lengths.
3. **Equal batch counts.** DDP needs every rank to run the same number of steps: ranks with fewer
   batches split their fullest batches in halves (the bound still holds, every item stays) until they
   have as many as the rank with most; only a rank with too few items to split further makes the
   others drop batches, with a warning. :func:`balance_ranks`.
4. **Order on a rank.** Its streams' batches round robin: stream 0's first, stream 1's first, ...

Steps 1-4 need item lengths only, which the index holds, so the whole epoch plan is computed before any
audio is read, on every rank for every rank (about 0.7 s per epoch for LibriSpeech 960 h's 281k items on
one core, whatever the number of ranks): ``len(loader)`` is known and equal on all ranks. The workers are
persistent; each learns the epoch and its starting batch from a small shared tensor at the start of a
pass and computes the same plan itself. Worker ``w`` runs stream ``w``: the items of its batches lie in its
own shards, within a window of ``shuffle_buffer`` items that moves front to back through them; each item
is fetched with one positioned read at the byte offset the index gives (no tar is unpacked or scanned
for it), decoded and cropped as :class:`~speechcl.data.dataset.AudioDataset` does (same crop offsets for
the same item id and epoch), and the batch is collated in the worker. The main process hands batches
out in the plan's order, holding the few that arrive early (torch's DataLoader interleaves workers in
an order of its own), so the sequence never depends on worker timing.

**Exact resume.** The loader's ``state_dict()`` is plain ints: the epoch, the position (batches of this
epoch handed to the training loop), per stream the batches it has handed out and the shard and item
offset of its first unread item, and the settings the plan depends on (seed, world size, streams,
``max_tokens``, ``shuffle_buffer``, item and shard counts). Every random choice of an epoch (shard
order, tie-breaking and batch order in each buffer, crops) comes from a generator seeded with ``(seed,
epoch, stream)`` or ``(seed, epoch, item)``, so ``(seed, epoch)`` is the complete RNG state: no
generator state is pickled and ``trainer_state.pt`` loads with ``weights_only=True``. On resume the
saved epoch's plan is recomputed from the lengths (no audio), the saved stream positions are checked
against it (a changed index or setting fails loudly instead of training on another order), and each
worker starts at its stream's next batch, seeking straight to its items' byte offsets. The cost is one
plan computation plus the batches' own reads, whatever the position in the epoch: nothing is replayed.
The same world size, ``num_workers`` (the number of streams), seed, ``max_tokens``, ``shuffle_buffer``
and shards are needed to resume; :meth:`ShardStreamSampler.load_state_dict` names what differs.

This is the small piece written here rather than taken from the ``webdataset`` library: its pipeline
(shard lists split by node and worker, a shuffle buffer) reads tars sequentially and keeps no position,
so resuming means replaying the epoch up to the interruption, and its shuffle buffer's content is lost
with the process. The tars themselves stay standard WebDataset tars.
"""

from __future__ import annotations

import bisect
import heapq
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechcl.audio.io import AudioError
from speechcl.data.batching import length_sorted_batches
from speechcl.data.dataset import AudioDataset
from speechcl.data.frame_labels import read_frame_labels
from speechcl.data.labels import Dictionary, read_lines
from speechcl.data.loader import stop_workers_at_exit, worker_init
from speechcl.data.manifest import Manifest, read_manifest
from speechcl.data.sampler import _distributed_defaults
from speechcl.data.shards import ShardIndex, index_path, shard_key

FORMATS = ("manifest", "shards")
"""Values of ``data.format``: ``<manifest_dir>/<subset>.tsv`` manifests or ``<shards_dir>`` tar shards."""


def check_format(data_format: str, manifest_dir: str, shards_dir: str) -> None:
    """``ValueError`` unless ``data_format`` is known and its folder is set."""
    if data_format not in FORMATS:
        raise ValueError(f"data.format must be one of {', '.join(FORMATS)}, got {data_format!r}")
    if data_format == "manifest" and not manifest_dir:
        raise ValueError("data.manifest_dir is required: the folder with <subset>.tsv manifests (or set "
                         "data.format=shards and data.shards_dir)")
    if data_format == "shards" and not shards_dir:
        raise ValueError("data.shards_dir is required with data.format=shards: the OUT folder of "
                         "`speechcl prepare shards`")


# ----------------------------------------------------------------------------- the plan (pure functions)


def assign_shards(shard_samples: Sequence[int], world_size: int, num_streams: int, seed: int | None,
                  epoch: int = 0) -> list[list[list[int]]]:
    """Deal shards out to streams: ``[rank][stream]`` -> shard numbers in reading order.

    Args:
        shard_samples: ``[num_shards]`` audio of each shard in samples (empty shards are left out).
        world_size, num_streams: ranks, and streams per rank.
        seed: shuffles the shard order with ``(seed, epoch)``; ``None`` keeps index order.

    Shards go, in that order, to the stream with the least audio so far; ties to the lowest slot,
    slot ``g`` being stream ``g // world_size`` of rank ``g % world_size``.
    """
    if world_size < 1 or num_streams < 1:
        raise ValueError(f"world_size and num_streams must be >= 1, got {world_size} and {num_streams}")
    n = len(shard_samples)
    order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch, 0]).permutation(n)
    slots: list[list[int]] = [[] for _ in range(world_size * num_streams)]
    heap = [(0, g) for g in range(len(slots))]
    for shard in order.tolist():
        if shard_samples[shard] <= 0:
            continue
        load, g = heapq.heappop(heap)
        slots[g].append(shard)
        heapq.heappush(heap, (load + int(shard_samples[shard]), g))
    return [[slots[s * world_size + r] for s in range(num_streams)] for r in range(world_size)]


def buffer_batches(sizes: Sequence[int] | np.ndarray, buffer_size: int, max_tokens: int,
                   max_batch_size: int | None = None, rng: np.random.Generator | None = None
                   ) -> tuple[list[list[int]], list[int]]:
    """Batches of one stream through a shuffle buffer with length bucketing (step 2 of the module docstring).

    Args:
        sizes: ``[n]`` item lengths in reading order, as batched.
        buffer_size: items buffered before batches leave (>= 1).
        max_tokens, max_batch_size: the bounds of :func:`~speechcl.data.batching.length_sorted_batches`.
        rng: breaks length ties and orders the batches; ``None``: ties by position, batches shortest first.

    Returns:
        ``(batches, reads)``: batches of positions in ``0..n-1`` (each exactly once), and for each batch
        the number of items read when it left the buffer.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if buffer_size < 1:
        raise ValueError(f"shuffle_buffer must be at least 1 item, got {buffer_size}")
    batches: list[list[int]] = []
    reads: list[int] = []
    buffer: list[int] = []

    def emit(read: int, everything: bool) -> list[int]:
        packed = length_sorted_batches(sizes[buffer], max_tokens, max_batch_size, rng=rng)
        order = range(len(packed)) if rng is None else rng.permutation(len(packed)).tolist()
        goal = len(buffer) if everything else (len(buffer) + 1) // 2
        gone: set[int] = set()
        for j in order:
            if len(gone) >= goal:
                break
            batch = [buffer[i] for i in packed[j]]
            batches.append(batch)
            reads.append(read)
            gone.update(batch)
        return [p for p in buffer if p not in gone]

    for position in range(len(sizes)):
        buffer.append(position)
        if len(buffer) >= buffer_size:
            buffer = emit(position + 1, everything=False)
    if buffer:
        emit(len(sizes), everything=True)
    return batches, reads


def balance_ranks(batches: list[list[list[list[int]]]], reads: list[list[list[int]]]) -> int:
    """Give every rank the same number of batches, in place (step 3 of the module docstring).

    ``batches[rank][stream]`` are a stream's batches, ``reads[rank][stream]`` their read counts (a split
    batch's halves keep it). Returns the number of items dropped (0 unless some rank has fewer items
    than the others have batches).
    """
    counts = [sum(len(s) for s in rank) for rank in batches]
    items = [sum(len(b) for s in rank for b in s) for rank in batches]
    target = min(max(counts), min(items))
    for rank, rank_reads in zip(batches, reads):
        missing = target - sum(len(s) for s in rank)
        while missing > 0:  # split the fullest batches (ties: earliest stream, then earliest batch)
            fullest = sorted(((len(b), s, k) for s, stream in enumerate(rank) for k, b in enumerate(stream)
                              if len(b) > 1), key=lambda t: (-t[0], t[1], t[2]))[:missing]
            chosen = {(s, k) for _, s, k in fullest}
            for s, stream in enumerate(rank):
                if not any(c[0] == s for c in chosen):
                    continue
                new_batches, new_reads = [], []
                for k, (batch, read) in enumerate(zip(stream, rank_reads[s])):
                    halves = [batch[: len(batch) // 2], batch[len(batch) // 2:]] if (s, k) in chosen else [batch]
                    new_batches += halves
                    new_reads += [read] * len(halves)
                rank[s], rank_reads[s] = new_batches, new_reads
            missing -= len(chosen)
    dropped = 0
    for rank, rank_reads in zip(batches, reads):
        while sum(len(s) for s in rank) > target:  # from the end of the stream with the most batches
            s = max(range(len(rank)), key=lambda i: len(rank[i]))
            dropped += len(rank[s].pop())
            rank_reads[s].pop()
    return dropped


# ----------------------------------------------------------------------------- dataset, plan, loader


def index_frame_labels(index: ShardIndex, manifest_path: str | Path, label_path: str | Path,
                       conv_layers: Sequence[Any]) -> list[np.ndarray]:
    """The frame labels (``speechcl cluster``'s ``<split>.<ext>``, one line per manifest item) of every item of
    ``index``, in index order: the shards keep each item's manifest line (``manifest_index``), so labels made
    for the manifest the shards were written from — before or after writing them — need no new shards.

    Raises:
        ValueError: the index has no manifest lines (written by an older speechcl), or ``manifest_path`` is not
            the manifest the shards were written from (an item's path or length differs; the message names both).
        FileNotFoundError / ValueError: as :func:`~speechcl.data.frame_labels.read_frame_labels`.
    """
    where = index_path(index.directory, index.split)
    if index.manifest_index is None:
        raise ValueError(f"{where} records no manifest line per item, so frame labels cannot be matched to its "
                         "items: re-run speechcl prepare shards (a rerun keeps the shards that check out)")
    manifest = read_manifest(manifest_path)
    rows = index.manifest_index
    for item, row in enumerate(rows.tolist()):
        bad = not 0 <= row < len(manifest)
        if bad or shard_key(manifest.paths[row]) != index.keys[item] or manifest.sizes[row] != index.sizes[item]:
            found = "no such line" if bad else f"{manifest.paths[row]} ({manifest.sizes[row]} samples)"
            raise ValueError(f"{where}: item {index.keys[item]} ({index.sizes[item]} samples) was written from line "
                             f"{row + 1} of its manifest ({index.source_manifest}), but {manifest_path} has {found} "
                             "there: the frame labels must belong to the manifest the shards were written from "
                             "(set data.manifest_dir to its folder, or re-run speechcl prepare shards from this one)")
    labels = read_frame_labels(label_path, manifest, conv_layers)
    return [labels[row] for row in rows.tolist()]


class ShardDataset(AudioDataset):
    """The items of a shard index as :class:`~speechcl.data.dataset.AudioDataset` items (same filtering by
    length, crops, labels, collater and ``bad`` items), read from the tars by byte offset.

    Args:
        index: the split's :class:`~speechcl.data.shards.ShardIndex`.
        labels: optional token ids per index item (e.g. from ``<split>.ltr`` beside the index).
        **kwargs: as for :class:`AudioDataset` (``max_sample_size``, ``min_sample_size``, ``pad``,
            ``normalize``, ``random_crop``, ``seed``, and ``frame_labels`` in index order with their
            ``conv_layers``: see :func:`index_frame_labels`).

    Dataset index ``i`` is the ``i``-th item of the index that passes the length filter, as for a manifest.
    """

    def __init__(self, index: ShardIndex, labels: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> None:
        super().__init__(Manifest(str(index.directory), list(index.keys), index.sizes.tolist()), labels=labels,
                         **kwargs)
        self.index = index

    @classmethod
    def from_dir(cls, directory: str | Path, split: str, label_ext: str | None = None,
                 dictionary: Dictionary | None = None, frame_label_path: str | Path | None = None,
                 label_manifest: str | Path | None = None, **kwargs: Any) -> ShardDataset:
        """``<directory>/<split>.index.json``, with the labels ``<directory>/<split>.<label_ext>`` (copied there
        by ``speechcl prepare shards``) encoded by ``dictionary`` when ``label_ext`` is given, and the frame
        labels ``frame_label_path`` of the manifest ``label_manifest`` (the one the shards were written from;
        needs ``conv_layers``) matched to the items by :func:`index_frame_labels`."""
        index = ShardIndex.load(directory, split)
        if frame_label_path is not None:
            if label_manifest is None or kwargs.get("conv_layers") is None:
                raise ValueError(f"frame labels {frame_label_path} need their manifest and conv_layers")
            kwargs["frame_labels"] = index_frame_labels(index, label_manifest, frame_label_path, kwargs["conv_layers"])
        labels = None
        if label_ext:
            path = Path(directory) / f"{split}.{label_ext}"
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: the manifest folder had no {split}.{label_ext} when the "
                                        "shards were written; prepare the labels, then run speechcl prepare shards")
            if dictionary is None:
                raise ValueError(f"labels {path} need a dictionary (Dictionary.load('dict.{label_ext}.txt'))")
            lines = read_lines(path)
            if len(lines) != index.num_items:
                raise ValueError(f"{path} has {len(lines)} lines for {index.num_items} items in the shard index; "
                                 "re-run speechcl prepare shards")
            labels = [dictionary.encode(line) for line in lines]
        return cls(index, labels=labels, **kwargs)

    def path(self, index: int) -> str:
        """``<shard>:<key>`` of dataset item ``index``."""
        return self.index.where(int(self.indices[index]))

    def load_wave(self, item: int) -> torch.Tensor | str:
        """Index item ``item``'s waveform ``[S]``, read from its tar by byte offset, or why it cannot be used."""
        try:
            wave = self.index.read_wave(item)
        except AudioError as err:
            return err.reason
        if wave.numel() != int(self.index.sizes[item]):
            return (f"decoded {wave.numel()} samples but the index says {int(self.index.sizes[item])}; "
                    "re-run speechcl prepare shards")
        return wave


@dataclass
class EpochPlan:
    """One rank's epoch: ``streams[s][k]`` the dataset indices of stream ``s``'s ``k``-th batch; ``order``
    the ``(stream, k)`` of each hand-out position; ``positions[s]`` stream ``s``'s hand-out positions;
    ``frontier[s][k]`` ``(shard, item offset)`` of stream ``s``'s first unread item once ``k`` batches are
    out (``(-1, 0)``: all read); ``dropped`` items no rank got (see :func:`balance_ranks`)."""

    streams: list[list[list[int]]]
    order: list[tuple[int, int]]
    positions: list[list[int]]
    frontier: list[list[tuple[int, int]]]
    dropped: int


class ShardStreamSampler:
    """The batch plan of one rank over a :class:`ShardDataset`, with epoch and position (module docstring).

    Args:
        dataset: the items (lengths as batched: ``dataset.sizes``).
        max_tokens: bound on ``len(batch) * max(size)``, in samples; max_batch_size: on items per batch.
        shuffle: shuffle shards and buffers per epoch with ``(seed, epoch)``; otherwise index order, batches
            shortest first within each buffer, the same every epoch.
        seed: must be equal on all ranks.
        shuffle_buffer: items in each stream's window (more: better mixing and bucketing). Only lengths are
            buffered, in the plan; the audio of a batch is read when the batch is made, so memory does not
            grow with it.
        num_streams: streams per rank (the loader's ``max(1, num_workers)``).
        rank, world_size: default from ``torch.distributed`` when initialised, else 0 and 1.
    """

    def __init__(self, dataset: ShardDataset, max_tokens: int, max_batch_size: int | None = None, shuffle: bool = True,
                 seed: int = 0, shuffle_buffer: int = 1000, num_streams: int = 1, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.index = dataset.index
        self.sizes = np.asarray(dataset.sizes, dtype=np.int64)
        self.raw_items = np.asarray(dataset.indices, dtype=np.int64)  # index item of each dataset index
        self.max_tokens, self.max_batch_size = int(max_tokens), max_batch_size
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, int(seed), int(shuffle_buffer)
        self.num_streams = int(num_streams)
        self.rank, self.world_size = _distributed_defaults(rank, world_size)
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be at least 1 item, got {shuffle_buffer}")
        too_long = np.nonzero(self.sizes > self.max_tokens)[0]
        if too_long.size:
            i = int(too_long[0])
            raise ValueError(f"item {dataset.path(i)} has {int(self.sizes[i])} samples > max_tokens={self.max_tokens} "
                             f"({too_long.size} such items); raise max_tokens, crop with max_sample_size or filter long items")
        # dataset indices of each shard (dataset.indices ascends, shards hold consecutive index items)
        bounds = np.searchsorted(self.raw_items, [r.start for r in self.index.shard_items] + [self.index.num_items])
        self.shard_members = [list(range(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]
        self.shard_samples = [int(self.sizes[m].sum()) for m in self.shard_members]
        usable = sum(s > 0 for s in self.shard_samples)
        if usable < self.world_size:
            raise ValueError(f"{usable} shards with usable items cannot feed {self.world_size} ranks: write at least "
                             f"{self.world_size} (better {self.world_size * self.num_streams * 4}) shards with a smaller "
                             "speechcl prepare shards --shard-size/--shard-mb")
        if usable < self.world_size * self.num_streams:
            warnings.warn(f"{usable} shards for {self.world_size} ranks x {self.num_streams} loader workers: some "
                          "workers get no shard and stay idle; write more, smaller shards", stacklevel=2)
        self.epoch = 0
        self.position = 0  # batches of this epoch handed out
        self._cache: tuple[int, EpochPlan] | None = None
        self.plan()

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's plan for ``epoch`` (default: the current one); the last one is cached."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._make_plan(epoch))
        return self._cache[1]

    def _make_plan(self, epoch: int) -> EpochPlan:
        seed = self.seed if self.shuffle else None
        shards = assign_shards(self.shard_samples, self.world_size, self.num_streams, seed, epoch)
        batches, reads, items = [], [], []
        for rank in range(self.world_size):
            rank_batches, rank_reads, rank_items = [], [], []
            for stream in range(self.num_streams):
                members = [i for shard in shards[rank][stream] for i in self.shard_members[shard]]
                slot = stream * self.world_size + rank
                rng = None if seed is None else np.random.default_rng([seed, epoch, 1, slot])
                local, read = buffer_batches(self.sizes[members], self.shuffle_buffer, self.max_tokens,
                                             self.max_batch_size, rng)
                rank_batches.append([[members[p] for p in b] for b in local])
                rank_reads.append(read)
                rank_items.append(members)
            batches.append(rank_batches)
            reads.append(rank_reads)
            items.append(rank_items)
        dropped = balance_ranks(batches, reads)
        if dropped:
            warnings.warn(f"epoch {epoch}: {dropped} items dropped so that {self.world_size} ranks get as many batches "
                          "each; write more shards or use fewer ranks", stacklevel=3)
        mine, my_reads, my_items = batches[self.rank], reads[self.rank], items[self.rank]
        order = [(s, k) for k in range(max(map(len, mine), default=0)) for s in range(self.num_streams) if k < len(mine[s])]
        positions: list[list[int]] = [[] for _ in range(self.num_streams)]
        for p, (s, _) in enumerate(order):
            positions[s].append(p)
        frontier = [[self._locate(my_items[s], r) for r in [0, *my_reads[s]]] for s in range(self.num_streams)]
        return EpochPlan(mine, order, positions, frontier, dropped)

    def _locate(self, members: list[int], read: int) -> tuple[int, int]:
        """``(shard, item offset)`` of a stream's item ``read`` (its dataset indices ``members``), ``(-1, 0)`` past the end."""
        if read >= len(members):
            return (-1, 0)
        raw = int(self.raw_items[members[read]])
        return int(self.index.shard[raw]), int(self.index.offset[raw])

    def __len__(self) -> int:
        return len(self.plan().order)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (from its first batch); a no-op when already there, to keep a resumed position."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def stream_starts(self) -> list[int]:
        """For each stream, the batches it has handed out at the current position."""
        plan = self.plan()
        return [bisect.bisect_left(plan.positions[s], self.position) for s in range(self.num_streams)]

    def state_dict(self) -> dict[str, Any]:
        """Plain ints and lists (safe for ``torch.load(weights_only=True)``): where to resume."""
        plan = self.plan()
        streams = [{"batch": k, "shard": plan.frontier[s][k][0], "offset": plan.frontier[s][k][1]}
                   for s, k in enumerate(self.stream_starts())]
        return {"format": "shards", "epoch": self.epoch, "position": self.position, "streams": streams,
                **self._settings()}

    def _settings(self) -> dict[str, int]:
        return {"seed": self.seed, "shuffle": int(self.shuffle), "world_size": self.world_size,
                "num_streams": self.num_streams, "num_items": len(self.sizes), "num_shards": self.index.num_shards,
                "max_tokens": self.max_tokens, "max_batch_size": self.max_batch_size or 0,
                "shuffle_buffer": self.shuffle_buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s epoch and position; the shards and the plan's settings must match."""
        if state.get("format") != "shards":
            raise ValueError("the checkpoint's loader state comes from a manifest loader (data.format=manifest): "
                             "resume with data.format=manifest, or start a new exp_dir for data.format=shards")
        hints = {"num_streams": "data.num_workers (one stream per loader worker)", "world_size": "the number of ranks",
                 "num_items": "the shards", "num_shards": "the shards"}
        for key, mine in self._settings().items():
            if key in state and int(state[key]) != mine:
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {key}={mine}; resume with "
                                 f"the same {hints.get(key, 'data settings')}")
        epoch, position = int(state["epoch"]), int(state["position"])
        saved = (self.epoch, self.position)
        self.epoch, self.position = epoch, position
        if position > len(self):
            self.epoch, self.position = saved
            raise ValueError(f"loader state is at batch {position} of epoch {epoch}, which has {len(self)} batches here: "
                             "the shards or data settings changed since the checkpoint")
        if "streams" in state and [dict(s) for s in state["streams"]] != self.state_dict()["streams"]:
            mine_streams = self.state_dict()["streams"]
            self.epoch, self.position = saved
            raise ValueError(f"loader state's stream positions {state['streams']} differ from this plan's {mine_streams} "
                             f"at batch {position} of epoch {epoch}: the shards or data settings changed since the "
                             "checkpoint")


class _StreamEpoch(torch.utils.data.IterableDataset):
    """What each DataLoader worker runs: its stream's batches of the epoch in ``where[0]`` from batch
    ``where[1 + stream]`` on, tagged ``(stream, k, batch)``.

    ``where`` is a shared-memory tensor the loader sets before each pass, so persistent workers (forked once)
    learn the epoch and their start; each worker computes the epoch's plan itself from the lengths (cheap,
    deterministic: the same plan as the main process's)."""

    def __init__(self, dataset: ShardDataset, sampler: ShardStreamSampler) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.where = torch.zeros(1 + sampler.num_streams, dtype=torch.int64).share_memory_()

    def __iter__(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        info = torch.utils.data.get_worker_info()
        stream = 0 if info is None else info.id
        epoch, start = int(self.where[0]), int(self.where[1 + stream])
        batches = self.sampler.plan(epoch).streams[stream]
        for k in range(start, len(batches)):
            yield stream, k, self.dataset.collater([self.dataset[(i, epoch)] for i in batches[k]])


def _as_is(batch: Any) -> Any:
    return batch


class ShardStreamLoader:
    """Iterable over collated batches with ``set_epoch``, ``state_dict`` and ``load_state_dict``: the
    interface of :class:`~speechcl.data.loader.ResumableLoader`, so the trainer takes either.

    Args:
        dataset: the items; sampler: the plan (with ``num_streams == max(1, num_workers)``).
        num_workers: decoding processes, one per stream (0: one stream, read in the main process); they
            persist across passes (epochs, validations).
        pin_memory: default: when CUDA is available; prefetch_factor: batches each worker prepares ahead.

    ``state_dict()['position']`` counts the batches the caller received (not what workers prefetched); a
    pass the caller left early continues from there on the next ``iter()``.
    """

    def __init__(self, dataset: ShardDataset, sampler: ShardStreamSampler, num_workers: int = 0,
                 pin_memory: bool | None = None, prefetch_factor: int = 2) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if sampler.num_streams != max(1, num_workers):
            raise ValueError(f"the sampler plans {sampler.num_streams} streams but {num_workers} workers would read "
                             "them: build it with num_streams=max(1, num_workers)")
        self.dataset, self.sampler = dataset, sampler
        self.num_workers = num_workers
        self._source = _StreamEpoch(dataset, sampler)
        extra: dict[str, Any] = {}
        if num_workers > 0:
            extra = {"prefetch_factor": prefetch_factor, "worker_init_fn": worker_init, "persistent_workers": True}
        self.loader = torch.utils.data.DataLoader(
            self._source, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, **extra)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (a no-op for the current one, so a resumed position is kept)."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from the first one not yet handed out (after a complete pass: the epoch again)."""
        sampler = self.sampler
        plan = sampler.plan()
        if sampler.position >= len(plan.order):
            sampler.position = 0
        self._source.where.copy_(torch.tensor([sampler.epoch, *sampler.stream_starts()]))
        # (persistent workers drop what they had prefetched for an earlier pass)
        batches = stop_workers_at_exit(iter(self.loader))
        early: dict[tuple[int, int], dict[str, Any]] = {}
        while sampler.position < len(plan.order):
            wanted = plan.order[sampler.position]
            while wanted not in early:
                try:
                    stream, k, batch = next(batches)
                except StopIteration:
                    raise RuntimeError(f"stream {wanted[0]} ended before its batch {wanted[1]}") from None
                early[(int(stream), int(k))] = batch
            batch = early.pop(wanted)
            sampler.position += 1
            yield batch


def build_shard_loader(directory: str | Path, split: str, max_tokens: int, max_batch_size: int | None = None,
                       shuffle: bool = True, seed: int = 0, shuffle_buffer: int = 1000, num_workers: int = 0,
                       rank: int | None = None, world_size: int | None = None, label_ext: str | None = None,
                       dictionary: Dictionary | None = None, pin_memory: bool | None = None,
                       **dataset_kwargs: Any) -> ShardStreamLoader:
    """A :class:`ShardStreamLoader` over ``<directory>/<split>.index.json``.

    ``label_ext``/``dictionary``: labels as for :meth:`ShardDataset.from_dir`; ``dataset_kwargs``: the
    :class:`AudioDataset` settings (``max_sample_size``, ``min_sample_size``, ``pad``, ``normalize``,
    ``random_crop``); the rest as for :class:`ShardStreamSampler` and :class:`ShardStreamLoader`.
    """
    dataset = ShardDataset.from_dir(directory, split, label_ext, dictionary, seed=seed, **dataset_kwargs)
    if len(dataset) == 0:
        raise ValueError(f"{directory}/{split}.index.json: no item passes the length filter (min_sample_size="
                         f"{dataset.min_sample_size}, max_sample_size={dataset.max_sample_size})")
    sampler = ShardStreamSampler(dataset, max_tokens, max_batch_size, shuffle=shuffle, seed=seed,
                                 shuffle_buffer=shuffle_buffer, num_streams=max(1, num_workers), rank=rank,
                                 world_size=world_size)
    return ShardStreamLoader(dataset, sampler, num_workers, pin_memory)
