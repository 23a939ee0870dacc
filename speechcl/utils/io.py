"""Atomic file writes: write beside the target, fsync, then ``os.replace`` — a reader never sees a
half-written file and an interrupted write leaves the previous version intact."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: reading it means setting it, which is not thread-safe
_HOST = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname()) or "host"
_OWNER = f"{_HOST}-{os.getpid()}"  # in every temporary name, so a later run can tell a dead writer's files
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+\.tmp")


def remove_stale_temporaries(directory: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` writers on this machine left behind when they
    were killed (``.NAME.HOST-PID.XXXX.tmp`` whose process is gone); returns what was removed.

    Files of live processes and of other machines (a shared file system) are left alone, so a job can
    call this on start even while other ranks write into the same folder.
    """
    removed = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for path in root.rglob("*.tmp") if recursive else root.glob("*.tmp"):
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s directory; on success it replaces ``target``.

    For writers that want a file name (safetensors, numpy); :func:`atomic_open` yields a handle instead.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_OWNER}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp's 0600 would make every output private
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open ``target`` for writing so that it appears complete or not at all (text is UTF-8)."""
    if "w" not in mode:
        raise ValueError(f"atomic_open only writes; got mode {mode!r}")
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(target) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_open(target) as handle:
        handle.write(text)


def atomic_write_json(target: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_lines(target: str | os.PathLike[str], lines: Iterable[str]) -> None:
    """Atomically write ``lines``, each followed by a newline."""
    with atomic_open(target) as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")


def atomic_save(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result into place atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)


def write_report(output: str | os.PathLike[str], results: Any, markdown: str, plot_name: str, png: bytes) -> None:
    """An analysis result in folder ``output``: ``results.json`` (``results``), ``results.md`` and the plot
    ``plot_name`` (PNG bytes), each written atomically; the plot first, the JSON that marks it done last."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_save(output / plot_name, lambda p: p.write_bytes(png))
    atomic_write_text(output / "results.md", markdown)
    atomic_write_json(output / "results.json", results)
