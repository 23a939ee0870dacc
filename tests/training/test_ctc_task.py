"""Fine-tuning validation scores what `speechcl evaluate` scores: same WER and CER for the same hypotheses."""

from __future__ import annotations

import pytest
import torch

from speechcl.asr.score import score
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


def test_validation_error_rates_equal_evaluate_scores():
    dictionary = Dictionary(list("|ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
    task = CTCTask(dictionary, freeze_finetune_updates=0, best_metric="cer")
    encoded = [dictionary.encode(words_to_letters(r)) for r in REFS]
    lengths = torch.tensor([len(e) for e in encoded])
    targets = torch.full((len(REFS), int(lengths.max())), -1)
    for b, e in enumerate(encoded):
        targets[b, : len(e)] = torch.tensor(e)
    logits, frame_lengths = _one_hot_logits(dictionary, HYPS, frames=40)

    summary = task.summarize(task._errors(logits, frame_lengths, targets, lengths))
    expected = score(REFS, HYPS)
    assert summary["wer"] == pytest.approx(expected.wer)
    assert summary["cer"] == pytest.approx(expected.cer)
    assert summary["empty_hyps"] == 1.0
    assert 0 < expected.cer < 1 and 0 < expected.wer < 2
