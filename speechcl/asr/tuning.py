"""Choosing decoder settings on one split, remembered across runs: the LM weight and word score of beam
search, and the blank penalty of either decoder (:mod:`speechcl.asr.decode`).

:func:`tune_split` runs the acoustic model once on the tuning split, decodes its logits with every
(LM weight, word score, blank penalty) of a grid (:func:`~speechcl.asr.evaluate.tune_decoder`), keeps the
one with the lowest WER (or CER) and writes the grid and the choice to ``OUT/tune.json`` together with a
fingerprint (:func:`tuning_fingerprint`) of what the choice depends on: the model, LM and lexicon files
(path, size and modification time of each file), the decoder, the grid and metric, the split's manifest
and its references. A later call whose fingerprint matches reads the choice back instead of decoding
again; a changed input (a rebuilt LM, another grid) tunes again.

Usage::

    outcome = tune_split(recognizer, manifest, references, "dev-clean", "eval", model_path="exp/ft/best",
                         lm="lm.arpa", lm_weights=[0.5, 1, 2], word_scores=[-1, 0, 1])
    decoder = build_decoder(recognizer.dictionary, 50, lm="lm.arpa", lm_weight=outcome.lm_weight,
                            word_score=outcome.word_score, blank_penalty=outcome.blank_penalty)

    # greedy decoding: only the blank penalty is tuned (on CER, the metric that moves at high error rates)
    outcome = tune_split(recognizer, manifest, references, "dev-clean", "eval", model_path="exp/ft/best",
                         lm_weights=[0], word_scores=[0], blank_penalties=[0, 0.5, 1, 2], metric="cer")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from speechcl.asr.decode import BeamSearchDecoder, Decoder, GreedyDecoder, build_decoder
from speechcl.asr.evaluate import TUNE_METRICS, Skipped, TuningPoint, split_logits, tune_decoder
from speechcl.asr.recognizer import Recognizer
from speechcl.data.manifest import Manifest
from speechcl.utils.io import atomic_write_json

RECORD_NAME = "tune.json"

PathLike = str | os.PathLike


def decoder_settings(beam: int = 0, lm: PathLike | None = None, lexicon: PathLike | None = None,
                     lm_weight: float = 2.0, word_score: float = 0.0, blank_penalty: float = 0.0) -> dict[str, Any]:
    """The decoder as results files record it: ``{"decoder": "greedy"}``, or beam search with its beam
    (50 when ``beam`` is 0), LM, lexicon, LM weight and word score (as :func:`build_decoder` builds it);
    ``blank_penalty`` only when it is not 0 (so records of decoders without one keep their form)."""
    penalty = {"blank_penalty": blank_penalty} if blank_penalty else {}
    if not (beam or lm or lexicon):
        return {"decoder": "greedy", **penalty}
    return {"decoder": "beam", "beam": beam or 50, "lm": lm, "lexicon": lexicon, "lm_weight": lm_weight,
            "word_score": word_score, **penalty}


def file_signature(path: PathLike) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of a file, or of every file under a directory (a checkpoint folder), so
    that a rewritten model or LM changes it."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def tuning_fingerprint(model_path: PathLike, manifest: Manifest, references: Sequence[str], split: str, *,
                       beam: int = 0, lm: PathLike | None = None, lexicon: PathLike | None = None,
                       lm_weights: Sequence[float], word_scores: Sequence[float],
                       blank_penalties: Sequence[float] = (0.0,), metric: str = "wer") -> str:
    """SHA-256 over everything a tuning choice depends on (see the module docstring)."""
    identity = {"model": str(Path(model_path).resolve()),
                **decoder_settings(beam, lm, lexicon, 0.0, 0.0),  # the weights tried are the grid's, below
                "lm_weights": list(lm_weights), "word_scores": list(word_scores),
                "blank_penalties": list(blank_penalties), "metric": metric, "split": split,
                "paths": manifest.paths, "root": manifest.root, "references": list(references),
                "files": [file_signature(p) for p in (model_path, lm, lexicon) if p]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class TuningOutcome:
    """The chosen LM weight, word score and blank penalty; what was measured when this call tuned (not read
    back)."""

    lm_weight: float
    word_score: float
    blank_penalty: float = 0.0
    best: TuningPoint | None = None  # the chosen point with its score; None when read from tune.json
    points: list[TuningPoint] = field(default_factory=list)  # every grid point, in grid order
    logits: list[Tensor | Skipped] | None = None  # the split's logits (from split_logits), for evaluate_split

    @property
    def reused(self) -> bool:
        """True when the choice was read from an earlier run's ``tune.json``."""
        return self.best is None


def read_tuning_record(out_dir: PathLike, fingerprint: str) -> tuple[float, float, float] | None:
    """The ``(lm_weight, word_score, blank_penalty)`` recorded in ``out_dir/tune.json`` under ``fingerprint``,
    else None."""
    path = Path(out_dir) / RECORD_NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("fingerprint") != fingerprint:
        return None
    best = record["best"]
    return float(best["lm_weight"]), float(best["word_score"]), float(best.get("blank_penalty", 0.0))


def tune_split(recognizer: Recognizer, manifest: Manifest, references: Sequence[str], split: str,
               out_dir: PathLike, *, model_path: PathLike, lm_weights: Sequence[float],
               word_scores: Sequence[float], blank_penalties: Sequence[float] = (0.0,), metric: str = "wer",
               beam: int = 0, lm: PathLike | None = None, lexicon: PathLike | None = None, batch_size: int = 8,
               max_tokens: int | None = None, progress: bool = True) -> TuningOutcome:
    """Choose the decoder's settings on ``split``, or read the choice back.

    Files of the split that cannot be decoded are left out of every grid point's score, as
    :func:`~speechcl.asr.evaluate.evaluate_split` leaves them out (they are :class:`Skipped` in the
    returned logits).

    Args:
        recognizer: the CTC model loaded from ``model_path`` (whose files are fingerprinted).
        manifest, references: the tuning split and its transcripts, aligned line by line.
        out_dir: where ``tune.json`` is read and written.
        lm_weights, word_scores, blank_penalties: the grid (every combination is tried). Greedy decoding
            (no beam, LM or lexicon) tunes the blank penalty only: one LM weight and one word score.
        metric: what the choice minimises on the split, ``"wer"`` or ``"cer"``.
        beam, lm, lexicon: the decoder, as for :func:`~speechcl.asr.decode.build_decoder`.
        batch_size, max_tokens: batching of the acoustic model (as for :func:`split_logits`).
    """
    greedy = decoder_settings(beam, lm, lexicon)["decoder"] == "greedy"
    if greedy and len(lm_weights) * len(word_scores) > 1:
        raise ValueError("tuning the LM weight and word score needs beam search: give an lm, a lexicon or a beam")
    if metric not in TUNE_METRICS:
        raise ValueError(f"unknown tuning metric {metric!r}: choose one of {', '.join(TUNE_METRICS)}")
    fingerprint = tuning_fingerprint(model_path, manifest, references, split, beam=beam, lm=lm, lexicon=lexicon,
                                     lm_weights=lm_weights, word_scores=word_scores,
                                     blank_penalties=blank_penalties, metric=metric)
    recorded = read_tuning_record(out_dir, fingerprint)
    if recorded is not None:
        return TuningOutcome(*recorded)
    logits = split_logits(recognizer, manifest, batch_size, max_tokens, progress=progress, desc=f"logits {split}")
    base = build_decoder(recognizer.dictionary, beam, lm=lm, lexicon=lexicon, lm_weight=lm_weights[0],
                         word_score=word_scores[0])  # reads the LM once; reweighted for every other setting
    make: Callable[[float, float, float], Decoder] = base.reweighted if isinstance(base, BeamSearchDecoder) \
        else lambda _lm_weight, _word_score, penalty: GreedyDecoder(recognizer.dictionary, penalty)
    best, points = tune_decoder(logits, references, make, lm_weights, word_scores, blank_penalties, metric,
                                progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RECORD_NAME, {"split": split, "metric": metric, "best": best.to_dict(),
                                          "grid": [p.to_dict() for p in points], "fingerprint": fingerprint})
    return TuningOutcome(best.lm_weight, best.word_score, best.blank_penalty, best, points, logits)
