"""Decoding a manifest and scoring it: the library side of ``speechcl evaluate``.

For a split ``NAME`` (the manifest's file stem) :func:`evaluate_split` writes into the output
directory, each file atomically:

- ``hyp.NAME.txt`` / ``ref.NAME.txt``: one transcript per scored utterance, in manifest order;
- ``result.NAME.json``: WER, CER, their counts, how many files were scored and skipped, the decoding
  settings and the timing;
- ``bad.NAME.tsv`` (only when some file was skipped): ``path<TAB>reason`` per skipped file.

A file is skipped, not decoded, when it cannot be used as audio (missing, empty, undecodable, NaN or
infinite samples: :func:`~speechcl.audio.io.load_audio`) or is too short for one frame of the model
(fewer samples than its receptive field, 400 at 16 kHz: :meth:`Recognizer.load`). The split is scored on
the other files; when no file is left the split fails with an error. Without skipped files the outputs
list every manifest line.

Utterances are decoded longest first in padded batches (``batch_size`` items and at most
``max_tokens`` padded samples each); padding leaves each utterance's logits as they are alone (group
norms included, see :mod:`speechcl.models.feature_encoder`). Finished batches, skipped files included,
are appended to ``.hyp.NAME.partial.jsonl``, so an interrupted run resumes where it stopped (when the
model, manifest and decoding settings are the same) without reading any of those files again; the file
is removed once the results are written.

:func:`tune_decoder` chooses decoder settings (the LM weight and word score of beam search, the blank
penalty of either decoder) on one split: it runs the acoustic model once (:func:`split_logits`) and
decodes those logits with every setting of a grid, keeping the one with the lowest WER (or CER).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from speechcl.asr.decode import Decoder
from speechcl.asr.recognizer import Recognizer
from speechcl.asr.score import Score, score
from speechcl.audio.io import SAMPLE_RATE, AudioError, error_reason
from speechcl.data.batching import length_sorted_batches
from speechcl.data.labels import normalize_transcript, read_lines
from speechcl.data.manifest import Manifest
from speechcl.utils.io import atomic_write_json, atomic_write_text, remove_stale_temporaries, write_lines


@dataclass(frozen=True)
class Skipped:
    """An utterance that was not decoded, and why (an unreadable file, audio shorter than one frame)."""

    reason: str


Outcome = str | Skipped
"""What decoding one utterance gave: its transcript, or why it was skipped."""


@dataclass
class SplitResult:
    """What :func:`evaluate_split` measured."""

    split: str
    score: Score
    hypotheses: list[str]
    references: list[str]
    audio_seconds: float  # of the scored utterances
    decode_seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), in manifest order

    @property
    def files(self) -> int:
        """Manifest items: the scored utterances plus the skipped files."""
        return self.score.utterances + len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, **self.score.to_dict(), "files": self.files, "skipped": len(self.skipped),
                "audio_seconds": round(self.audio_seconds, 3), "decode_seconds": round(self.decode_seconds, 3)}


def _record(index: int, outcome: Outcome) -> str:
    if isinstance(outcome, Skipped):
        return json.dumps({"index": index, "skipped": outcome.reason})
    return json.dumps({"index": index, "text": outcome})


def _partial_records(path: Path, fingerprint: str) -> dict[int, Outcome]:
    """Index -> outcome of the items a run with the same ``fingerprint`` finished (transcripts and
    skipped files); empty when ``path`` is missing or was written for other inputs."""
    if not path.is_file():
        return {}
    done: dict[int, Outcome] = {}
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines or lines[0] != json.dumps({"fingerprint": fingerprint}):
        return {}  # another model or other settings: start over
    for line in lines[1:]:
        try:
            record = json.loads(line)
            index = int(record["index"])
            done[index] = Skipped(str(record["skipped"])) if "skipped" in record else str(record["text"])
        except (ValueError, KeyError, TypeError):
            break  # a torn last line from an interrupted write
    return done


def evaluate_split(recognizer: Recognizer, decoder: Decoder, manifest: Manifest, references: Sequence[str],
                   out_dir: str | os.PathLike, split: str, settings: dict[str, Any], batch_size: int = 8,
                   max_tokens: int | None = None, progress: bool = True,
                   logits: Sequence[Tensor | Skipped] | None = None) -> SplitResult:
    """Decode every item of ``manifest``, score against ``references`` and write the split's files.

    Files that cannot be decoded are skipped and reported (see the module docstring).

    Args:
        settings: what identifies the run (model path, decoder options); stored in the result and used
            to decide whether a partial run can be resumed.
        logits: the recognizer's output per item from :func:`split_logits`, when already computed
            (the model is then not run again).

    Raises:
        ValueError: references and manifest are not aligned, or no file of the split could be decoded.
    """
    if logits is not None and len(logits) != len(manifest):
        raise ValueError(f"{len(logits)} logits for {len(manifest)} manifest items in split {split!r}")
    if len(references) != len(manifest):
        raise ValueError(f"{len(references)} reference transcripts for {len(manifest)} manifest items in "
                         f"split {split!r}: labels and manifest must be aligned line by line")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, recursive=False)  # what a killed run left mid-write
    fingerprint = hashlib.sha256(json.dumps(
        {"settings": settings, "root": manifest.root, "paths": manifest.paths}, sort_keys=True, default=str,
    ).encode()).hexdigest()
    partial = out / f".hyp.{split}.partial.jsonl"
    done = _partial_records(partial, fingerprint)
    if not done:
        partial.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
    todo = [i for i in range(len(manifest)) if i not in done]
    sizes = [manifest.sizes[i] for i in todo]
    batches = length_sorted_batches(sizes, max_tokens, batch_size, longest_first=True)
    start = time.perf_counter()
    with open(partial, "a", encoding="utf-8") as log, tqdm(
        total=len(manifest), initial=len(done), desc=f"decode {split}", unit="utt", disable=not progress,
    ) as bar:
        for batch in batches:
            items = [todo[j] for j in batch]
            if logits is None:
                outcomes = _decode_batch(recognizer, decoder, [manifest.full_path(i) for i in items])
            else:
                outcomes = [_decode_one(decoder, logits[i]) for i in items]
            for i, outcome in zip(items, outcomes):
                done[i] = outcome
                log.write(_record(i, outcome) + "\n")
            log.flush()
            bar.update(len(items))
    result = _finish_split(manifest, references, done, out, split, settings, time.perf_counter() - start)
    partial.unlink(missing_ok=True)
    return result


def _finish_split(manifest: Manifest, references: Sequence[str], done: dict[int, Outcome], out: Path,
                  split: str, settings: dict[str, Any], elapsed: float) -> SplitResult:
    """Score the decoded items and write the split's hyp, ref, result and bad-file report."""
    scored = [i for i in range(len(manifest)) if not isinstance(done[i], Skipped)]
    skipped = [(manifest.full_path(i), outcome.reason) for i in range(len(manifest))
               if isinstance(outcome := done[i], Skipped)]
    report = out / f"bad.{split}.tsv"
    if skipped:
        atomic_write_text(report, "".join(f"{path}\t{reason}\n" for path, reason in skipped))
    else:
        report.unlink(missing_ok=True)
    if not scored:
        raise ValueError(f"split {split!r}: none of its {len(manifest)} files could be decoded (reasons in "
                         f"{report}); check the manifest's root and files")
    hyps = [str(done[i]) for i in scored]
    refs = [normalize_transcript(references[i]) for i in scored]
    audio_seconds = sum(manifest.sizes[i] for i in scored) / SAMPLE_RATE
    result = SplitResult(split, score(refs, hyps), hyps, refs, audio_seconds, elapsed, skipped)
    write_lines(out / f"hyp.{split}.txt", hyps)
    write_lines(out / f"ref.{split}.txt", refs)
    atomic_write_json(out / f"result.{split}.json", {**result.to_dict(), "settings": settings})
    return result


def _forward_files(recognizer: Recognizer, paths: Sequence[str]
                   ) -> tuple[Tensor, Tensor, list[int], dict[int, Skipped]]:
    """Run the model on audio files as one padded batch.

    Returns logits ``[B', T, V]`` and frames ``[B']`` of the files that could be loaded and are at least
    one frame long, their positions in ``paths`` (``B' = 0`` and empty tensors when there are none), and
    position -> :class:`Skipped` for the others.
    """
    waves: dict[int, Tensor] = {}
    skipped: dict[int, Skipped] = {}
    for k, path in enumerate(paths):
        try:
            waves[k] = recognizer.load(path)
        except AudioError as err:
            skipped[k] = Skipped(error_reason(err))
    usable = sorted(waves)
    if not usable:
        return torch.empty(0, 0, len(recognizer.dictionary)), torch.empty(0, dtype=torch.int64), [], skipped
    logits, lengths = recognizer.forward([waves[k] for k in usable])
    return logits, lengths, usable, skipped


def _decode_batch(recognizer: Recognizer, decoder: Decoder, paths: Sequence[str]) -> list[Outcome]:
    """Transcripts of audio files decoded as one padded batch (:class:`Skipped` for unusable files)."""
    logits, lengths, usable, skipped = _forward_files(recognizer, paths)
    outcomes: list[Outcome] = [skipped.get(k, "") for k in range(len(paths))]
    if usable:
        for k, text in zip(usable, decoder(logits, lengths)):
            outcomes[k] = text
    return outcomes


def _decode_one(decoder: Decoder, logits: Tensor | Skipped) -> Outcome:
    """The transcript of one item's logits ``[T, V]``; a skipped item stays skipped."""
    return logits if isinstance(logits, Skipped) else decoder(logits[None])[0]


def split_logits(recognizer: Recognizer, manifest: Manifest, batch_size: int = 8, max_tokens: int | None = None,
                 progress: bool = True, desc: str = "logits") -> list[Tensor | Skipped]:
    """The recognizer's logits ``[T_i, V]`` (float32, CPU) for every item of ``manifest``, in manifest order,
    computed in padded batches as :func:`evaluate_split` does; :class:`Skipped` for files that cannot be
    decoded or are shorter than one frame."""
    out: list[Tensor | Skipped] = [Skipped("not computed")] * len(manifest)
    with tqdm(total=len(manifest), desc=desc, unit="utt", disable=not progress) as bar:
        for batch in length_sorted_batches(manifest.sizes, max_tokens, batch_size, longest_first=True):
            logits, lengths, usable, skipped = _forward_files(recognizer, [manifest.full_path(i) for i in batch])
            for row, k in enumerate(usable):
                out[batch[k]] = logits[row, : int(lengths[row])].clone()
            for k, reason in skipped.items():
                out[batch[k]] = reason
            bar.update(len(batch))
    return out


TUNE_METRICS = ("wer", "cer")
"""What a tuning grid can minimise on its split (ties go to the other metric, then to the earlier point)."""


@dataclass(frozen=True)
class TuningPoint:
    """One decoder setting of a grid and its score on the tuning split."""

    lm_weight: float
    word_score: float
    score: Score
    blank_penalty: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"lm_weight": self.lm_weight, "word_score": self.word_score, "blank_penalty": self.blank_penalty,
                "wer": self.score.wer, "cer": self.score.cer}


def tune_decoder(logits: Sequence[Tensor | Skipped], references: Sequence[str],
                 make_decoder: Callable[[float, float, float], Decoder], lm_weights: Sequence[float],
                 word_scores: Sequence[float], blank_penalties: Sequence[float] = (0.0,), metric: str = "wer",
                 progress: bool = True) -> tuple[TuningPoint, list[TuningPoint]]:
    """Decode one split's ``logits`` (from :func:`split_logits`) with every (LM weight, word score, blank
    penalty) of a grid.

    Skipped items are left out of the score.

    Args:
        references: the split's reference transcripts, aligned with ``logits``.
        make_decoder: builds the decoder for ``(lm_weight, word_score, blank_penalty)``.
        metric: ``"wer"`` or ``"cer"``, the score the best point minimises (:data:`TUNE_METRICS`).

    Returns:
        the best point (lowest ``metric``, then the lowest other one, then earliest in the grid) and every
        point in grid order (LM weights outermost, blank penalties innermost).
    """
    if len(references) != len(logits):
        raise ValueError(f"{len(references)} reference transcripts for {len(logits)} utterances")
    if not lm_weights or not word_scores or not blank_penalties:
        raise ValueError("the tuning grid needs at least one LM weight, word score and blank penalty")
    if metric not in TUNE_METRICS:
        raise ValueError(f"unknown tuning metric {metric!r}: choose one of {', '.join(TUNE_METRICS)}")
    usable = [i for i, item in enumerate(logits) if not isinstance(item, Skipped)]
    if not usable:
        raise ValueError(f"none of the {len(logits)} utterances of the tuning split could be decoded")
    refs = [normalize_transcript(references[i]) for i in usable]
    grid = [(w, s, b) for w in lm_weights for s in word_scores for b in blank_penalties]
    points = []
    for lm_weight, word_score, blank_penalty in tqdm(grid, desc="tune", unit="setting", disable=not progress):
        decoder = make_decoder(lm_weight, word_score, blank_penalty)
        hyps = [str(_decode_one(decoder, logits[i])) for i in usable]
        points.append(TuningPoint(lm_weight, word_score, score(refs, hyps), blank_penalty))

    def rank(i: int) -> tuple[float, float, int]:
        wer, cer = points[i].score.wer, points[i].score.cer
        return (wer, cer, i) if metric == "wer" else (cer, wer, i)

    return points[min(range(len(points)), key=rank)], points


def default_references(manifest_path: str | os.PathLike) -> Path:
    """The ``.wrd`` file next to a manifest: ``DIR/dev-clean.tsv`` -> ``DIR/dev-clean.wrd``."""
    return Path(manifest_path).with_suffix(".wrd")


def read_references(path: str | os.PathLike) -> list[str]:
    """Reference transcripts, one per line; a missing file raises with what to pass instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference transcripts {path} not found: pass --labels FILE.wrd")
    return read_lines(path)


def update_summary(out_dir: str | os.PathLike, results: Sequence[SplitResult]) -> dict[str, Any]:
    """Write ``out_dir/summary.json`` (split name -> :meth:`SplitResult.to_dict`, read by
    :mod:`speechcl.asr.report`) with ``results`` added; splits from earlier runs into ``out_dir`` that are
    not among them are kept. Returns the summary."""
    path = Path(out_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update({r.split: r.to_dict() for r in results})
    atomic_write_json(path, summary)
    return summary
