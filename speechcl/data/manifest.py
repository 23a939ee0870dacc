"""Manifests: fairseq's ``.tsv`` list of audio files with their lengths.

Format: the first line is the root directory; every other line is ``relative/path<TAB>num_samples``,
where ``num_samples`` is the length at 16 kHz after mixdown and resampling (what
:func:`speechcl.audio.load_audio` returns), e.g.::

    /data/LibriSpeech
    train-clean-100/103/1240/103-1240-0000.flac\t225360
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from speechcl.utils.io import write_lines


@dataclass
class Manifest:
    """An ordered list of audio files under a root directory.

    Attributes:
        root: directory the paths are relative to.
        paths: relative paths, one per item.
        sizes: length of each item in samples at 16 kHz.
    """

    root: str
    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.sizes):
            raise ValueError(f"manifest has {len(self.paths)} paths but {len(self.sizes)} sizes")

    def __len__(self) -> int:
        return len(self.paths)

    def full_path(self, index: int) -> str:
        """Absolute (or root-joined) path of item ``index``."""
        return os.path.join(self.root, self.paths[index])

    def subset(self, indices: Sequence[int]) -> Manifest:
        """The items at ``indices``, in that order."""
        return Manifest(self.root, [self.paths[i] for i in indices], [self.sizes[i] for i in indices])

    def total_samples(self) -> int:
        return int(sum(self.sizes))


def combine_manifests(parts: Sequence[Manifest]) -> Manifest:
    """The items of ``parts`` in order, as one manifest.

    Parts under one root keep it and their paths; otherwise the root becomes the roots' common directory
    and each path is made relative to it (so every ``full_path`` is unchanged).
    """
    if not parts:
        raise ValueError("combine_manifests needs at least one manifest")
    roots = {m.root for m in parts}
    if len(roots) == 1:
        return Manifest(parts[0].root, [p for m in parts for p in m.paths], [n for m in parts for n in m.sizes])
    if len({os.path.isabs(r) for r in roots}) != 1:
        raise ValueError(f"cannot combine manifests with absolute and relative roots: {sorted(roots)}")
    common = os.path.commonpath(sorted(roots))
    paths = [os.path.relpath(os.path.join(m.root, p), common) for m in parts for p in m.paths]
    return Manifest(common, paths, [n for m in parts for n in m.sizes])


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse a manifest file; raises ``ValueError`` naming the file and line when malformed."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty manifest; its first line must be the root directory")
    manifest = Manifest(lines[0].strip())
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip().isdigit():
            raise ValueError(f"{path}:{number}: expected 'relative/path<TAB>num_samples', got {line!r}")
        manifest.paths.append(parts[0])
        manifest.sizes.append(int(parts[1]))
    return manifest


def path_problem(rel: str) -> str | None:
    """Why ``rel`` cannot be a manifest path (a tab, a line break, or a name that is not valid UTF-8),
    or ``None`` when it can."""
    if "\t" in rel or len(f"a{rel}b".splitlines()) > 1:
        return "its name holds tabs or line breaks, which a .tsv manifest cannot hold; rename the file"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8, which a manifest cannot hold; rename the file"
    return None


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """Atomically write ``manifest`` to ``path``; a path :func:`path_problem` rejects is a ``ValueError``."""
    for rel in manifest.paths:
        problem = path_problem(rel)
        if problem is not None:
            raise ValueError(f"cannot write {rel!r} to a manifest: {problem}")
    write_lines(path, [manifest.root, *(f"{p}\t{n}" for p, n in zip(manifest.paths, manifest.sizes))])
