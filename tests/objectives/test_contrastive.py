from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from speechcl.models.config import preset
from speechcl.models.masking import compute_span_mask
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechcl.objectives import contrastive_logits, sample_negatives, wav2vec2_loss
from speechcl.objectives.contrastive import identical_targets


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


def direct_logits(preds, targets, neg, temp):
    """The definition: cosine similarity against the gathered [N, 1 + K, F] candidates."""
    negs = targets[neg]
    cands = torch.cat([targets[:, None, :], negs], dim=1)
    logits = torch.cosine_similarity(preds[:, None, :], cands, dim=-1) / temp
    same = (negs == targets[:, None, :]).all(-1)
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)


@pytest.mark.parametrize("dense_max_rows", [8192, 10], ids=["dense", "gathered"])
def test_contrastive_logits_equal_definition(monkeypatch, dense_max_rows):
    import speechcl.objectives.contrastive as contrastive

    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[:, 5:30] = True
    neg = sample_negatives(mask, 10, 2, generator=g)
    preds, targets = torch.randn(75, 16, generator=g), torch.randn(75, 16, generator=g)
    targets[3] = targets[neg[3, 0]]  # identical distractors (same code) ...
    targets[neg[9, 4]] = targets[9]
    targets[20, 0], targets[neg[20, 1]] = -0.0, targets[20]  # ... also when one holds -0.0 and the other +0.0
    targets[neg[20, 1], 0] = 0.0
    monkeypatch.setattr(contrastive, "_SIMILARITY_BLOCK", 75 * 7)  # several row blocks
    monkeypatch.setattr(contrastive, "_DENSE_MAX_ROWS", dense_max_rows)  # 10: the large-batch path
    results = []
    for fn in (direct_logits, contrastive_logits):
        p, t = preds.clone().requires_grad_(), targets.clone().requires_grad_()
        logits = fn(p, t, neg, 0.1)
        identical = torch.isinf(logits)
        logits.masked_fill(identical, 0).sum().backward()
        results.append((logits.detach(), identical, p.grad, t.grad))
    (ref, ref_identical, ref_gp, ref_gt), (got, identical, gp, gt) = results
    assert torch.equal(identical, ref_identical)
    assert bool(identical[3, 1] and identical[9, 5] and identical[20, 2])
    torch.testing.assert_close(got.masked_fill(identical, 0), ref.masked_fill(identical, 0))
    torch.testing.assert_close(gp, ref_gp)
    torch.testing.assert_close(gt, ref_gt)


def test_identical_targets_compares_values_like_eq():
    targets = torch.tensor([[1.0, -0.0], [1.0, 0.0], [float("nan"), 1.0], [float("nan"), 1.0], [2.0, 0.0]])
    neg = torch.tensor([[1, 4], [0, 4], [3, 0], [2, 1], [0, 1]])
    expected = (targets[neg] == targets[:, None, :]).all(-1)
    assert torch.equal(identical_targets(targets, neg), expected)
    assert expected[0, 0] and not expected[2, 0]


def tiny_pretraining_output(seed: int = 0):
    """A tiny model, a 1 s batch of two noise clips and the model's output on it (training mode)."""
    torch.manual_seed(seed)
    model = Wav2Vec2ForPretraining(preset("tiny"))
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(seed))
    return model, wav, model(wav, generator=torch.Generator().manual_seed(seed))


def test_feature_penalty_is_mean_squared_conv_features():
    model, wav, out = tiny_pretraining_output()
    with torch.no_grad():
        conv = model.encoder.feature_extractor(wav)  # [B, T, C], before the LayerNorm
    assert conv.shape[:2] == out.mask_indices.shape
    expected = (conv.double() ** 2).sum() / conv.numel()
    torch.testing.assert_close(out.features_pen.double(), expected, rtol=1e-5, atol=0)
    assert torch.equal(wav2vec2_loss(out).features_pen, out.features_pen)
    # it reaches the feature encoder's weights (the penalty's purpose), and only through the conv features
    out.features_pen.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and bool(p.grad.any())}
    conv_params = {f"encoder.feature_extractor.{name}" for name, _ in model.encoder.feature_extractor.named_parameters()}
    assert with_grad and with_grad <= conv_params


@pytest.mark.parametrize("weights", [None, (0.3, 2.0)], ids=["fairseq_defaults", "explicit"])
def test_total_loss_scales_penalties_by_masked_steps(weights):
    """fairseq's wav2vec criterion: ``CE_sum + sum_i coef_i * extra_i * sample_size`` with the extra
    losses (G·V − prob_perplexity) / (G·V) and the feature penalty; BASE coefficients 0.1 and 10."""
    _, _, out = tiny_pretraining_output(seed=1)
    loss = wav2vec2_loss(out) if weights is None else wav2vec2_loss(out, *weights)
    w_div, w_feat = weights or (0.1, 10.0)
    n = int(out.mask_indices.sum())
    ce = F.cross_entropy(out.logits.double(), torch.zeros(n, dtype=torch.long), reduction="sum")
    gv = out.num_codevectors
    diversity = (gv - out.quantized.prob_perplexity.double()) / gv
    expected = ce + w_div * diversity * n + w_feat * out.features_pen.double() * n
    assert loss.sample_size == n
    torch.testing.assert_close(loss.contrastive.double(), ce)
    torch.testing.assert_close(loss.diversity.double(), diversity)
    torch.testing.assert_close(loss.loss.double(), expected)
    assert w_feat * float(out.features_pen.detach()) * n > 0.01 * float(expected.detach())  # a visible share
