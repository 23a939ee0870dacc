"""Training learns: tiny models overfit a few utterances, and the CTC task scores the right targets.

- wav2vec 2.0 pretraining (model + ``wav2vec2_loss`` in a plain Adam loop) on two clips of harmonic
  tones that change pitch every 0.3-0.6 s: a masked span can be predicted from the unmasked frames
  around it, so the contrastive loss must fall far below chance, log2(K + 1) bits. The loss is measured
  after training by the test itself, from the model's logits (positive at index 0), not by the loss
  function that trained it.
- CTC fine-tuning (model + ``CTCTask.forward``) on the two shortest utterances of the session corpus:
  greedy decoding must give back their transcripts (as written in the ``.wrd`` file) nearly exactly.
- ``CTCTask.forward`` on a fixed-logits model: its loss equals CTC computed here, utterance by utterance,
  over the valid frames against the transcripts encoded by hand from ``dict.ltr.txt``; its validation
  error counts are those of the transcripts.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchaudio.functional import edit_distance

from speechcl import Wav2Vec2ForCTC, Wav2Vec2ForPretraining, preset
from speechcl.asr.decode import greedy_decode
from speechcl.data.dataset import AudioDataset
from speechcl.data.labels import Dictionary
from speechcl.objectives import wav2vec2_loss
from speechcl.training.finetune import CTCTask
from tests.training.helpers import TRAIN

SAMPLE_RATE = 16_000
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0,
              "dropout_features": 0.0, "layerdrop": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


def harmonic_tones(batch: int, seconds: float, seed: int) -> Tensor:
    """``[batch, seconds · 16000]``: runs of steady tones (f0 uniform in 100-300 Hz, harmonics 1-3 at
    1/k amplitude, random phases), each run 0.3-0.6 s long."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wav = torch.zeros(batch, t.numel())
    for row in range(batch):
        start = 0
        while start < t.numel():
            length = int(torch.randint(int(0.3 * SAMPLE_RATE), int(0.6 * SAMPLE_RATE), (1,), generator=g))
            f0 = 100.0 + 200.0 * float(torch.rand(1, generator=g))
            phases = 2 * math.pi * torch.rand(3, generator=g)
            span = t[start: start + length]
            wav[row, start: start + length] = 0.3 * sum(
                torch.sin(2 * math.pi * f0 * k * span + phases[k - 1]) / k for k in (1, 2, 3))
            start += length
    return wav


def heldout_contrastive(model: Wav2Vec2ForPretraining, wav: Tensor, seeds: range) -> tuple[float, float]:
    """Cross-entropy of the positive (logit column 0), in bits per masked step, and the fraction of
    distractors identical to their positive (``-inf`` logits), averaged over masks and distractors drawn
    from ``seeds``; eval mode (no dropout, no Gumbel noise)."""
    model.eval()
    bits, identical = [], []
    with torch.no_grad():
        for seed in seeds:
            logits = model(wav, generator=torch.Generator().manual_seed(seed)).logits.float()
            bits.append(float(-F.log_softmax(logits, dim=-1)[:, 0].mean()) / math.log(2))
            identical.append(float(torch.isinf(logits[:, 1:]).float().mean()))
    model.train()
    return sum(bits) / len(bits), sum(identical) / len(identical)


def test_contrastive_loss_falls_far_below_chance():
    wav = harmonic_tones(2, 1.5, seed=0)
    # group norm: the tiny preset's layer-norm extractor collapses onto a few codes on so little data
    cfg = preset("tiny", extractor_mode="group_norm", **NO_DROPOUT)
    chance = math.log2(cfg.num_negatives + 1)
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(cfg)
    before, _ = heldout_contrastive(model, wav, range(1000, 1004))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(150):
        model.set_num_updates(step)
        loss = wav2vec2_loss(model(wav, generator=torch.Generator().manual_seed(step)))
        optimizer.zero_grad()
        (loss.loss / loss.sample_size).backward()
        optimizer.step()
    after, identical = heldout_contrastive(model, wav, range(1000, 1004))
    assert abs(before - chance) < 0.25 * chance, (before, chance)
    assert after < 0.5 * chance, f"contrastive loss {after:.2f} bits after 150 updates (chance {chance:.2f})"
    # not by collapse: a distractor equal to its positive scores -inf and would lower the loss for free
    assert identical < 0.1, f"{identical:.0%} of the distractors share their positive's code"


def shortest_utterances(manifest_dir: Path, dictionary: Dictionary, count: int) -> tuple[AudioDataset, list[int]]:
    dataset = AudioDataset.from_files(manifest_dir / f"{TRAIN}.tsv", manifest_dir / f"{TRAIN}.ltr", dictionary)
    return dataset, sorted(range(len(dataset)), key=lambda i: int(dataset.sizes[i]))[:count]


def transcripts(manifest_dir: Path, dataset: AudioDataset, rows: list[int]) -> list[str]:
    """The ``.wrd`` lines of dataset items ``rows``: the text the labels were made from."""
    lines = (manifest_dir / f"{TRAIN}.wrd").read_text(encoding="utf-8").splitlines()
    return [lines[int(dataset.indices[row])] for row in rows]


def character_error_rate(refs: list[str], hyps: list[str]) -> float:
    return sum(edit_distance(list(r), list(h)) for r, h in zip(refs, hyps)) / sum(len(r) for r in refs)


def test_ctc_overfits_two_utterances(manifest_dir):
    dictionary = Dictionary.load(manifest_dir / "dict.ltr.txt")
    dataset, rows = shortest_utterances(manifest_dir, dictionary, 2)
    batch = dataset.collater([dataset[row] for row in rows])
    refs = transcripts(manifest_dir, dataset, rows)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny", mask_prob=0.0, **NO_DROPOUT), len(dictionary))
    task = CTCTask(dictionary, freeze_finetune_updates=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        out = task.forward(model, batch, generator)
        optimizer.zero_grad()
        (out.loss / out.sample_size).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits, lengths = model(batch["source"], batch["padding_mask"])
    hyps = [dictionary.decode_words(ids) for ids in greedy_decode(logits, lengths)]
    cer = character_error_rate(refs, hyps)
    assert cer < 0.15, f"CER {cer:.0%} on its own training utterances: {list(zip(refs, hyps))}"


class FixedLogits(nn.Module):
    """Stands in for :class:`Wav2Vec2ForCTC`: returns the logits and valid frame counts it was given."""

    def __init__(self, logits: Tensor, lengths: Tensor) -> None:
        super().__init__()
        self.logits, self.lengths = logits, lengths

    def forward(self, source: Tensor, padding_mask: Tensor | None = None, *, generator: torch.Generator | None = None,
                freeze_encoder: bool = False) -> tuple[Tensor, Tensor]:
        return self.logits, self.lengths


def encode_by_hand(manifest_dir: Path, text: str) -> list[int]:
    """Dictionary indices of a transcript: the four specials first, then ``dict.ltr.txt`` in file order;
    one unit per letter, ``|`` after every word."""
    symbols = ["<blank>", "<pad>", "</s>", "<unk>"]
    symbols += [line.split()[0] for line in (manifest_dir / "dict.ltr.txt").read_text().splitlines() if line.strip()]
    return [symbols.index(c) for c in text.replace(" ", "|") + "|"]


def labeled_batch(manifest_dir: Path) -> tuple[Dictionary, dict[str, Tensor], list[str], list[list[int]]]:
    """A collated batch of three utterances of different lengths, their transcripts and hand encodings."""
    dictionary = Dictionary.load(manifest_dir / "dict.ltr.txt")
    dataset, rows = shortest_utterances(manifest_dir, dictionary, 3)
    batch = dataset.collater([dataset[row] for row in rows])
    refs = transcripts(manifest_dir, dataset, rows)
    expected = [encode_by_hand(manifest_dir, ref) for ref in refs]
    assert len({len(e) for e in expected}) == 3  # padded targets in the batch
    return dictionary, batch, refs, expected


def test_ctc_task_loss_uses_the_transcripts_and_valid_frames(manifest_dir):
    dictionary, batch, _, expected = labeled_batch(manifest_dir)
    frames = 2 * max(len(e) for e in expected) + 10
    lengths = torch.tensor([frames - 7, frames, frames - 3])  # padded frames carry scores that must not count
    logits = torch.randn(3, frames, len(dictionary), generator=torch.Generator().manual_seed(0))
    out = CTCTask(dictionary, freeze_finetune_updates=0).forward(
        FixedLogits(logits, lengths).train(), batch, torch.Generator())
    reference = sum(
        F.ctc_loss(F.log_softmax(logits[b, : lengths[b]], dim=-1)[:, None], torch.tensor([target]),
                   lengths[b: b + 1], torch.tensor([len(target)]), blank=0, reduction="sum")
        for b, target in enumerate(expected))
    torch.testing.assert_close(out.loss, reference)
    assert out.sample_size == sum(len(e) for e in expected)


def best_path_logits(units: list[list[int]], lengths: list[int], frames: int, vocab: int, garbage: int) -> Tensor:
    """``[B, frames, vocab]`` whose greedy decoding over the first ``lengths[b]`` frames is ``units[b]``
    (a blank between units); the frames beyond emit ``garbage`` on every other frame."""
    logits = torch.zeros(len(units), frames, vocab)
    logits[:, :, 0] = 1.0
    for b, (row, n) in enumerate(zip(units, lengths)):
        assert 2 * len(row) <= n
        for k, unit in enumerate(row):
            logits[b, 2 * k, unit] = 2.0
        logits[b, n::2, garbage] = 2.0
    return logits


def test_ctc_task_validation_scores_the_transcripts(manifest_dir):
    dictionary, batch, refs, expected = labeled_batch(manifest_dir)
    lengths = [2 * len(e) + 3 for e in expected]
    frames = max(lengths) + 8
    garbage = dictionary.index("E")  # a letter: past the valid frames it would add errors
    logits = best_path_logits(expected, lengths, frames, len(dictionary), garbage)
    task = CTCTask(dictionary, freeze_finetune_updates=0)
    out = task.forward(FixedLogits(logits, torch.tensor(lengths)).eval(), batch, torch.Generator())
    assert out.stats["c_errors"] == 0 and out.stats["w_errors"] == 0
    assert out.stats["c_total"] == sum(len(r) for r in refs)
    assert out.stats["w_total"] == sum(len(r.split()) for r in refs)
    # one letter dropped from each hypothesis: one character error per utterance
    shorter = best_path_logits([e[1:] for e in expected], lengths, frames, len(dictionary), garbage)
    out = task.forward(FixedLogits(shorter, torch.tensor(lengths)).eval(), batch, torch.Generator())
    assert out.stats["c_errors"] == len(refs)
