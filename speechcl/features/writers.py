"""Where extracted features go: one ``.npy`` per input, large ``.npy`` shards with an index, or HDF5.

Every writer knows which keys are finished (:meth:`is_done`), so a rerun skips them, and every file it
writes appears complete or not at all, so a process killed at any point (SIGKILL included) leaves
readable outputs holding everything written before:

- ``npy`` (:class:`NpyWriter`): ``<dir>/<key>.npy``, float32 ``[frames, dim]`` (one layer) or ``[layers,
  frames, dim]``; each file is written atomically, so an existing file is a complete one.
- ``shards`` (:class:`ShardWriter`): features are buffered and written as ``<dir>/shards/features<tag>-
  NNNNN.npy`` of about ``shard_bytes`` each, frames first so each utterance is one contiguous slice:
  ``[total frames, dim]`` or ``[total frames, layers, dim]``. ``<dir>/index<tag>.tsv`` lists ``key, shard
  file, frame offset, frames``, one row per key, and is rewritten atomically after each shard, so it only
  names complete shards; an interrupted run loses (and recomputes) only its unwritten buffer. A key
  written again (``--overwrite``) replaces its row, and shards no row points to any more are deleted.
  ``<tag>`` is empty for an unsharded run and ``.shardIofN`` for ``--shard I/N``. Read with
  :func:`iter_shard_features`.
- ``hdf5`` (:class:`Hdf5Writer`, needs h5py): ``<dir>/features<tag>.h5`` holds one dataset per key (shaped
  as the ``.npy`` files, attribute ``complete`` set), read like any HDF5 file: ``f[key][()]``,
  ``f.visititems``. Each is a virtual dataset over a part file ``<dir>/features<tag>.parts/part-NNNNN.h5``
  (relative paths, so the output folder can be moved as a whole): features are buffered like shards and
  each buffer is written as a new part file (atomically), then ``features<tag>.h5`` is rebuilt beside
  itself (a copy of the previous one plus the new keys) and renamed into place. HDF5 files are never
  modified in place, so no kill can corrupt them; an interrupted run loses only its unwritten buffer.
  Part files that ``features<tag>.h5`` does not reference (from a run killed between the two renames,
  or superseded by ``--overwrite``) are deleted. Reading a key whose part file was removed gives NaN,
  never plausible numbers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from speechcl.utils.io import atomic_path, atomic_save, atomic_write_text

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


def _remove_temporary(directory: Path, prefix: str) -> None:
    """Delete ``directory/.PREFIX*.tmp``: what :func:`~speechcl.utils.io.atomic_path` leaves when the
    process is killed mid-write. Only this writer's own prefix, so that a concurrent ``--shard`` run
    writing into the same folder keeps its files."""
    for leftover in directory.glob(f".{prefix}*.tmp"):
        leftover.unlink(missing_ok=True)


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
        rows: dict[str, str] = {}
        for line in self._read_own_index():
            if line != INDEX_HEADER:  # one row per key: a later row supersedes an earlier one
                rows[line.split("\t", 1)[0]] = line
        self._lines = list(rows.values())
        self._remove_unreferenced()  # written by a run killed before it updated the index
        _remove_temporary(self.directory / "shards", f"features{tag}-")
        _remove_temporary(self.directory, self.index_path.name)
        numbers = [int(n) for shard in (self.directory / "shards").glob(f"features{tag}-*.npy")
                   if (n := shard.stem.rsplit("-", 1)[-1]).isdigit()]
        self._next = max(numbers, default=-1) + 1
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
        """Write the buffered features as one shard, then the index naming them (replacing the rows of
        keys written again), then delete the shards no row names any more."""
        if not self._buffer:
            return
        rel = f"shards/features{self.tag}-{self._next:05d}.npy"
        data = np.concatenate([a for _, a in self._buffer], axis=0)
        atomic_save(self.directory / rel, lambda p: _save_npy(p, data))
        rewritten = {key for key, _ in self._buffer}
        self._lines = [line for line in self._lines if line.split("\t", 1)[0] not in rewritten]
        offset = 0
        for key, array in self._buffer:
            self._lines.append(f"{key}\t{rel}\t{offset}\t{array.shape[0]}")
            offset += array.shape[0]
        atomic_write_text(self.index_path, "\n".join([INDEX_HEADER, *self._lines]) + "\n")
        self._remove_unreferenced()
        self._next += 1
        self._buffer, self._buffered_bytes = [], 0

    def _remove_unreferenced(self) -> None:
        """Delete this writer's shards that no index row names (superseded, or from a killed run)."""
        referenced = {line.split("\t")[1] for line in self._lines}
        for shard in (self.directory / "shards").glob(f"features{self.tag}-*.npy"):
            if f"shards/{shard.name}" not in referenced:
                shard.unlink()

    def close(self) -> None:
        self.flush()


class Hdf5Writer:
    """``<directory>/features<tag>.h5`` of virtual datasets over part files (module docstring); needs h5py.

    Args:
        directory: the output directory.
        tag: ``""`` or ``.shardIofN``, as for :class:`ShardWriter`.
        part_bytes: buffered features are written as a part file once they reach this size.
    """

    def __init__(self, directory: str | os.PathLike, tag: str = "", part_bytes: int = 1 << 30) -> None:
        try:
            import h5py
        except ImportError:
            raise ValueError("--format hdf5 needs h5py: pip install h5py (or use --format npy / shards)") from None
        if part_bytes <= 0:
            raise ValueError(f"part_bytes must be positive, got {part_bytes}")
        self._h5py = h5py
        self.path = Path(directory) / f"features{tag}.h5"
        self.parts = Path(directory) / f"features{tag}.parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self.part_bytes = part_bytes
        self._sources = self._read_sources()  # key -> part file name ("" for data stored in the file itself)
        self._remove_unreferenced()  # from a run killed between writing a part and features.h5
        _remove_temporary(self.parts, "part-")
        _remove_temporary(self.path.parent, self.path.name)
        numbers = [int(n) for part in self.parts.glob("part-*.h5") if (n := part.stem.split("-")[-1]).isdigit()]
        self._next = max(numbers, default=-1) + 1
        self._buffer: list[tuple[str, np.ndarray]] = []
        self._buffered_bytes = 0

    def _read_sources(self) -> dict[str, str]:
        """The complete keys of ``features<tag>.h5`` and the part file each one reads from."""
        if not self.path.exists():
            return {}
        sources: dict[str, str] = {}

        def visit(name: str, node) -> None:
            if isinstance(node, self._h5py.Dataset) and node.attrs.get("complete", False):
                plist = node.id.get_create_plist()
                virtual = node.is_virtual and plist.get_virtual_count() > 0
                sources[name] = Path(plist.get_virtual_filename(0)).name if virtual else ""

        try:
            with self._h5py.File(self.path, "r") as handle:
                handle.visititems(visit)
        except OSError as err:
            raise ValueError(f"{self.path} cannot be read ({err}); move it away and rerun to extract again") from None
        present = {name for name in set(sources.values()) if not name or (self.parts / name).is_file()}
        return {key: name for key, name in sources.items() if name in present}  # a lost part: extract again

    def _remove_unreferenced(self) -> None:
        """Delete part files (and leftover temporary files) that no key of ``features<tag>.h5`` reads."""
        referenced = set(self._sources.values())
        for part in self.parts.glob("part-*.h5"):
            if part.name not in referenced:
                part.unlink()

    def is_done(self, key: str) -> bool:
        return key in self._sources

    def write(self, key: str, features: np.ndarray) -> None:
        array = np.ascontiguousarray(features, dtype=np.float32)
        self._buffer.append((key, array))
        self._buffered_bytes += array.nbytes
        if self._buffered_bytes >= self.part_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffer as a new part file, then rebuild ``features<tag>.h5`` with its keys."""
        if not self._buffer:
            return
        h5py = self._h5py
        name = f"part-{self._next:05d}.h5"

        def write_part(tmp: Path) -> None:
            with h5py.File(tmp, "w") as part:
                for key, array in self._buffer:
                    part.create_dataset(key, data=array)

        atomic_save(self.parts / name, write_part)
        relative = f"{self.parts.name}/{name}"
        with atomic_path(self.path) as tmp:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "a" if self.path.exists() else "w") as index:
                for key, array in self._buffer:
                    if key in index:
                        del index[key]
                    layout = h5py.VirtualLayout(shape=array.shape, dtype=np.float32)
                    layout[...] = h5py.VirtualSource(relative, key, shape=array.shape)
                    index.create_virtual_dataset(key, layout, fillvalue=np.nan).attrs["complete"] = True
        self._sources.update((key, name) for key, _ in self._buffer)
        self._remove_unreferenced()
        self._next += 1
        self._buffer, self._buffered_bytes = [], 0

    def close(self) -> None:
        self.flush()
