"""What to extract: one audio file, a directory, a ``.tsv`` manifest or a Kaldi ``wav.scp``; and sharding.

Every input becomes an :class:`InputItem` whose ``key`` names its output:

- a directory: every file below it (recursively) with an audio extension
  (:func:`speechcl.audio.io.find_audio_files`, the same search as ``prepare audio``), in sorted order;
  key = the relative path without its extension (``spk/ch/utt.flac`` → ``spk/ch/utt``); hidden files
  and folders are skipped;
- a manifest (``*.tsv`` in fairseq's layout: the root directory on the first line, then one
  ``relative/path<TAB>num_samples`` line per file): key as for a directory; the lengths are taken from
  the manifest;
- a Kaldi ``wav.scp`` (any ``*.scp``): ``utt_id path`` lines; key = ``utt_id``; relative paths are looked
  up from the current directory, then from the scp's directory. Piped commands (``... |``) and archive
  entries (``foo.ark:123``) are refused: decode them to files first;
- any other file: that one audio file; key = its name without extension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from speechcl.audio.io import AUDIO_EXTENSIONS, find_audio_files


@dataclass(frozen=True)
class InputItem:
    """One input: its output ``key`` (``/``-separated, no extension), the audio ``path`` and, when a
    manifest says so, its length ``num_samples`` at 16 kHz."""

    key: str
    path: str
    num_samples: int | None = None


def _key_from_relative(rel: str) -> str:
    return str(PurePosixPath(rel).with_suffix(""))


def _check_keys(items: Sequence[InputItem], source: Path) -> None:
    seen: dict[str, str] = {}
    for item in items:
        parts = PurePosixPath(item.key).parts
        if not item.key or item.key.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"{source}: input {item.path!r} gives the output name {item.key!r}, which would "
                             "leave the output directory; use relative paths / plain utterance ids")
        if item.key in seen:
            raise ValueError(f"{source}: {seen[item.key]!r} and {item.path!r} would both be written as "
                             f"{item.key!r}; restrict the extensions (--ext) or rename one of them")
        seen[item.key] = item.path


def scan_directory(directory: Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[InputItem]:
    """Audio files below ``directory`` (recursively, sorted), by extension (case-insensitive)."""
    return [InputItem(_key_from_relative(path.relative_to(directory).as_posix()), str(path))
            for path in find_audio_files(directory, extensions)]


def read_tsv_manifest(path: Path) -> list[InputItem]:
    """Items of a fairseq manifest, in its order, with their lengths."""
    from speechcl.data.manifest import read_manifest

    manifest = read_manifest(path)
    return [InputItem(_key_from_relative(rel), os.path.join(manifest.root, rel), size)
            for rel, size in zip(manifest.paths, manifest.sizes)]


def read_scp(path: Path) -> list[InputItem]:
    """Items of a Kaldi ``wav.scp`` (``utt_id path`` per line), in its order."""
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected 'utt_id path', got {line!r}")
            utt, target = parts[0], parts[1].strip()
            if target.endswith("|"):
                raise ValueError(f"{path}:{number}: piped command for {utt!r} is not supported ({target!r}); "
                                 "decode the audio to files first (e.g. with sox or ffmpeg) and list the files")
            if ".ark:" in target or target.startswith("ark:"):
                raise ValueError(f"{path}:{number}: archive entry for {utt!r} is not supported ({target!r}); "
                                 "write the audio to files (e.g. with Kaldi's wav-copy) and list the files")
            audio = Path(target)
            if not audio.is_absolute() and not audio.exists() and (path.parent / audio).exists():
                audio = path.parent / audio
            items.append(InputItem(utt, str(audio)))
    return items


def discover_inputs(source: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[InputItem]:
    """The inputs named by ``source`` (see the module docstring).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a malformed list, an unsupported scp entry, or two inputs with the same output name.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    if source.is_dir():
        items = scan_directory(source, extensions)
    elif source.suffix == ".tsv":
        items = read_tsv_manifest(source)
    elif source.suffix == ".scp":
        items = read_scp(source)
    else:
        items = [InputItem(source.stem, str(source))]
    _check_keys(items, source)
    return items


def parse_shard(spec: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)``; without a spec, torchrun's ``RANK``/``WORLD_SIZE``; else ``(0, 1)``."""
    if spec is None:
        if "WORLD_SIZE" in environ:
            spec = f"{environ.get('RANK', '0')}/{environ['WORLD_SIZE']}"
        else:
            return 0, 1
    try:
        index_text, count_text = spec.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {spec!r}: need N >= 1 and 0 <= I < N")
    return index, count


def select_shard(items: Sequence[InputItem], index: int, count: int) -> list[InputItem]:
    """Items ``index, index + count, ...``: a deterministic split that does not depend on what is done."""
    return list(items[index::count])
