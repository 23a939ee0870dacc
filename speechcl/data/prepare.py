"""Corpus preparation: manifests, labels and dictionaries from LibriSpeech-style trees or any audio folder.

``prepare_librispeech(root, out)`` writes, for every split (a directory of ``<spk>/<chap>/`` chapters
with ``<spk>-<chap>.trans.txt`` transcripts, e.g. ``train-clean-100``, ``dev-clean``; by default every
such directory under ``root``):

- ``<split>.tsv``: the manifest (root = ``root``, paths relative to it, sorted, lengths in samples at
  16 kHz), see :mod:`speechcl.data.manifest`;
- ``<split>.wrd`` and ``<split>.ltr``: the transcripts, line ``i`` belonging to manifest item ``i``;
- ``dict.ltr.txt``: symbol counts over the training splits (names starting with ``train``; all splits
  when none does);
- ``<split>.spk``: the speaker id of each manifest item (the first field of LibriSpeech's
  ``<speaker>-<chapter>-<utterance>`` file names);
- when every utterance of a set has a word/phone alignment (the ``<spk>-<chap>.align.tsv`` files
  ``speechcl synth`` writes, :mod:`speechcl.data.alignments`): ``<split>.phn``, the spoken phones of
  each item separated by spaces (no ``sil``), and ``<split>.phn_frames``, one phone label per model
  frame (``sil`` where no phone; the wav2vec 2.0 frame rate, 320-sample hop and 400-sample receptive
  field, :func:`speechcl.data.alignments.frame_labels`), so line ``i`` has
  ``num_frames(num_samples_i)`` labels; and ``dict.phn.txt``, ``SYMBOL COUNT`` lines with the number
  of frames of each label (``sil`` included) over the training splits, by count descending, phones
  that cover no frame's centre listed with count 0. A set with alignments for only some utterances
  gets none of these files (a ``note`` in the report says how many lacked one); stale ``.phn`` /
  ``.phn_frames`` files from an earlier run are removed;
- the same three files for the LibriLight sets when ``librispeech_finetuning/`` is present, and for
  each requested random subset, see :mod:`speechcl.data.subsets`.

``prepare_keywords(root, out)`` prepares a keyword-spotting corpus laid out as
``<split>/<label>/<file>`` (``speechcl synth --keywords``, :mod:`speechcl.data.keywords`; Speech
Commands' word folders one level down): per split ``<split>.tsv`` (root = ``root``, paths
``<split>/<label>/<file>``), ``<split>.kw`` (the label of each item, its folder's name) and
``dict.kw.txt`` (label counts over the training splits).

``prepare_audio(directory, out)`` writes ``train.tsv`` and ``valid.tsv`` for unlabeled audio: every
file with one of the given extensions under ``directory`` (by default every format libsndfile reads,
:data:`speechcl.audio.io.AUDIO_EXTENSIONS`; hidden files and folders skipped, the same files
``extract`` finds), ``valid_percent`` of them (seeded) held out.

Bad files never stop preparation; ``OUT/prepare_report.tsv`` lists them with columns
``split, path, action, reason`` (a tab, line break or undecodable byte in a cell is written as an escape,
``\\t``, ``\\n``, ``\\xe9``):

=============  ===============================================================================
action         when
=============  ===============================================================================
``skipped``    empty (0 bytes), unreadable header, no samples, shorter than ``min_samples``
               (default :data:`MIN_SAMPLES`, the model's receptive field), a name a manifest
               cannot hold (tab, line break, not UTF-8); with ``verify`` also undecodable data
               and NaN or infinite samples; (labeled corpora) no transcript line, an empty
               transcript or one that is not valid UTF-8, or a transcript line whose audio file
               is missing
``resampled``  sample rate other than 16 kHz: kept, resampled on load; its manifest length is the
               length after resampling
``mixed_down`` more than one channel: kept, channels averaged on load
=============  ===============================================================================

By default a file is checked from its header (fast, for trusted corpora: a corrupt file or NaN samples
behind a valid header get in, and training skips them when it meets them); ``verify=True`` decodes
every file (in ``workers`` processes) with :func:`speechcl.audio.io.load_audio` and keeps out every file
it rejects: truncated or corrupt data, NaN or infinite samples, and the decoded length decides
``too short``. A skipped file is in no manifest. The functions return a :class:`PrepareResult`; the
command exits non-zero only when nothing usable remains. All outputs are written atomically.
"""

from __future__ import annotations

import codecs
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
    error_reason,
    find_audio_files,
    load_audio,
)
from speechcl.data.alignments import SIL, Alignment, alignment_path, frame_labels, read_alignments
from speechcl.data.labels import count_symbols, normalize_transcript, read_lines, words_to_letters, write_dict
from speechcl.data.manifest import Manifest, combine_manifests, path_problem, read_manifest, write_manifest
from speechcl.data.subsets import LIBRILIGHT_DIR, LIBRILIGHT_SETS, SubsetSpec, find_librilight, select_subset
from speechcl.utils.io import write_lines

REPORT_NAME = "prepare_report.tsv"

MIN_SAMPLES = 400
"""Default shortest usable file, in samples at 16 kHz: the receptive field of the wav2vec 2.0 feature
encoder (BASE and LARGE, 400 samples = 25 ms), the least audio that gives one frame."""


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


def probe_audio(path: str, verify: bool = False, min_samples: int = MIN_SAMPLES) -> _Probe:
    """Check one file: its 16 kHz mono length, or why it is unusable, plus conversion notes.

    From the header only, or with ``verify`` by decoding it (:func:`load_audio`: undecodable data and
    non-finite samples are rejected, and the decoded length is the one compared with ``min_samples``).
    """
    try:
        info = audio_info(path)
        if info.num_frames == 0:
            return _Probe(path, None, [("skipped", "audio has no samples (zero length); remove the file")])
        num_samples = info.num_samples(SAMPLE_RATE)
        if verify:
            wave, info = load_audio(path, SAMPLE_RATE)
            num_samples = int(wave.numel())
    except AudioError as err:
        return _Probe(path, None, [("skipped", _one_line(error_reason(err)))])
    except (ValueError, RuntimeError, OSError) as err:  # anything else a decoder or resampler raises
        return _Probe(path, None, [("skipped", _one_line(f"cannot decode audio ({type(err).__name__}: {err}); "
                                                         "re-create or remove the file"))])
    if num_samples < min_samples:
        return _Probe(path, None, [("skipped", f"too short: {num_samples} samples at {SAMPLE_RATE} Hz, fewer than "
                                               f"min_samples={min_samples}; remove the file or lower the minimum "
                                               "(--min-samples)")])
    notes = []
    if info.sample_rate != SAMPLE_RATE:
        notes.append(("resampled", f"sample rate {info.sample_rate} Hz; resampled to {SAMPLE_RATE} Hz on load"))
    if info.num_channels > 1:
        notes.append(("mixed_down", f"{info.num_channels} channels; mixed down to mono on load"))
    return _Probe(path, num_samples, notes)


def _probe_star(args: tuple[str, bool, int]) -> _Probe:
    return probe_audio(*args)


@dataclass(frozen=True)
class _Check:
    """How files are checked: decode them (``verify``) or read headers, the minimum length, processes."""

    verify: bool = False
    min_samples: int = MIN_SAMPLES
    workers: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.min_samples < 0:
            raise ValueError(f"min_samples must be 0 or more, got {self.min_samples}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


def _probe_all(paths: Sequence[str], check: _Check, desc: str) -> list[_Probe]:
    """Probe ``paths`` in order, with a progress bar counting the files skipped so far."""
    mode = "decoding" if check.verify else "reading headers of"
    bar = tqdm(total=len(paths), desc=f"{mode} {desc}", unit="file", disable=not check.progress, leave=False)
    jobs = [(p, check.verify, check.min_samples) for p in paths]
    workers = check.workers or os.cpu_count() or 1
    probes: list[_Probe] = []
    skipped = 0

    def add(probe: _Probe) -> None:
        nonlocal skipped
        probes.append(probe)
        if probe.num_samples is None:
            skipped += 1
            bar.set_postfix(skipped=skipped, refresh=False)
        bar.update()

    if check.verify and workers > 1 and len(paths) > 64:
        with mp.get_context("fork").Pool(workers, initializer=_single_thread) as pool:
            for probe in pool.imap(_probe_star, jobs, chunksize=32):
                add(probe)
    else:
        for job in jobs:
            add(_probe_star(job))
    bar.close()
    return probes


def _manifest_safe(paths: Sequence[str], root: Path, label: str, report: list[ReportRow]) -> list[str]:
    """The ``paths`` a manifest can hold; the others are reported as skipped."""
    kept = []
    for path in paths:
        problem = path_problem(_rel(path, root))
        if problem is None:
            kept.append(path)
        else:
            report.append(ReportRow(label, _rel(path, root), "skipped", problem))
    return kept


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _rel(path: str, root: Path) -> str:
    return os.path.relpath(path, root)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- LibriSpeech


@dataclass
class _Utterance:
    path: str  # absolute
    transcript: str
    num_samples: int
    alignment: Alignment | None = None
    frames: list[str] | None = None  # phone label per model frame, from the alignment

    def speaker(self) -> str:
        return Path(self.path).name.split("-", 1)[0]

    def frame_line(self) -> str:
        if self.frames is None:
            assert self.alignment is not None
            self.frames = frame_labels(self.alignment.phones, self.num_samples)
        return " ".join(self.frames)


@dataclass
class _Line:
    """A transcript line: its text, or why it is unusable, and the file it came from."""

    text: str | None
    source: Path
    problem: str = ""


def find_splits(root: str | Path) -> list[str]:
    """Subdirectories of ``root`` laid out as LibriSpeech splits (``<spk>/<chap>/*.trans.txt``)."""
    root = Path(root)
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and d.name != LIBRILIGHT_DIR and next(d.glob("*/*/*.trans.txt"), None) is not None)


def read_transcripts(path: Path, root: Path) -> dict[str, _Line]:
    """The lines ``UTT_ID TEXT`` of a ``.trans.txt`` file by utterance id (a leading BOM is ignored).

    A line that is not valid UTF-8 keeps its id (decoded as file names are) with ``text=None`` and the
    problem, so that its utterance is reported instead of entering the labels with garbled text.
    """
    lines: dict[str, _Line] = {}
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        utt_id, _, text = raw.strip().partition(b" ")
        if not utt_id:
            continue
        key = utt_id.decode("utf-8", "surrogateescape")
        try:
            lines[key] = _Line(text.decode("utf-8"), path)
        except UnicodeDecodeError as err:
            lines[key] = _Line(None, path, f"transcript line {number} of {_rel(str(path), root)} is not valid "
                                           f"UTF-8 (at {text[err.start:err.start + 4]!r}); fix the file's encoding")
    return lines


def scan_librispeech_dir(directory: Path, root: Path, label: str, report: list[ReportRow],
                         check: _Check) -> list[_Utterance]:
    """Pair every audio file under ``directory`` with its transcript line; problems go to ``report``."""
    transcripts: dict[str, _Line] = {}
    audio: dict[str, str] = {}
    alignments: dict[str, Alignment] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if name.endswith(".trans.txt"):
                transcripts.update(read_transcripts(Path(full), root))
                aligned = alignment_path(full)
                if aligned.is_file():
                    try:
                        alignments.update(read_alignments(aligned))
                    except (ValueError, UnicodeDecodeError) as err:
                        report.append(ReportRow(label, _rel(str(aligned), root), "note",
                                                _one_line(f"alignments not used: {err}")))
            elif name.rsplit(".", 1)[-1].lower() in AUDIO_EXTENSIONS and not name.startswith("."):
                audio[name.rsplit(".", 1)[0]] = full
    ids = sorted(audio, key=lambda k: _rel(audio[k], root))
    safe = set(_manifest_safe([audio[k] for k in ids], root, label, report))
    probes = _probe_all([audio[k] for k in ids if audio[k] in safe], check, desc=label)
    utterances = []
    for probe in probes:
        rel = _rel(probe.path, root)
        utt_id = Path(probe.path).name.rsplit(".", 1)[0]
        for action, reason in probe.notes:
            report.append(ReportRow(label, rel, action, reason))
        if probe.num_samples is None:
            continue
        line = transcripts.get(utt_id)
        if line is None:
            report.append(ReportRow(label, rel, "skipped", f"no transcript line for {utt_id} in "
                                    f"{utt_id.rsplit('-', 1)[0]}.trans.txt"))
        elif line.text is None:
            report.append(ReportRow(label, rel, "skipped", line.problem))
        elif not normalize_transcript(line.text):
            report.append(ReportRow(label, rel, "skipped", "empty transcript"))
        else:
            utterances.append(_Utterance(probe.path, normalize_transcript(line.text), probe.num_samples,
                                         alignments.get(utt_id)))
    for utt_id, line in sorted(transcripts.items()):
        if utt_id not in audio:
            report.append(ReportRow(label, _rel(str(line.source), root), "skipped",
                                    f"transcript line {utt_id} has no audio file"))
    return utterances


def _write_labeled_set(out: Path, name: str, root: Path, utterances: Sequence[_Utterance],
                       report: list[ReportRow] | None = None) -> list[str]:
    """Write ``name``.{tsv,wrd,ltr,spk} and, when every utterance is aligned, ``name``.{phn,phn_frames};
    returns the ``.ltr`` lines."""
    manifest = Manifest(str(root), [_rel(u.path, root) for u in utterances], [u.num_samples for u in utterances])
    write_manifest(out / f"{name}.tsv", manifest)
    write_lines(out / f"{name}.wrd", [u.transcript for u in utterances])
    letters = [words_to_letters(u.transcript) for u in utterances]
    write_lines(out / f"{name}.ltr", letters)
    write_lines(out / f"{name}.spk", [u.speaker() for u in utterances])
    unaligned = sum(u.alignment is None for u in utterances)
    if unaligned == 0:
        write_lines(out / f"{name}.phn", [" ".join(u.alignment.phone_sequence()) for u in utterances
                                           if u.alignment is not None])
        write_lines(out / f"{name}.phn_frames", [u.frame_line() for u in utterances])
    else:
        for ext in PHONE_LABELS:
            (out / f"{name}.{ext}").unlink(missing_ok=True)
        if report is not None and unaligned < len(utterances):
            report.append(ReportRow(name, name, "note", f"{unaligned} of {len(utterances)} utterances have no "
                                                        "alignment (.align.tsv line); no .phn/.phn_frames written"))
    return letters


PHONE_LABELS = ("phn", "phn_frames")
"""Label files written for aligned sets (module docstring)."""


def _write_phone_dict(out: Path, sets: Sequence[Sequence[_Utterance]]) -> None:
    """``dict.phn.txt``: frame counts per phone label over ``sets`` (the aligned training sets), phones that
    label no frame with count 0; removed when no set is aligned."""
    aligned = [utts for utts in sets if utts and all(u.alignment is not None for u in utts)]
    path = out / "dict.phn.txt"
    if not aligned:
        path.unlink(missing_ok=True)
        return
    counts = dict(count_symbols(u.frame_line() for utts in aligned for u in utts))
    for utts in aligned:
        for u in utts:
            for phone in u.alignment.phone_sequence() if u.alignment else ():
                counts.setdefault(phone, 0)
    counts.setdefault(SIL, 0)
    write_dict(path, sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def prepare_librispeech(root: str | os.PathLike, out: str | os.PathLike, splits: Sequence[str] | None = None,
                        subsets: Sequence[SubsetSpec] = (), seed: int = 0, verify: bool = False,
                        workers: int | None = None, progress: bool = False,
                        min_samples: int = MIN_SAMPLES) -> PrepareResult:
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
        min_samples: skip files shorter than this, in samples at 16 kHz.

    Raises:
        ValueError: ``root`` is not a directory or a requested split does not exist.
    """
    root = Path(root).resolve()
    out = Path(out)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; pass the LibriSpeech root holding the split directories")
    check = _Check(verify, min_samples, workers, progress)
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
        utts = scan_librispeech_dir(root / split, root, split, result.report, check)
        utterances[split] = utts
        if not utts:
            result.report.append(ReportRow(split, split, "skipped", "no usable utterances; no files written"))
            continue
        letters[split] = _write_labeled_set(out, split, root, utts, result.report)
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
        _write_labeled_set(out, spec.name, root, [utts[i] for i in chosen], result.report)
        result.items[spec.name] = len(chosen)

    _prepare_librilight(root, out, check, result, letters)
    train = [s for s in letters if s.startswith("train")] or list(letters)
    if letters:
        write_dict(out / "dict.ltr.txt", count_symbols(line for s in train for line in letters[s]))
    _write_phone_dict(out, [utterances[s] for s in train if s in utterances])
    _write_report(out, result.report)
    return result


def _prepare_librilight(root: Path, out: Path, check: _Check, result: PrepareResult,
                        letters: dict[str, list[str]]) -> None:
    """Write the LibriLight sets found under ``root`` (if any); their ``.ltr`` lines go to ``letters``."""
    librilight = find_librilight(root)
    if librilight is None:
        return
    parts: dict[str, list[_Utterance]] = {}
    for sub in sorted({p for dirs in LIBRILIGHT_SETS.values() for p in dirs}):
        if (librilight / sub).is_dir():
            parts[sub] = scan_librispeech_dir(librilight / sub, root, f"{LIBRILIGHT_DIR}/{sub}", result.report,
                                              check)
    for name, dirs in LIBRILIGHT_SETS.items():
        utts = [u for d in dirs for u in parts.get(d, [])]
        if not utts:
            continue
        # "1h" includes "1h/0": keep each file once, in path order
        unique = {u.path: u for u in utts}
        utts = sorted(unique.values(), key=lambda u: _rel(u.path, root))
        letters.setdefault(name, _write_labeled_set(out, name, root, utts, result.report))
        result.items[name] = len(utts)


# ----------------------------------------------------------------------------- any audio folder


def prepare_audio(directory: str | os.PathLike, out: str | os.PathLike, valid_percent: float = 0.01,
                  extensions: Iterable[str] = AUDIO_EXTENSIONS, seed: int = 42, verify: bool = False,
                  workers: int | None = None, progress: bool = False,
                  min_samples: int = MIN_SAMPLES) -> PrepareResult:
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
        min_samples: skip files shorter than this, in samples at 16 kHz.
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
    check = _Check(verify, min_samples, workers, progress)
    paths = sorted((str(p) for p in find_audio_files(root, exts)), key=lambda p: _rel(p, root))
    out.mkdir(parents=True, exist_ok=True)
    result = PrepareResult()
    usable = []
    for probe in _probe_all(_manifest_safe(paths, root, "audio", result.report), check, desc="audio"):
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


# ----------------------------------------------------------------------------- keyword spotting


def find_keyword_splits(root: str | Path) -> list[str]:
    """Subdirectories of ``root`` laid out as keyword splits (``<split>/<label>/<audio file>``)."""
    root = Path(root)
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any(_has_audio(label) for label in d.iterdir() if not label.name.startswith(".")))


def _has_audio(folder: Path) -> bool:
    """``folder`` is a directory with an audio file directly in it (stops at the first)."""
    return folder.is_dir() and any(f.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS and not f.name.startswith(".")
                                   for f in folder.iterdir())


def prepare_keywords(root: str | os.PathLike, out: str | os.PathLike, splits: Sequence[str] | None = None,
                     verify: bool = False, workers: int | None = None, progress: bool = False,
                     min_samples: int = MIN_SAMPLES) -> PrepareResult:
    """Write ``<split>.tsv``, ``<split>.kw`` and ``dict.kw.txt`` for a keyword corpus (module docstring).

    Args:
        root: the directory holding the split directories (``speechcl synth --keywords`` output).
        out: output directory (created).
        splits: split directory names; default: every ``<split>/<label>/`` directory with audio under ``root``.
        verify, workers, progress, min_samples: as for :func:`prepare_librispeech`.

    Raises:
        ValueError: ``root`` is not a directory, holds no keyword splits, or a requested split is missing.
    """
    root = Path(root).resolve()
    out = Path(out)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; pass the keyword corpus holding train/, dev/, test/")
    check = _Check(verify, min_samples, workers, progress)
    available = find_keyword_splits(root)
    wanted = list(splits) if splits else available
    if not wanted:
        raise ValueError(f"no keyword splits (<split>/<label>/*.flac) under {root}; make one with "
                         "'speechcl synth OUT --keywords'")
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ValueError(f"split(s) {missing} not found under {root} (or hold no <label>/ folders with audio); "
                         f"available: {available or 'none'}")
    out.mkdir(parents=True, exist_ok=True)
    result = PrepareResult()
    labels: dict[str, list[str]] = {}
    for split in wanted:
        paths = sorted((str(p) for p in find_audio_files(root / split)), key=lambda p: _rel(p, root))
        items = []
        for probe in _probe_all(_manifest_safe(paths, root, split, result.report), check, desc=split):
            rel = _rel(probe.path, root)
            result.report += [ReportRow(split, rel, action, reason) for action, reason in probe.notes]
            if probe.num_samples is None:
                continue
            parts = Path(rel).parts
            if len(parts) < 3:
                result.report.append(ReportRow(split, rel, "skipped", "not in a label folder "
                                               "(<split>/<label>/<file>); move it into one or remove it"))
                continue
            items.append((rel, probe.num_samples, parts[1]))
        if not items:
            result.report.append(ReportRow(split, split, "skipped", "no usable clips; no files written"))
            continue
        write_manifest(out / f"{split}.tsv", Manifest(str(root), [r for r, _, _ in items], [n for _, n, _ in items]))
        labels[split] = [label for _, _, label in items]
        write_lines(out / f"{split}.kw", labels[split])
        result.items[split] = len(items)
    train = [s for s in labels if s.startswith("train")] or list(labels)
    if labels:
        write_dict(out / "dict.kw.txt", count_symbols(label for s in train for label in labels[s]))
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
                                    *(f"{_cell(r.split)}\t{_cell(r.path)}\t{r.action}\t{_cell(r.reason)}"
                                      for r in rows)])


def _cell(text: str) -> str:
    """``text`` as one TSV cell in UTF-8: tabs, line breaks and undecodable bytes written as escapes."""
    if path_problem(text) is None:
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # a file name's undecodable bytes, as they were
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
