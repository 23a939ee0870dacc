"""Tar shards of a prepared split for streaming training: ``speechcl prepare shards`` and the index reader.

Format: **WebDataset tars**. A shard is a plain POSIX tar whose members come in item order, two per
item: ``<key>.flac`` (16 kHz mono FLAC) and ``<key>.json`` (the item's metadata). That is the layout the
``webdataset`` library reads as samples ``{"__key__", "flac", "json"}`` (also what torchdata and Hugging
Face ``datasets`` stream), and Python's ``tarfile`` or ``tar -x`` unpack it with nothing installed. lhotse
Shar was the alternative; it needs lhotse to read and splits an item over several tar files (audio, cuts,
each label), so a tar alone does not hold a whole item. Tars are written with the ``webdataset`` library's
own ``TarWriter`` (the maintained writer of the format: ``pip install 'speechcl[shards]'``); reading them
for training needs nothing beyond the standard library (:class:`ShardIndex`, and
:mod:`speechcl.data.shard_stream` for the streaming loader).

Layout of ``OUT`` for a split ``<split>``:

- ``<split>-000000.tar``, ``<split>-000001.tar``, ...: the shards;
- ``<split>.index.json``: the index (below), written last: its presence marks the split complete;
- ``<split>.<ext>`` for the manifest folder's label files (``.wrd``, ``.ltr``, ``.phn``, ``.kw``, ``.spk``):
  line ``i`` belongs to item ``i`` of the index (so labels load without opening a tar), and
  ``dict.*.txt``: the manifest folder's dictionaries, so ``OUT`` is self-contained.

``<key>`` is the manifest path without its extension, dots made ``_`` (webdataset ends a key at the first
dot of a member's name), e.g. ``train-clean-100/103/1240/103-1240-0000``. ``<key>.json`` holds
``{"key", "num_samples", "sample_rate", "source", "speaker", "transcript", "labels"}``: ``num_samples`` at
16 kHz (the manifest's), ``source`` the manifest path, ``speaker`` the ``.spk`` line (``null`` without
one), ``transcript`` the ``.wrd`` line (only when there is one), ``labels`` the other label lines by
extension (``{"ltr": "H I |", ...}``). A source that already is 16 kHz mono FLAC is copied byte for
byte (the round trip is exact); any other file is decoded as :func:`~speechcl.audio.io.load_audio`
does (resampled, mixed down) and re-encoded as 16-bit FLAC.

Index (JSON)::

    {"format": "speechcl-shards", "version": 1, "split": ..., "sample_rate": 16000, "num_items": N,
     "total_samples": ..., "labels": ["ltr", "spk", "wrd"], "source": {"manifest": ..., "root": ...},
     "settings": {"shard_size": ..., "shard_mb": ..., "shuffle": ..., "seed": ...},
     "shards": [{"name": "<split>-000000.tar", "bytes": ..., "first_item": 0, "keys": [...],
                 "num_samples": [...], "manifest_index": [...], "offset": [...],
                 "flac": [[data_offset, size], ...], "json": [[data_offset, size], ...]}, ...]}

Items are numbered across shards in order (``first_item``); ``num_samples`` lets batches be bucketed
without opening audio, ``offset`` is the byte offset of an item's first tar header (a tar reader can
start there) and ``flac``/``json`` where each member's bytes lie, so a reader can fetch any item with
one positioned read. ``manifest_index`` is the item's line in the source manifest (minus the root
line). Items are written in a seeded random order by default (``shuffle``): LibriSpeech manifests are
sorted by speaker and chapter, and a shard of consecutive items would hold one or two speakers, which
a streaming reader that only mixes a window of items could not undo.

Resumable: the assignment of items to shards is a pure function of the manifest and the settings, so
a rerun recomputes it, keeps every shard that exists and checks out against it (member names and
order, sizes, JSON bytes; with ``verify`` also the decoded audio) and writes the others. A shard is
written to a temporary file, verified, and moved into place (``os.replace``): a killed run leaves no
half-written shard under a final name. Parallel over shards (``jobs`` processes), with a progress bar.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import re
import shutil
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from speechcl.audio.io import SAMPLE_RATE, AudioError, audio_info, load_audio
from speechcl.data.labels import read_lines
from speechcl.data.manifest import read_manifest
from speechcl.data.prepare import REPORT_NAME
from speechcl.utils.io import atomic_path, atomic_write_json, remove_stale_temporaries, write_lines

FORMAT, VERSION = "speechcl-shards", 1
DEFAULT_SHARD_MB = 100.0
"""Default shard size: webdataset's advice is shards of 100 MB or more, and a split needs at least as many
shards as ranks x loader workers read it (LibriSpeech 960 h in FLAC: about 600 shards)."""

LABEL_EXTENSIONS: tuple[str, ...] = ("wrd", "ltr", "phn", "kw", "spk")
"""Line-per-item label files of a split that go into the items' JSON and are copied beside the index."""

MEMBERS: tuple[str, str] = ("flac", "json")
_SHARD_NAME = re.compile(r"(?P<split>.+)-(?P<number>\d{6})\.tar")


def index_path(directory: str | os.PathLike, split: str) -> Path:
    """``<directory>/<split>.index.json``."""
    return Path(directory) / f"{split}.index.json"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def shard_key(rel_path: str) -> str:
    """The WebDataset key of a manifest path: without its extension, ``\\`` as ``/``, no leading ``/``,
    dots as ``_`` (``a/b.c/x.y.flac`` -> ``a/b_c/x_y``)."""
    stem = os.path.splitext(rel_path.replace("\\", "/"))[0].lstrip("/")
    return stem.replace(".", "_")


def plan_shards(num_bytes: Sequence[int], shard_size: int | None = None, shard_mb: float | None = None
                ) -> list[tuple[int, int]]:
    """Cut items ``0..n-1`` (in writing order) into consecutive shards ``[start, end)``.

    Args:
        num_bytes: ``[n]`` size of each item's audio in bytes (used with ``shard_mb``).
        shard_size: items per shard (the last shard may hold fewer).
        shard_mb: audio megabytes (10^6 bytes) per shard: a shard ends before the item that would take it
            past the bound; an item larger than the bound gets a shard of its own.
    """
    n = len(num_bytes)
    if (shard_size is None) == (shard_mb is None):
        raise ValueError("give exactly one of shard_size (items per shard) and shard_mb (megabytes per shard)")
    if shard_size is not None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1 item, got {shard_size}")
        return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
    assert shard_mb is not None
    if not shard_mb > 0:
        raise ValueError(f"shard_mb must be positive, got {shard_mb}")
    limit = shard_mb * 1e6
    shards, start, total = [], 0, 0
    for i, size in enumerate(num_bytes):
        if i > start and total + size > limit:
            shards.append((start, i))
            start, total = i, 0
        total += int(size)
    if n > start:
        shards.append((start, n))
    return shards


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Item:
    """One item to write: its key, source file, length, JSON member and manifest line."""

    key: str
    source: str
    num_samples: int
    payload: bytes
    manifest_index: int


@dataclass(frozen=True)
class _Job:
    path: str
    items: tuple[_Item, ...]
    verify: bool


class ShardMismatch(ValueError):
    """An existing shard does not hold what the plan puts there (it is rewritten)."""


@dataclass
class ShardResult:
    """What :func:`write_shards` did: items and shards of the split, how many shards it wrote or kept."""

    split: str
    num_items: int
    num_shards: int
    written: int
    kept: int
    total_bytes: int
    index: Path
    removed: list[str] = field(default_factory=list)  # stale shards of an earlier plan


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError:
        raise ModuleNotFoundError("speechcl prepare shards writes tars with the webdataset library, which is not "
                                  "installed: pip install 'speechcl[shards]' (or pip install webdataset)") from None
    return webdataset


def _flac_bytes(item: _Item) -> bytes:
    """The item's audio as 16 kHz mono FLAC: the source's bytes when it is that already, else re-encoded."""
    try:
        info = audio_info(item.source)
        if info.format == "FLAC" and info.sample_rate == SAMPLE_RATE and info.num_channels == 1:
            if info.num_frames != item.num_samples:
                raise AudioError(item.source, f"{info.num_frames} samples but the manifest says {item.num_samples}")
            return Path(item.source).read_bytes()
        wave, _ = load_audio(item.source, SAMPLE_RATE)
    except AudioError as err:
        raise ValueError(f"{err}; the file changed since preparation: re-run speechcl prepare, then prepare "
                         "shards") from None
    if wave.numel() != item.num_samples:
        raise ValueError(f"{item.source}: decodes to {wave.numel()} samples but the manifest says "
                         f"{item.num_samples}; re-run speechcl prepare, then prepare shards")
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave.numpy(), -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_flac(data: bytes, where: str) -> torch.Tensor:
    """FLAC bytes of a shard member as a float32 waveform ``[samples]``; ``AudioError`` (naming ``where``)
    unless it is 16 kHz mono."""
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(where, f"cannot decode the FLAC member ({err}); re-run speechcl prepare shards") from None
    if rate != SAMPLE_RATE or wave.shape[1] != 1:
        raise AudioError(where, f"{rate} Hz with {wave.shape[1]} channels, not 16 kHz mono; re-run speechcl "
                                "prepare shards")
    return torch.from_numpy(np.ascontiguousarray(wave[:, 0]))


def _write_tar(path: Path, items: Sequence[_Item]) -> list[int]:
    """Write ``items`` as one tar at ``path`` (with webdataset's TarWriter); returns the FLAC sizes."""
    wds = _webdataset()
    sizes = []
    with open(path, "wb") as handle, wds.TarWriter(handle, encoder=False, mtime=0.0, user="speechcl",
                                                   group="speechcl") as writer:
        for item in items:
            flac = _flac_bytes(item)
            writer.write({"__key__": item.key, "flac": flac, "json": item.payload})
            sizes.append(len(flac))
    return sizes


def _pread(handle: Any, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


def _check_tar(path: Path, items: Sequence[_Item], decode: bool, flac_sizes: Sequence[int] | None = None
               ) -> dict[str, Any]:
    """Re-read a shard and compare it with ``items``: member names in order, each member within the file,
    the JSON bytes, the FLAC sizes (when known) and, with ``decode``, every member's decoded length.
    Returns the shard's index entry (without ``name`` and ``first_item``); ``ShardMismatch`` says what differs."""
    size = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError) as err:
        raise ShardMismatch(f"{path}: not a readable tar ({err})") from None
    expected = [f"{item.key}.{ext}" for item in items for ext in MEMBERS]
    names = [m.name for m in members]
    if names != expected:
        first = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), min(len(names), len(expected)))
        raise ShardMismatch(f"{path}: member {first} is {names[first] if first < len(names) else 'missing'!r}, "
                            f"expected {expected[first] if first < len(expected) else 'none'!r} "
                            f"({len(names)} members, {len(expected)} expected)")
    entry: dict[str, Any] = {"bytes": size, "num_items": len(items), "keys": [], "num_samples": [],
                             "manifest_index": [], "offset": [], "flac": [], "json": []}
    with open(path, "rb") as handle:
        for i, item in enumerate(items):
            flac, meta = members[2 * i], members[2 * i + 1]
            for member in (flac, meta):
                if not member.isfile() or member.offset_data + member.size > size:
                    raise ShardMismatch(f"{path}: member {member.name} is truncated or not a file")
            if flac_sizes is not None and flac.size != flac_sizes[i]:
                raise ShardMismatch(f"{path}: {flac.name} holds {flac.size} bytes, {flac_sizes[i]} were written")
            if flac.size == 0:
                raise ShardMismatch(f"{path}: {flac.name} is empty")
            if _pread(handle, meta.offset_data, meta.size) != item.payload:
                raise ShardMismatch(f"{path}: {meta.name} differs from the manifest's item (changed labels or "
                                    "manifest)")
            if decode:
                where = f"{path}:{flac.name}"
                try:
                    frames = decode_flac(_pread(handle, flac.offset_data, flac.size), where).numel()
                except AudioError as err:
                    raise ShardMismatch(str(err)) from None
                if frames != item.num_samples:
                    raise ShardMismatch(f"{where}: decodes to {frames} samples, the manifest says {item.num_samples}")
            entry["keys"].append(item.key)
            entry["num_samples"].append(item.num_samples)
            entry["manifest_index"].append(item.manifest_index)
            entry["offset"].append(flac.offset)
            entry["flac"].append([flac.offset_data, flac.size])
            entry["json"].append([meta.offset_data, meta.size])
    return entry


def _ensure_shard(job: _Job) -> tuple[dict[str, Any], bool]:
    """Keep the shard at ``job.path`` when it checks out, else write it; ``(entry, written)``."""
    path = Path(job.path)
    if path.exists():
        try:
            return _check_tar(path, job.items, decode=job.verify), False
        except ShardMismatch:
            pass  # an earlier plan's shard, or damaged: write it again
    with atomic_path(path) as tmp:
        sizes = _write_tar(tmp, job.items)
        try:
            entry = _check_tar(tmp, job.items, decode=job.verify, flac_sizes=sizes)
        except ShardMismatch as err:  # what was just written does not read back: a disk or library problem
            raise OSError(f"{path} did not verify after writing: {err}") from None
    return entry, True


def _single_thread() -> None:
    torch.set_num_threads(1)


def _split_items(manifest_dir: Path, split: str, shuffle: bool, seed: int) -> tuple[list[_Item], list[str],
                                                                                 dict[str, list[str]], Any]:
    """The split's items in writing order, the label extensions found, their lines (in writing order) and
    the manifest."""
    tsv = manifest_dir / f"{split}.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"manifest {tsv} not found: run `speechcl prepare` first, or check MANIFEST_DIR "
                                f"and SPLIT (the splits there: {sorted(p.stem for p in manifest_dir.glob('*.tsv') if p.name != REPORT_NAME)})")
    manifest = read_manifest(tsv)
    if len(manifest) == 0:
        raise ValueError(f"{tsv} lists no audio: nothing to shard")
    labels: dict[str, list[str]] = {}
    for ext in LABEL_EXTENSIONS:
        path = manifest_dir / f"{split}.{ext}"
        if path.is_file():
            lines = read_lines(path)
            if len(lines) != len(manifest):
                raise ValueError(f"{path} has {len(lines)} lines for {len(manifest)} items in {tsv}: labels and "
                                 "manifest must be aligned (re-run speechcl prepare)")
            labels[ext] = lines
    order = np.random.default_rng(seed).permutation(len(manifest)) if shuffle else np.arange(len(manifest))
    items, seen = [], {}
    for i in order.tolist():
        rel = manifest.paths[i]
        key = shard_key(rel)
        if key in seen:
            raise ValueError(f"{tsv}: {rel!r} and {seen[key]!r} make the same shard key {key!r}; rename one of them")
        seen[key] = rel
        meta: dict[str, Any] = {"key": key, "num_samples": manifest.sizes[i], "sample_rate": SAMPLE_RATE,
                                "source": rel, "speaker": labels["spk"][i] if "spk" in labels else None}
        if "wrd" in labels:
            meta["transcript"] = labels["wrd"][i]
        meta["labels"] = {ext: lines[i] for ext, lines in labels.items() if ext not in ("wrd", "spk")}
        payload = json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        items.append(_Item(key, manifest.full_path(i), manifest.sizes[i], payload, i))
    ordered = {ext: [lines[i] for i in order.tolist()] for ext, lines in labels.items()}
    return items, sorted(labels), ordered, manifest


def write_shards(manifest_dir: str | os.PathLike, split: str, out: str | os.PathLike, shard_size: int | None = None,
                 shard_mb: float | None = None, jobs: int | None = None, verify: bool = False, shuffle: bool = True,
                 seed: int = 0, progress: bool = False) -> ShardResult:
    """Write ``<manifest_dir>/<split>.tsv`` (and its label files) as WebDataset tar shards in ``out``.

    Args:
        manifest_dir: the output folder of ``speechcl prepare``.
        split: the split to write (``<split>.tsv``).
        out: folder for the shards, the index, label files and dictionaries (see the module docstring).
        shard_size: items per shard; ``shard_mb``: megabytes of source audio per shard (the FLAC copies
            are the same size; re-encoded sources come out at the size of their FLAC). At most one;
            neither means ``shard_mb=DEFAULT_SHARD_MB``.
        jobs: processes writing shards in parallel (default: all CPUs).
        verify: also decode every FLAC member written or kept and compare its length with the manifest's.
        shuffle: write items in a random order drawn from ``seed`` (the default), else in manifest order.
        progress: show a progress bar.

    Raises:
        FileNotFoundError: no such manifest; ValueError: an unreadable or changed source file, label files
        out of line with the manifest, two paths that make the same key, bad settings;
        ModuleNotFoundError: webdataset is not installed.
    """
    if shard_size is None and shard_mb is None:
        shard_mb = DEFAULT_SHARD_MB
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    manifest_dir, out = Path(manifest_dir), Path(out)
    items, label_exts, label_lines, manifest = _split_items(manifest_dir, split, shuffle, seed)
    missing = [item.source for item in items if not os.path.isfile(item.source)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} files listed in {manifest_dir / f'{split}.tsv'} are missing, e.g. "
                                f"{missing[0]}; re-run speechcl prepare (or restore the corpus)")
    sizes = [os.path.getsize(item.source) for item in items]
    plan = plan_shards(sizes, shard_size, shard_mb)
    _webdataset()  # fail before any work when it is missing
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, recursive=False)
    job_list = [_Job(str(out / shard_name(split, n)), tuple(items[a:b]), verify) for n, (a, b) in enumerate(plan)]
    entries: list[dict[str, Any] | None] = [None] * len(job_list)
    written = 0
    workers = min(jobs or os.cpu_count() or 1, len(job_list))
    bar = tqdm(total=len(job_list), desc=f"shards {split}", unit="shard", disable=not progress, leave=False)

    def add(number: int, result: tuple[dict[str, Any], bool]) -> None:
        nonlocal written
        entries[number] = result[0]
        written += int(result[1])
        bar.set_postfix(written=written, kept=bar.n + 1 - written, refresh=False)
        bar.update()

    if workers > 1:
        with mp.get_context("fork").Pool(workers, initializer=_single_thread) as pool:
            for number, result in pool.imap_unordered(_numbered, list(enumerate(job_list))):
                add(number, result)
    else:
        for number, job in enumerate(job_list):
            add(number, _ensure_shard(job))
    bar.close()
    removed = _remove_stale_shards(out, split, len(job_list))
    shards = []
    for number, ((start, _), entry) in enumerate(zip(plan, entries)):
        assert entry is not None
        shards.append({"name": shard_name(split, number), "first_item": start, **entry})
    for ext in label_exts:
        write_lines(out / f"{split}.{ext}", label_lines[ext])
    for dictionary in sorted(manifest_dir.glob("dict.*.txt")):
        if not (out / dictionary.name).exists() or (out / dictionary.name).read_bytes() != dictionary.read_bytes():
            with atomic_path(out / dictionary.name) as tmp:
                shutil.copyfile(dictionary, tmp)
    index = {"format": FORMAT, "version": VERSION, "split": split, "sample_rate": SAMPLE_RATE,
             "num_items": len(items), "total_samples": int(sum(item.num_samples for item in items)),
             "labels": label_exts,
             "source": {"manifest": str((manifest_dir / f"{split}.tsv").resolve()), "root": manifest.root},
             "settings": {"shard_size": shard_size, "shard_mb": shard_mb, "shuffle": shuffle, "seed": seed},
             "shards": shards}
    atomic_write_json(index_path(out, split), index)
    return ShardResult(split, len(items), len(shards), written, len(shards) - written,
                       sum(s["bytes"] for s in shards), index_path(out, split), removed)


def _numbered(job: tuple[int, _Job]) -> tuple[int, tuple[dict[str, Any], bool]]:
    return job[0], _ensure_shard(job[1])


def _remove_stale_shards(out: Path, split: str, count: int) -> list[str]:
    """Delete ``<split>-NNNNNN.tar`` files numbered ``count`` or more (an earlier plan with more shards)."""
    removed = []
    for path in sorted(out.glob(f"{split}-*.tar")):
        match = _SHARD_NAME.fullmatch(path.name)
        if match and match["split"] == split and int(match["number"]) >= count:
            path.unlink()
            removed.append(path.name)
    return removed


# ----------------------------------------------------------------------------- reading


class ShardIndex:
    """A split written by :func:`write_shards`, from its index: item lengths and where each member lies.

    Items are numbered ``0..num_items-1`` across shards in order. Attributes (numpy arrays over items):
    ``sizes`` ``[N]`` samples at 16 kHz; ``shard`` ``[N]`` shard number; ``offset`` ``[N]`` item offset
    within its shard; ``flac`` and ``json`` ``[N, 2]`` (data offset, size) of the members; ``start`` ``[N]``
    offset of the item's first tar header. ``keys[i]`` is item ``i``'s key, ``shard_items[s]`` the items
    of shard ``s`` as a ``range``.

    :meth:`read` fetches a member with one positioned read (``os.pread``: no file position shared with
    forked loader workers), keeping a few shard files open per process.
    """

    _open_limit = 16

    def __init__(self, directory: str | os.PathLike, meta: dict[str, Any], source: str = "index") -> None:
        self.directory = Path(directory)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{source}: not a {FORMAT} v{VERSION} index (format={meta.get('format')!r}, "
                             f"version={meta.get('version')!r}); write it with speechcl prepare shards")
        self.split: str = meta["split"]
        self.labels: list[str] = list(meta.get("labels", []))
        self.shard_names: list[str] = [s["name"] for s in meta["shards"]]
        self.shard_bytes: list[int] = [int(s["bytes"]) for s in meta["shards"]]
        self.keys: list[str] = []
        sizes, shard, offset, flac, member_json, start, rows = [], [], [], [], [], [], []
        self.shard_items: list[range] = []
        for number, entry in enumerate(meta["shards"]):
            n = len(entry["keys"])
            if int(entry["first_item"]) != len(self.keys) or any(len(entry[k]) != n for k in
                                                                 ("num_samples", "offset", "flac", "json")):
                raise ValueError(f"{source}: shard {entry['name']} is inconsistent (first_item or list lengths); "
                                 "re-run speechcl prepare shards")
            self.shard_items.append(range(len(self.keys), len(self.keys) + n))
            self.keys += entry["keys"]
            sizes += entry["num_samples"]
            shard += [number] * n
            offset += range(n)
            flac += entry["flac"]
            member_json += entry["json"]
            start += entry["offset"]
            rows += entry.get("manifest_index", [])
        if len(self.keys) != int(meta["num_items"]):
            raise ValueError(f"{source}: {len(self.keys)} items in its shards but num_items={meta['num_items']}")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.shard = np.asarray(shard, dtype=np.int64)
        self.offset = np.asarray(offset, dtype=np.int64)
        self.flac = np.asarray(flac, dtype=np.int64).reshape(-1, 2)
        self.json = np.asarray(member_json, dtype=np.int64).reshape(-1, 2)
        self.start = np.asarray(start, dtype=np.int64)
        # each item's line in the source manifest (None for an index written without them)
        self.manifest_index = np.asarray(rows, dtype=np.int64) if len(rows) == len(self.keys) else None
        self.source_manifest: str | None = (meta.get("source") or {}).get("manifest")
        self._files: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def load(cls, directory: str | os.PathLike, split: str) -> ShardIndex:
        """Read ``<directory>/<split>.index.json`` and check that every shard is there with its size."""
        path = index_path(directory, split)
        if not path.is_file():
            raise FileNotFoundError(f"shard index {path} not found: run `speechcl prepare shards MANIFEST_DIR {split} "
                                    f"{directory}` first (or check the folder and split name)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a valid JSON index ({err}); re-run speechcl prepare shards") from None
        index = cls(directory, meta, str(path))
        for number, name in enumerate(index.shard_names):
            shard = index.directory / name
            if not shard.is_file():
                raise FileNotFoundError(f"{shard} (listed in {path}) not found; re-run speechcl prepare shards")
            if shard.stat().st_size != index.shard_bytes[number]:
                raise ValueError(f"{shard} is {shard.stat().st_size} bytes but {path} says {index.shard_bytes[number]}: "
                                 "it changed since the index was written; re-run speechcl prepare shards")
        return index

    @property
    def num_items(self) -> int:
        return len(self.keys)

    @property
    def num_shards(self) -> int:
        return len(self.shard_names)

    def shard_path(self, shard: int) -> Path:
        return self.directory / self.shard_names[shard]

    def where(self, item: int) -> str:
        """``<shard path>:<key>``, how messages name an item."""
        return f"{self.shard_path(int(self.shard[item]))}:{self.keys[item]}"

    def _fd(self, shard: int) -> int:
        if os.getpid() != self._pid:  # a forked worker: close its copies of the parent's descriptors
            for inherited in self._files.values():
                os.close(inherited)
            self._files, self._pid = OrderedDict(), os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            fd = os.open(self.shard_path(shard), os.O_RDONLY)
            self._files[shard] = fd
            if len(self._files) > self._open_limit:
                os.close(self._files.popitem(last=False)[1])
        else:
            self._files.move_to_end(shard)
        return fd

    def read(self, item: int, member: str = "flac") -> bytes:
        """The bytes of item ``item``'s ``member`` (``"flac"`` or ``"json"``)."""
        if member not in MEMBERS:
            raise ValueError(f"member must be one of {MEMBERS}, got {member!r}")
        offset, size = (int(v) for v in (self.flac if member == "flac" else self.json)[item])
        try:
            data = os.pread(self._fd(int(self.shard[item])), size, offset)
        except OSError as err:
            raise AudioError(self.where(item), f"cannot read the shard ({err}); re-run speechcl prepare shards") from None
        if len(data) != size:
            raise AudioError(self.where(item), f"the shard is truncated ({len(data)} of {size} bytes of its "
                                               f"{member} member); re-run speechcl prepare shards")
        return data

    def read_wave(self, item: int) -> torch.Tensor:
        """Item ``item``'s audio, float32 ``[samples]`` at 16 kHz; ``AudioError`` when it cannot be used."""
        return decode_flac(self.read(item, "flac"), self.where(item))

    def read_meta(self, item: int) -> dict[str, Any]:
        """Item ``item``'s JSON member."""
        return json.loads(self.read(item, "json").decode("utf-8"))

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:  # open descriptors do not travel to another process
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = OrderedDict(), -1
        return state
