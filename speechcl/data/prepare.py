"""Corpus preparation: manifests, labels and dictionaries from LibriSpeech-style trees or any audio folder.

``prepare_librispeech(root, out)`` writes, for every split (a directory of ``<spk>/<chap>/`` chapters
with ``<spk>-<chap>.trans.txt`` transcripts, e.g. ``train-clean-100``, ``dev-clean``; by default every
such directory under ``root``):

- ``<split>.tsv``: the manifest (root = ``root``, paths relative to it, sorted, lengths in samples at
  16 kHz), see :mod:`speechcl.data.manifest`;
- ``<split>.wrd`` and ``<split>.ltr``: the transcripts, line ``i`` belonging to manifest item ``i``;
- ``dict.ltr.txt``: symbol counts over the training splits (names starting with ``train``; all splits
  when none does);
- the same three files for the LibriLight sets when ``librispeech_finetuning/`` is present, and for
  each requested random subset, see :mod:`speechcl.data.subsets`.

``prepare_audio(directory, out)`` writes ``train.tsv`` and ``valid.tsv`` for unlabeled audio: every
file with one of the given extensions under ``directory`` (by default every format libsndfile reads,
:data:`speechcl.audio.io.AUDIO_EXTENSIONS`; hidden files and folders skipped, the same files
``extract`` finds), ``valid_percent`` of them (seeded) held out.

Bad files never stop preparation; ``OUT/prepare_report.tsv`` lists them with columns
``split, path, action, reason``:

=============  ===============================================================================
action         when
=============  ===============================================================================
``skipped``    unreadable or corrupt, empty (0 bytes), no samples, no transcript line, empty
               transcript, or (labeled corpora) a transcript line whose audio file is missing
``resampled``  sample rate other than 16 kHz: kept, resampled on load; its manifest length is the
               length after resampling
``mixed_down`` more than one channel: kept, channels averaged on load
=============  ===============================================================================

By default a file is checked from its header; ``verify=True`` decodes every file (in ``workers``
processes) and also catches files whose data is truncated or corrupt behind a valid header. The
functions return a :class:`PrepareResult`; the command exits non-zero only when nothing usable remains.
All outputs are written atomically.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from speechcl.audio.io import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioError,
    audio_info,
    find_audio_files,
    load_audio,
)
from speechcl.data.labels import count_symbols, normalize_transcript, read_lines, words_to_letters, write_dict
from speechcl.data.manifest import Manifest, combine_manifests, read_manifest, write_manifest
from speechcl.data.subsets import LIBRILIGHT_DIR, LIBRILIGHT_SETS, SubsetSpec, find_librilight, select_subset
from speechcl.utils.io import write_lines

REPORT_NAME = "prepare_report.tsv"


@dataclass
class ReportRow:
    """One line of ``prepare_report.tsv``."""

    split: str
    path: str
    action: str
    reason: str


@dataclass
class PrepareResult:
    """What a preparation produced: items per output set and the report rows."""

    items: dict[str, int] = field(default_factory=dict)
    report: list[ReportRow] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return sum(self.items.values())

    def skipped(self) -> list[ReportRow]:
        return [r for r in self.report if r.action == "skipped"]


@dataclass
class _Probe:
    path: str
    num_samples: int | None
    notes: list[tuple[str, str]]


def probe_audio(path: str, verify: bool = False) -> _Probe:
    """Check one file: its 16 kHz mono length, or why it is unusable, plus conversion notes."""
    try:
        info = audio_info(path)
        if info.num_frames == 0:
            return _Probe(path, None, [("skipped", "audio has no samples (zero length)")])
        num_samples = info.num_samples(SAMPLE_RATE)
        if verify:
            wave, info = load_audio(path, SAMPLE_RATE)
            num_samples = int(wave.numel())
    except AudioError as err:
        return _Probe(path, None, [("skipped", str(err).removeprefix(f"{path}: "))])
    notes = []
    if info.sample_rate != SAMPLE_RATE:
        notes.append(("resampled", f"sample rate {info.sample_rate} Hz; resampled to {SAMPLE_RATE} Hz on load"))
    if info.num_channels > 1:
        notes.append(("mixed_down", f"{info.num_channels} channels; mixed down to mono on load"))
    return _Probe(path, num_samples, notes)


def _probe_star(args: tuple[str, bool]) -> _Probe:
    return probe_audio(*args)


def _probe_all(paths: Sequence[str], verify: bool, workers: int | None, progress: bool, desc: str) -> list[_Probe]:
    bar = tqdm(total=len(paths), desc=desc, unit="file", disable=not progress, leave=False)
    jobs = [(p, verify) for p in paths]
    workers = workers or os.cpu_count() or 1
    if verify and workers > 1 and len(paths) > 64:
        with mp.get_context("fork").Pool(workers, initializer=_single_thread) as pool:
            probes = []
            for probe in pool.imap(_probe_star, jobs, chunksize=32):
                probes.append(probe)
                bar.update()
    else:
        probes = []
        for job in jobs:
            probes.append(_probe_star(job))
            bar.update()
    bar.close()
    return probes


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _rel(path: str, root: Path) -> str:
    return os.path.relpath(path, root)


# ----------------------------------------------------------------------------- LibriSpeech


@dataclass
class _Utterance:
    path: str  # absolute
    transcript: str
    num_samples: int


def find_splits(root: str | Path) -> list[str]:
    """Subdirectories of ``root`` laid out as LibriSpeech splits (``<spk>/<chap>/*.trans.txt``)."""
    root = Path(root)
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and d.name != LIBRILIGHT_DIR and next(d.glob("*/*/*.trans.txt"), None) is not None)


def scan_librispeech_dir(directory: Path, root: Path, label: str, report: list[ReportRow], verify: bool,
                         workers: int | None, progress: bool) -> list[_Utterance]:
    """Pair every audio file under ``directory`` with its transcript line; problems go to ``report``."""
    transcripts: dict[str, tuple[str, Path]] = {}
    audio: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if name.endswith(".trans.txt"):
                with open(full, encoding="utf-8", errors="replace") as handle:
                    for line in handle:
                        utt_id, _, text = line.strip().partition(" ")
                        if utt_id:
                            transcripts[utt_id] = (text, Path(full))
            elif name.rsplit(".", 1)[-1].lower() in AUDIO_EXTENSIONS and not name.startswith("."):
                audio[name.rsplit(".", 1)[0]] = full
    paths = [audio[k] for k in sorted(audio, key=lambda k: _rel(audio[k], root))]
    probes = _probe_all(paths, verify, workers, progress, desc=f"checking {label}")
    by_id = {Path(p.path).name.rsplit(".", 1)[0]: p for p in probes}
    utterances = []
    for probe in probes:
        rel = _rel(probe.path, root)
        utt_id = Path(probe.path).name.rsplit(".", 1)[0]
        for action, reason in probe.notes:
            report.append(ReportRow(label, rel, action, reason))
        if probe.num_samples is None:
            continue
        if utt_id not in transcripts:
            report.append(ReportRow(label, rel, "skipped", f"no transcript line for {utt_id} in "
                                    f"{utt_id.rsplit('-', 1)[0]}.trans.txt"))
            continue
        text = normalize_transcript(transcripts[utt_id][0])
        if not text:
            report.append(ReportRow(label, rel, "skipped", "empty transcript"))
            continue
        utterances.append(_Utterance(probe.path, text, probe.num_samples))
    for utt_id, (_, trans) in sorted(transcripts.items()):
        if utt_id not in by_id:
            report.append(ReportRow(label, _rel(str(trans), root), "skipped",
                                    f"transcript line {utt_id} has no audio file"))
    return utterances


def _write_labeled_set(out: Path, name: str, root: Path, utterances: Sequence[_Utterance]) -> list[str]:
    """Write ``name``.{tsv,wrd,ltr}; returns the ``.ltr`` lines."""
    manifest = Manifest(str(root), [_rel(u.path, root) for u in utterances], [u.num_samples for u in utterances])
    write_manifest(out / f"{name}.tsv", manifest)
    write_lines(out / f"{name}.wrd", [u.transcript for u in utterances])
    letters = [words_to_letters(u.transcript) for u in utterances]
    write_lines(out / f"{name}.ltr", letters)
    return letters


def prepare_librispeech(root: str | os.PathLike, out: str | os.PathLike, splits: Sequence[str] | None = None,
                        subsets: Sequence[SubsetSpec] = (), seed: int = 0, verify: bool = False,
                        workers: int | None = None, progress: bool = False) -> PrepareResult:
    """Prepare a LibriSpeech(-style) tree; see the module docstring for what is written.

    Args:
        root: the directory holding the split directories (``LibriSpeech/``).
        out: output directory (created).
        splits: split directory names; default: every split found under ``root``.
        subsets: random labeled subsets to draw (their splits are prepared even if not in ``splits``).
        seed: seed of the random subsets.
        verify: decode every file instead of reading headers only.
        workers: processes for ``verify``.
        progress: show progress bars.

    Raises:
        ValueError: ``root`` is not a directory or a requested split does not exist.
    """
    root = Path(root).resolve()
    out = Path(out)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; pass the LibriSpeech root holding the split directories")
    available = find_splits(root)
    wanted = list(splits) if splits else list(available)
    for spec in subsets:
        if spec.split not in wanted:
            wanted.append(spec.split)
    if not wanted and find_librilight(root) is None:
        raise ValueError(f"no LibriSpeech splits (<split>/<speaker>/<chapter>/*.trans.txt) under {root}; "
                         "pass the directory that holds train-clean-100/, dev-clean/, ...")
    missing = [s for s in wanted if not (root / s).is_dir()]
    if missing:
        raise ValueError(f"split(s) {missing} not found under {root}; available: {available or 'none'}")
    out.mkdir(parents=True, exist_ok=True)
    result = PrepareResult()
    letters: dict[str, list[str]] = {}
    utterances: dict[str, list[_Utterance]] = {}
    for split in wanted:
        utts = scan_librispeech_dir(root / split, root, split, result.report, verify, workers, progress)
        utterances[split] = utts
        if not utts:
            result.report.append(ReportRow(split, split, "skipped", "no usable utterances; no files written"))
            continue
        letters[split] = _write_labeled_set(out, split, root, utts)
        result.items[split] = len(utts)

    for spec in subsets:
        utts = utterances[spec.split]
        if not utts:
            continue
        target = round(spec.seconds * SAMPLE_RATE)
        chosen = select_subset([u.num_samples for u in utts], target, seed)
        total = sum(utts[i].num_samples for i in chosen)
        if total < target:
            result.report.append(ReportRow(spec.name, spec.split, "note",
                                           f"split holds only {total / SAMPLE_RATE:.0f} s; subset is the whole split"))
        _write_labeled_set(out, spec.name, root, [utts[i] for i in chosen])
        result.items[spec.name] = len(chosen)

    librilight = find_librilight(root)
    if librilight is not None:
        parts: dict[str, list[_Utterance]] = {}
        for sub in sorted({p for dirs in LIBRILIGHT_SETS.values() for p in dirs}):
            if (librilight / sub).is_dir():
                parts[sub] = scan_librispeech_dir(librilight / sub, root, f"{LIBRILIGHT_DIR}/{sub}", result.report,
                                                  verify, workers, progress)
        for name, dirs in LIBRILIGHT_SETS.items():
            utts = [u for d in dirs for u in parts.get(d, [])]
            if not utts:
                continue
            # "1h" includes "1h/0": keep each file once, in path order
            unique = {u.path: u for u in utts}
            utts = sorted(unique.values(), key=lambda u: _rel(u.path, root))
            letters.setdefault(name, _write_labeled_set(out, name, root, utts))
            result.items[name] = len(utts)

    train = [s for s in letters if s.startswith("train")] or list(letters)
    if letters:
        write_dict(out / "dict.ltr.txt", count_symbols(line for s in train for line in letters[s]))
    _write_report(out, result.report)
    return result


# ----------------------------------------------------------------------------- any audio folder


def prepare_audio(directory: str | os.PathLike, out: str | os.PathLike, valid_percent: float = 0.01,
                  extensions: Iterable[str] = AUDIO_EXTENSIONS, seed: int = 42, verify: bool = False,
                  workers: int | None = None, progress: bool = False) -> PrepareResult:
    """Write ``train.tsv`` and ``valid.tsv`` for every audio file under ``directory``.

    Args:
        directory: searched recursively; it becomes the manifests' root.
        out: output directory (created).
        valid_percent: fraction in [0, 1) of usable files held out for ``valid.tsv`` (fairseq's
            ``--valid-percent``, default 0.01); at least one file when positive and two or more exist.
        extensions: file extensions to include, without dots, case-insensitive.
        seed: seed of the train/valid split.
        verify: decode every file instead of reading headers only.
        workers: processes for ``verify``.
        progress: show a progress bar.
    """
    root = Path(directory).resolve()
    out = Path(out)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; pass the folder holding the audio files")
    if not 0.0 <= valid_percent < 1.0:
        raise ValueError(f"valid_percent must be in [0, 1), got {valid_percent}")
    exts = {e.strip().lower().lstrip(".") for e in extensions if e.strip()}
    if not exts:
        raise ValueError("no extensions given; pass e.g. --ext flac,wav")
    paths = sorted((str(p) for p in find_audio_files(root, exts)), key=lambda p: _rel(p, root))
    out.mkdir(parents=True, exist_ok=True)
    result = PrepareResult()
    usable = []
    for probe in _probe_all(paths, verify, workers, progress, desc="checking audio"):
        rel = _rel(probe.path, root)
        result.report += [ReportRow("audio", rel, action, reason) for action, reason in probe.notes]
        if probe.num_samples is not None:
            usable.append((rel, probe.num_samples))
    if not paths:
        result.report.append(ReportRow("audio", ".", "skipped", f"no files with extension {sorted(exts)} found"))
    num_valid = round(len(usable) * valid_percent)
    if valid_percent > 0 and num_valid == 0 and len(usable) >= 2:
        num_valid = 1
    held_out = set(random.Random(seed).sample(range(len(usable)), num_valid))
    train = [u for i, u in enumerate(usable) if i not in held_out]
    valid = [u for i, u in enumerate(usable) if i in held_out]
    for name, items in (("train", train), ("valid", valid)):
        write_manifest(out / f"{name}.tsv", Manifest(str(root), [p for p, _ in items], [n for _, n in items]))
        result.items[name] = len(items)
    _write_report(out, result.report)
    return result


def combine_splits(data_dir: str | os.PathLike, name: str, parts: Sequence[str],
                   label_exts: Sequence[str] = ("wrd", "ltr")) -> tuple[int, list[str]]:
    """Write ``<name>.tsv`` (and ``<name>.<ext>`` labels) in ``data_dir`` as the concatenation of the parts'.

    LibriSpeech's ``train-960`` is ``train-clean-100``, ``train-clean-360`` and ``train-other-500``. A label
    file is combined when every part has it; a part with only some of them is an error, as is a label file
    whose line count differs from its manifest's. Every file is written atomically; a ``<name>.<ext>`` left
    from an earlier combination whose parts had that label type is removed, since it would no longer be
    aligned with the new manifest.

    Returns:
        the number of items and the label extensions written.
    """
    data = Path(data_dir)
    if not parts:
        raise ValueError("give at least one split to combine")
    if name in parts:
        raise ValueError(f"{name!r} is also one of the parts: choose another name for the combined split")
    manifests = []
    for part in parts:
        path = data / f"{part}.tsv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: prepare split {part!r} first")
        manifests.append(read_manifest(path))
    written = []
    label_lines: dict[str, list[str]] = {}
    for ext in label_exts:
        have = [p for p in parts if (data / f"{p}.{ext}").is_file()]
        if not have:
            continue
        if len(have) != len(parts):
            missing = [p for p in parts if p not in have]
            raise FileNotFoundError(f"{data}: .{ext} labels exist for {have} but not for {missing}; "
                                    "prepare every part the same way")
        lines = []
        for part, manifest in zip(parts, manifests):
            part_lines = read_lines(data / f"{part}.{ext}")
            if len(part_lines) != len(manifest):
                raise ValueError(f"{data / f'{part}.{ext}'} has {len(part_lines)} lines for {len(manifest)} "
                                 f"items in {part}.tsv: labels and manifest must be aligned")
            lines.extend(part_lines)
        label_lines[ext] = lines
        written.append(ext)
    combined = combine_manifests(manifests)
    write_manifest(data / f"{name}.tsv", combined)
    for ext, lines in label_lines.items():
        write_lines(data / f"{name}.{ext}", lines)
    for ext in label_exts:
        if ext not in label_lines:
            (data / f"{name}.{ext}").unlink(missing_ok=True)
    return len(combined), written


def _write_report(out: Path, rows: Sequence[ReportRow]) -> None:
    write_lines(out / REPORT_NAME, ["split\tpath\taction\treason",
                                    *(f"{r.split}\t{r.path}\t{r.action}\t{r.reason}" for r in rows)])
