from __future__ import annotations

import math

import torch

from speechcl.models.config import preset
from speechcl.models.masking import compute_span_mask
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechcl.objectives import contrastive_logits, sample_negatives, wav2vec2_loss


def test_negatives_never_self_and_same_utterance_masked_only():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([200, 150, 90])
    mask = compute_span_mask((3, 200), 0.65, 10, lengths=lengths, min_masks=2, generator=g,
                             require_same_masks=False)
    neg = sample_negatives(mask, 100, generator=g)
    n = int(mask.sum())
    assert neg.shape == (n, 100)
    row = torch.arange(3).repeat_interleave(mask.sum(1))
    assert not bool((neg == torch.arange(n)[:, None]).any())
    assert bool((row[neg] == row[:, None]).all())
    # each masked list index corresponds to a masked, unpadded frame (by construction of the numbering)
    frames = mask.nonzero()[:, 1]
    assert bool((frames[neg] < lengths[row][:, None]).all())
    # roughly uniform over the other steps of the utterance
    counts = torch.bincount(neg[row == 0].flatten(), minlength=n)[: int(mask[0].sum())].float()
    assert counts.std() / counts.mean() < 0.2


def test_cross_sample_negatives():
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, 10:15] = True
    neg = sample_negatives(mask, 3, 4, generator=torch.Generator().manual_seed(1))
    assert neg.shape == (10, 7)
    assert not bool((neg == torch.arange(10)[:, None]).any())
    assert bool((neg >= 0).all() and (neg < 10).all())


def test_identical_distractor_gets_minus_inf():
    targets = torch.randn(4, 8)
    targets[2] = targets[0]
    preds = torch.randn(4, 8)
    neg = torch.tensor([[1, 2], [0, 2], [0, 1], [0, 1]])
    logits = contrastive_logits(preds, targets, neg, 0.1)
    assert torch.isinf(logits[0, 2]) and torch.isinf(logits[2, 1])
    assert torch.isfinite(logits[1]).all()
    expected = torch.cosine_similarity(preds[1], targets[1], dim=0) / 0.1
    assert torch.allclose(logits[1, 0], expected)


def test_loss_at_random_init_is_about_chance():
    torch.manual_seed(0)
    cfg = preset("tiny", num_negatives=20)
    model = Wav2Vec2ForPretraining(cfg)
    out = model(torch.randn(4, 32000), generator=torch.Generator().manual_seed(0))
    loss = wav2vec2_loss(out)
    chance_bits = math.log2(cfg.num_negatives + 1)
    assert abs(loss.loss_bits - chance_bits) < 0.35 * chance_bits
    assert loss.sample_size == int(out.mask_indices.sum())
    assert 0.0 <= loss.accuracy <= 1.0
    assert 1.0 <= loss.code_perplexity <= cfg.latent_groups * cfg.latent_vars
