"""Atomic file writes: write a temporary file in the same directory, then ``os.replace`` it into place."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Yields a handle on ``.<name>.tmp<pid>`` next to ``path``; on normal exit the data is flushed,
    fsynced and renamed over ``path``; on an exception the temporary file is removed.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open only writes; got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Atomically write ``lines``, each followed by a newline."""
    with atomic_open(path) as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
