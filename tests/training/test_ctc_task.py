"""Fine-tuning validation counts word and character errors of the word strings, spaces included."""

from __future__ import annotations

import pytest
import torch

from speechcl.data.labels import Dictionary, words_to_letters
from speechcl.training.finetune import CTCTask

REFS = ["HELLO THERE", "A CAT SAT", "NO"]
HYPS = ["HALO THERE", "ACAT SAT ON", ""]


def _one_hot_logits(dictionary: Dictionary, hyps: list[str], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, frames, V]`` logits whose best path decodes to each hypothesis (a blank between units)."""
    logits = torch.full((len(hyps), frames, len(dictionary)), -10.0)
    logits[:, :, Dictionary.blank_index] = 10.0
    for b, hyp in enumerate(hyps):
        units = dictionary.encode(words_to_letters(hyp)) if hyp else []
        assert 2 * len(units) <= frames
        for k, unit in enumerate(units):
            logits[b, 2 * k, unit] = 20.0
    return logits, torch.full((len(hyps),), frames)


def test_validation_error_counts_by_hand():
    dictionary = Dictionary(list("|ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
    task = CTCTask(dictionary, freeze_finetune_updates=0, best_metric="cer")
    encoded = [dictionary.encode(words_to_letters(r)) for r in REFS]
    lengths = torch.tensor([len(e) for e in encoded])
    targets = torch.full((len(REFS), int(lengths.max())), -1)
    for b, e in enumerate(encoded):
        targets[b, : len(e)] = torch.tensor(e)
    logits, frame_lengths = _one_hot_logits(dictionary, HYPS, frames=40)

    counts = task._errors(logits, frame_lengths, targets, lengths)
    # characters: HELLO THERE -> HALO THERE: E->A, drop an L (2 of 11); A CAT SAT -> ACAT SAT ON: drop a
    # space, add " ON" (4 of 9); NO -> "": 2 deletions (2 of 2). Words: 1 of 2, 3 of 3, 1 of 1.
    assert counts == {"c_errors": 8.0, "c_total": 22.0, "w_errors": 5.0, "w_total": 6.0, "empty_hyps": 1.0}
    summary = task.summarize(counts)
    assert summary["cer"] == pytest.approx(8 / 22) and summary["wer"] == pytest.approx(5 / 6)
