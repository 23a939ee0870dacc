"""Padding masks in every attention mode, and masks shaped for the fused kernels: a boolean mask where
something is padded, none at all where nothing is (what lets CUDA pick flash)."""

from __future__ import annotations

import pytest
import torch

from speechcl.bench.attention import attention_ok, check_attention, perturb_padding
from speechcl.models import context
from speechcl.models.context import ContextNetwork

pytestmark = pytest.mark.usefixtures("one_thread")


def _network(layers: int = 3) -> ContextNetwork:
    torch.manual_seed(0)
    return ContextNetwork(32, 64, 4, layers, conv_pos=8, conv_pos_groups=4, dropout=0.1, attention_dropout=0.1,
                          activation_dropout=0.0, layerdrop=0.0, layer_norm_first=False)


def test_padding_never_reaches_valid_frames_in_any_mode():
    """Training with dropout (the explicit CPU path), eval (the fused CPU kernel), fp32 and bf16: padded
    frames changed, valid outputs bit-identical, and every call ran with fused kernels only."""
    rows = check_attention(torch.device("cpu"), dim=32, heads=4, layers=2, batch=3, frames=29)
    assert len(rows) == 8 and attention_ok(rows)
    assert [r["padding_invariant"] for r in rows if r["padded"]] == [True] * 4


def test_training_without_attention_dropout_keeps_padding_out_too():
    """Dropout 0 in training goes through SDPA with the mask (not the explicit path)."""
    net = _network().train()
    for layer in net.layers:
        layer.self_attn.dropout = 0.0
    x = torch.randn(2, 13, 32)
    padding = torch.zeros(2, 13, dtype=torch.bool)
    padding[1, 7:] = True
    torch.manual_seed(5)
    a, _ = net(x, padding)
    handle = perturb_padding(net, padding, -4.0)  # where only the attention mask keeps them out
    torch.manual_seed(5)
    b, _ = net(x, padding)
    handle.remove()
    assert torch.equal(a[~padding], b[~padding]) and not torch.equal(a[padding], b[padding])


@pytest.mark.parametrize("training", [False, True])
def test_sdpa_gets_no_mask_without_padding_and_a_boolean_one_with_it(monkeypatch, training):
    seen: list[torch.Tensor | None] = []
    real = context.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, **kwargs):
        seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(context.F, "scaled_dot_product_attention", spy)
    net = _network().train(training)
    for layer in net.layers:  # the SDPA path in training too (on CPU dropout takes the explicit path)
        layer.self_attn.dropout = 0.0
    x = torch.randn(2, 11, 32)
    net(x, torch.zeros(2, 11, dtype=torch.bool))  # a mask that masks nothing counts as none
    net(x, None)
    assert seen and all(m is None for m in seen)
    seen.clear()
    padding = torch.zeros(2, 11, dtype=torch.bool)
    padding[0, 6:] = True
    net(x, padding)
    assert len(seen) == 3 and all(m is not None and m.dtype == torch.bool and m.shape == (2, 1, 1, 11) for m in seen)
    assert torch.equal(seen[0][:, 0, 0], ~padding)


def test_the_every_row_check_runs_once_per_forward_not_per_layer(monkeypatch):
    """A host check per layer would be a graph break in every compiled layer (and a sync per layer)."""
    calls = []
    real = context.every_row_attends
    monkeypatch.setattr(context, "every_row_attends", lambda mask: calls.append(1) or real(mask))
    net = _network(layers=3).train()
    padding = torch.zeros(2, 11, dtype=torch.bool)
    padding[0, 6:] = True
    net(torch.randn(2, 11, 32), padding)
    assert len(calls) == 1
