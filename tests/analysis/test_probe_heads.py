"""The SUPERB weighted sum: one-hot weights reduce it to a single-layer head; weights are a softmax."""

from __future__ import annotations

import pytest
import torch

from speechcl.analysis.heads import LayerMix, ProbeHead

LAYERS, DIM, CLASSES = 4, 6, 5


def _stats(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.randn(LAYERS, DIM, generator=generator)
    std = torch.rand(LAYERS, DIM, generator=generator) + 0.5
    return mean, std


@pytest.mark.parametrize("hidden", [None, 7])
@pytest.mark.parametrize("chosen", [0, 2, 3])
def test_one_hot_weighted_sum_equals_single_layer_head(chosen, hidden):
    g = torch.Generator().manual_seed(chosen)
    mean, std = _stats(g)
    mixed = ProbeHead(mean, std, CLASSES, hidden)
    single = ProbeHead(mean[[chosen]], std[[chosen]], CLASSES, hidden)
    single.classifier.load_state_dict(mixed.classifier.state_dict())
    with torch.no_grad():
        mixed.mix.logits.fill_(-1e4)
        mixed.mix.logits[chosen] = 0.0  # softmax: exactly one-hot in float32
    x = 3.0 * torch.randn(2, 9, LAYERS, DIM, generator=g) + 1.0  # [B, T, L, D]
    assert torch.equal(mixed.mix.weights(), torch.eye(LAYERS)[chosen])
    expected = single(x[..., [chosen], :])
    torch.testing.assert_close(mixed(x), expected, rtol=0, atol=1e-6)
    # and by hand: standardise the chosen layer, then the classifier
    by_hand = mixed.classifier((x[..., chosen, :] - mean[chosen]) / std[chosen])
    torch.testing.assert_close(expected, by_hand, rtol=0, atol=1e-6)


def test_weights_are_a_softmax_and_learnable():
    mix = LayerMix(LAYERS)
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 1.0, 2.0, -1.0]))
    w = mix.weights()
    torch.testing.assert_close(w, torch.softmax(torch.tensor([0.0, 1.0, 2.0, -1.0]), 0))
    x = torch.randn(3, LAYERS, DIM)
    torch.testing.assert_close(mix(x), (w[None, :, None] * x).sum(1))
    mix(x).sum().backward()
    assert mix.logits.grad is not None and bool(mix.logits.grad.abs().sum() > 0)
    assert not LayerMix(1).logits.requires_grad  # one layer: nothing to weigh


def test_head_rejects_wrong_layer_count():
    head = ProbeHead(torch.zeros(LAYERS, DIM), torch.ones(LAYERS, DIM), CLASSES)
    with pytest.raises(ValueError, match="4 layers"):
        head(torch.randn(2, LAYERS - 1, DIM))
