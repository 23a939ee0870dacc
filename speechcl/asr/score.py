"""Word and character error rates (jiwer), with the counts behind them.

Both sides are normalised as the labels are (:func:`speechcl.data.labels.normalize_transcript`:
uppercase, single spaces). CER is computed over the characters of the normalised strings, spaces
between words included. Empty hypotheses (a model that emits only blanks) count as deletions; empty
references are allowed (their hypothesis words count as insertions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import jiwer

from speechcl.data.labels import normalize_transcript


@dataclass(frozen=True)
class ErrorCounts:
    """Edit-distance counts against ``reference_length`` reference units (words or characters)."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_length(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def rate(self) -> float:
        """errors / reference length (0 for no errors on empty references, inf for errors on them)."""
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.reference_length

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "errors": self.errors, "reference_length": self.reference_length,
                **asdict(self)}


@dataclass(frozen=True)
class Score:
    """WER and CER over a set of utterances (rates are fractions, not percentages)."""

    words: ErrorCounts
    chars: ErrorCounts
    utterances: int

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate

    def to_dict(self) -> dict[str, Any]:
        return {"wer": self.wer, "cer": self.cer, "utterances": self.utterances,
                "words": self.words.to_dict(), "chars": self.chars.to_dict()}


def score(references: Sequence[str], hypotheses: Sequence[str]) -> Score:
    """WER/CER of ``hypotheses`` against ``references`` (aligned lists of transcripts)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("nothing to score: no utterances")
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    return Score(
        words=ErrorCounts(w.substitutions, w.deletions, w.insertions, w.hits),
        chars=ErrorCounts(c.substitutions, c.deletions, c.insertions, c.hits),
        utterances=len(refs),
    )
