"""Decoding a manifest and scoring it: the library side of ``speechcl evaluate``.

For a split ``NAME`` (the manifest's file stem) :func:`evaluate_split` writes into the output
directory, each file atomically:

- ``hyp.NAME.txt`` / ``ref.NAME.txt``: one transcript per manifest line, in manifest order;
- ``result.NAME.json``: WER, CER, their counts, the decoding settings and the timing.

Utterances are decoded longest first in padded batches (``batch_size`` items and at most
``max_tokens`` padded samples each); padding leaves each utterance's logits as they are alone (group
norms included, see :mod:`speechcl.models.feature_encoder`). Audio shorter than one frame decodes to an
empty hypothesis. Finished batches are appended to
``.hyp.NAME.partial.jsonl``, so an interrupted run resumes where it stopped (when the model, manifest
and decoding settings are the same) and the file is removed once the results are written.

:func:`tune_decoder` chooses decoder settings (the LM weight and word score of beam search) on one
split: it runs the acoustic model once (:func:`split_logits`) and decodes those logits with every
setting of a grid, keeping the one with the lowest WER.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from speechcl.asr.decode import Decoder
from speechcl.asr.recognizer import Recognizer
from speechcl.asr.score import Score, score
from speechcl.audio.io import SAMPLE_RATE, load_audio
from speechcl.data.batching import length_sorted_batches
from speechcl.data.labels import normalize_transcript, read_lines
from speechcl.data.manifest import Manifest
from speechcl.utils.io import atomic_write_json, write_lines


@dataclass
class SplitResult:
    """What :func:`evaluate_split` measured."""

    split: str
    score: Score
    hypotheses: list[str]
    references: list[str]
    audio_seconds: float
    decode_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, **self.score.to_dict(), "audio_seconds": round(self.audio_seconds, 3),
                "decode_seconds": round(self.decode_seconds, 3)}


def _partial_records(path: Path, fingerprint: str) -> dict[int, str]:
    if not path.is_file():
        return {}
    done: dict[int, str] = {}
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines or lines[0] != json.dumps({"fingerprint": fingerprint}):
        return {}  # another model or other settings: start over
    for line in lines[1:]:
        try:
            record = json.loads(line)
            done[int(record["index"])] = str(record["text"])
        except (ValueError, KeyError, TypeError):
            break  # a torn last line from an interrupted write
    return done


def evaluate_split(recognizer: Recognizer, decoder: Decoder, manifest: Manifest, references: Sequence[str],
                   out_dir: str | os.PathLike, split: str, settings: dict[str, Any], batch_size: int = 8,
                   max_tokens: int | None = None, progress: bool = True,
                   logits: Sequence[Tensor | None] | None = None) -> SplitResult:
    """Decode every item of ``manifest``, score against ``references`` and write the split's files.

    Args:
        settings: what identifies the run (model path, decoder options); stored in the result and used
            to decide whether a partial run can be resumed.
        logits: the recognizer's output per item from :func:`split_logits`, when already computed
            (the model is then not run again).
    """
    if logits is not None and len(logits) != len(manifest):
        raise ValueError(f"{len(logits)} logits for {len(manifest)} manifest items in split {split!r}")
    if len(references) != len(manifest):
        raise ValueError(f"{len(references)} reference transcripts for {len(manifest)} manifest items in "
                         f"split {split!r}: labels and manifest must be aligned line by line")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
                texts = _decode_batch(recognizer, decoder, [manifest.full_path(i) for i in items])
            else:
                texts = [_decode_one(decoder, logits[i]) for i in items]
            for i, text in zip(items, texts):
                done[i] = text
                log.write(json.dumps({"index": i, "text": text}) + "\n")
            log.flush()
            bar.update(len(items))
    elapsed = time.perf_counter() - start
    hyps = [done[i] for i in range(len(manifest))]
    refs = [normalize_transcript(r) for r in references]
    result = SplitResult(split, score(refs, hyps), hyps, refs, manifest.total_samples() / SAMPLE_RATE, elapsed)
    write_lines(out / f"hyp.{split}.txt", hyps)
    write_lines(out / f"ref.{split}.txt", refs)
    atomic_write_json(out / f"result.{split}.json", {**result.to_dict(), "settings": settings})
    partial.unlink(missing_ok=True)
    return result


def _forward_files(recognizer: Recognizer, paths: Sequence[str]) -> tuple[Tensor, Tensor, list[int]]:
    """Run the model on audio files as one padded batch.

    Returns logits ``[B', T, V]`` and frames ``[B']`` of the files at least one frame (25 ms) long, with
    their positions in ``paths`` (``B' = 0`` and empty tensors when there are none).
    """
    waves = [load_audio(path)[0] for path in paths]
    usable = [k for k, wave in enumerate(waves) if recognizer.num_frames(wave.shape[0]) > 0]
    if not usable:
        return torch.empty(0, 0, len(recognizer.dictionary)), torch.empty(0, dtype=torch.int64), []
    logits, lengths = recognizer.forward([waves[k] for k in usable])
    return logits, lengths, usable


def _decode_batch(recognizer: Recognizer, decoder: Decoder, paths: Sequence[str]) -> list[str]:
    """Transcripts of audio files decoded as one padded batch."""
    texts = [""] * len(paths)  # audio shorter than one frame decodes to nothing
    logits, lengths, usable = _forward_files(recognizer, paths)
    if usable:
        for k, text in zip(usable, decoder(logits, lengths)):
            texts[k] = text
    return texts


def _decode_one(decoder: Decoder, logits: Tensor | None) -> str:
    """The transcript of one item's logits ``[T, V]`` (``None``: audio shorter than a frame)."""
    return "" if logits is None else decoder(logits[None])[0]


def split_logits(recognizer: Recognizer, manifest: Manifest, batch_size: int = 8, max_tokens: int | None = None,
                 progress: bool = True, desc: str = "logits") -> list[Tensor | None]:
    """The recognizer's logits ``[T_i, V]`` (float32, CPU) for every item of ``manifest``, in manifest order,
    computed in padded batches as :func:`evaluate_split` does; ``None`` for audio shorter than one frame."""
    out: list[Tensor | None] = [None] * len(manifest)
    with tqdm(total=len(manifest), desc=desc, unit="utt", disable=not progress) as bar:
        for batch in length_sorted_batches(manifest.sizes, max_tokens, batch_size, longest_first=True):
            logits, lengths, usable = _forward_files(recognizer, [manifest.full_path(i) for i in batch])
            for row, k in enumerate(usable):
                out[batch[k]] = logits[row, : int(lengths[row])].clone()
            bar.update(len(batch))
    return out


@dataclass(frozen=True)
class TuningPoint:
    """One decoder setting of a grid and its score on the tuning split."""

    lm_weight: float
    word_score: float
    score: Score

    def to_dict(self) -> dict[str, Any]:
        return {"lm_weight": self.lm_weight, "word_score": self.word_score, "wer": self.score.wer,
                "cer": self.score.cer}


def tune_decoder(logits: Sequence[Tensor | None], references: Sequence[str],
                 make_decoder: Callable[[float, float], Decoder], lm_weights: Sequence[float],
                 word_scores: Sequence[float], progress: bool = True) -> tuple[TuningPoint, list[TuningPoint]]:
    """Decode one split's ``logits`` (from :func:`split_logits`) with every (LM weight, word score) pair.

    Args:
        references: the split's reference transcripts, aligned with ``logits``.
        make_decoder: builds the decoder for ``(lm_weight, word_score)``.

    Returns:
        the best point (lowest WER, then lowest CER, then earliest in the grid) and every point in grid
        order (LM weights outer, word scores inner).
    """
    if len(references) != len(logits):
        raise ValueError(f"{len(references)} reference transcripts for {len(logits)} utterances")
    if not lm_weights or not word_scores:
        raise ValueError("the tuning grid needs at least one LM weight and one word score")
    refs = [normalize_transcript(r) for r in references]
    grid = [(w, s) for w in lm_weights for s in word_scores]
    points = []
    for lm_weight, word_score in tqdm(grid, desc="tune", unit="setting", disable=not progress):
        decoder = make_decoder(lm_weight, word_score)
        hyps = [_decode_one(decoder, item) for item in logits]
        points.append(TuningPoint(lm_weight, word_score, score(refs, hyps)))
    best = min(range(len(points)), key=lambda i: (points[i].score.wer, points[i].score.cer, i))
    return points[best], points


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
