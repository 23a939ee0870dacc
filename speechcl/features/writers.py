"""Where extracted features go: one ``.npy`` per input, large ``.npy`` shards with an index, or HDF5.

Every writer knows which keys are finished (:meth:`is_done`), so a rerun skips them:

- ``npy`` (:class:`NpyWriter`): ``<dir>/<key>.npy``, float32 ``[frames, dim]`` (one layer) or ``[layers,
  frames, dim]``; each file is written atomically, so an existing file is a complete one.
- ``shards`` (:class:`ShardWriter`): features are buffered and written as ``<dir>/shards/features<tag>-
  NNNNN.npy`` of about ``shard_bytes`` each, frames first so each utterance is one contiguous slice:
  ``[total frames, dim]`` or ``[total frames, layers, dim]``. ``<dir>/index<tag>.tsv`` lists ``key, shard
  file, frame offset, frames`` and is rewritten atomically after each shard, so it only names complete
  shards; an interrupted run loses (and recomputes) only its unwritten buffer. ``<tag>`` is empty for an
  unsharded run and ``.shardIofN`` for ``--shard I/N``. Read with :func:`iter_shard_features`.
- ``hdf5`` (:class:`Hdf5Writer`, needs h5py): ``<dir>/features<tag>.h5`` with one dataset per key (shaped as
  the ``.npy`` files); a dataset counts as done once its ``complete`` attribute is set, and the file is
  flushed after each one. HDF5 itself is not crash-safe: a process killed in the middle of a write can
  leave the file unreadable, in which case delete it and rerun (prefer ``npy``/``shards`` where that matters).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from speechcl.utils.io import atomic_save, atomic_write_text

INDEX_HEADER = "key\tshard\toffset\tframes"


class FeatureWriter(Protocol):
    def is_done(self, key: str) -> bool: ...

    def write(self, key: str, features: np.ndarray) -> None: ...

    def close(self) -> None: ...


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.save would append ".npy" to a path
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32))


class NpyWriter:
    """One ``<directory>/<key>.npy`` per input, written atomically."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npy"

    def is_done(self, key: str) -> bool:
        return self.path(key).is_file()

    def write(self, key: str, features: np.ndarray) -> None:
        atomic_save(self.path(key), lambda p: _save_npy(p, features))

    def close(self) -> None:
        pass


def read_shard_index(directory: str | os.PathLike) -> list[tuple[str, str, int, int]]:
    """All ``(key, shard file, offset, frames)`` rows of every ``index*.tsv`` in ``directory``."""
    rows = []
    for index in sorted(Path(directory).glob("index*.tsv")):
        for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
            if not line or line == INDEX_HEADER:
                continue
            parts = line.split("\t")
            if len(parts) != 4:
                raise ValueError(f"{index}:{number}: expected 'key<TAB>shard<TAB>offset<TAB>frames', got {line!r}")
            rows.append((parts[0], parts[1], int(parts[2]), int(parts[3])))
    return rows


def iter_shard_features(directory: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """``(key, features)`` for every indexed utterance, shaped as the ``npy`` format's files
    (``[frames, dim]`` or ``[layers, frames, dim]``); shards are memory-mapped."""
    directory = Path(directory)
    opened: dict[str, np.ndarray] = {}
    for key, shard, offset, frames in read_shard_index(directory):
        if shard not in opened:
            opened[shard] = np.load(directory / shard, mmap_mode="r")
        block = opened[shard][offset: offset + frames]
        yield key, (np.asarray(block) if block.ndim == 2 else np.ascontiguousarray(block.transpose(1, 0, 2)))


class ShardWriter:
    """Buffer features and write them as large frame-major ``.npy`` shards plus an index (module docstring)."""

    def __init__(self, directory: str | os.PathLike, tag: str = "", shard_bytes: int = 1 << 30) -> None:
        if shard_bytes <= 0:
            raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
        self.directory = Path(directory)
        self.tag = tag
        self.shard_bytes = shard_bytes
        self.index_path = self.directory / f"index{tag}.tsv"
        (self.directory / "shards").mkdir(parents=True, exist_ok=True)
        self._done = {row[0] for row in read_shard_index(self.directory)}
        self._lines = [line for line in self._read_own_index() if line != INDEX_HEADER]
        referenced = {line.split("\t")[1] for line in self._lines}
        numbers = [-1]
        for shard in (self.directory / "shards").glob(f"features{tag}-*.npy"):
            rel = f"shards/{shard.name}"
            number = shard.stem.rsplit("-", 1)[-1]
            if rel not in referenced:  # written by a run killed before it updated the index
                shard.unlink()
            elif number.isdigit():
                numbers.append(int(number))
        self._next = max(numbers) + 1
        self._buffer: list[tuple[str, np.ndarray]] = []
        self._buffered_bytes = 0

    def _read_own_index(self) -> list[str]:
        if not self.index_path.exists():
            return []
        return [line for line in self.index_path.read_text(encoding="utf-8").splitlines() if line]

    def is_done(self, key: str) -> bool:
        return key in self._done

    def write(self, key: str, features: np.ndarray) -> None:
        frame_major = features if features.ndim == 2 else features.transpose(1, 0, 2)
        self._buffer.append((key, np.ascontiguousarray(frame_major, dtype=np.float32)))
        self._buffered_bytes += frame_major.size * 4
        self._done.add(key)
        if self._buffered_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered features as one shard, then the index naming them."""
        if not self._buffer:
            return
        rel = f"shards/features{self.tag}-{self._next:05d}.npy"
        data = np.concatenate([a for _, a in self._buffer], axis=0)
        atomic_save(self.directory / rel, lambda p: _save_npy(p, data))
        offset = 0
        for key, array in self._buffer:
            self._lines.append(f"{key}\t{rel}\t{offset}\t{array.shape[0]}")
            offset += array.shape[0]
        atomic_write_text(self.index_path, "\n".join([INDEX_HEADER, *self._lines]) + "\n")
        self._next += 1
        self._buffer, self._buffered_bytes = [], 0

    def close(self) -> None:
        self.flush()


class Hdf5Writer:
    """One dataset per key in ``<directory>/features<tag>.h5`` (module docstring); needs h5py."""

    def __init__(self, directory: str | os.PathLike, tag: str = "") -> None:
        try:
            import h5py
        except ImportError:
            raise ValueError("--format hdf5 needs h5py: pip install h5py (or use --format npy / shards)") from None
        self.path = Path(directory) / f"features{tag}.h5"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._file = h5py.File(self.path, "a")
        except OSError as err:
            raise ValueError(f"{self.path} cannot be opened ({err}); if an earlier run was killed while "
                             "writing it, delete the file and rerun") from None

    def is_done(self, key: str) -> bool:
        return key in self._file and bool(self._file[key].attrs.get("complete", False))

    def write(self, key: str, features: np.ndarray) -> None:
        if key in self._file:
            del self._file[key]
        dataset = self._file.create_dataset(key, data=np.asarray(features, dtype=np.float32))
        dataset.attrs["complete"] = True
        self._file.flush()

    def close(self) -> None:
        self._file.close()
