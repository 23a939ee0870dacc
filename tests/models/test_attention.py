"""The CPU training attention (dropout on) is scaled_dot_product_attention's own fallback, draw for draw."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from speechcl.models.context import SelfAttention, attention_with_dropout


@pytest.mark.parametrize("masked", [False, True])
def test_attention_with_dropout_equals_sdpa(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 37, 16, generator=g) for _ in range(3))
    mask = None
    if masked:
        mask = torch.ones(3, 1, 1, 37, dtype=torch.bool)
        mask[1, ..., 20:] = False
        mask[2, ..., 5:] = False
    results = []
    for fn in (lambda *a: F.scaled_dot_product_attention(*a, attn_mask=mask, dropout_p=0.3),
               lambda *a: attention_with_dropout(*a, mask, 0.3)):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(7)  # dropout draws from the global generator
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        results.append([out.detach(), *(t.grad for t in inputs)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_self_attention_paths():
    """Training on CPU takes the explicit path, eval the fused kernel; a fully masked row falls back to SDPA."""
    torch.manual_seed(0)
    attn = SelfAttention(32, 4, dropout=0.2)
    x = torch.randn(2, 11, 32)
    attn.eval()
    torch.manual_seed(1)
    ref = attn(x, None)
    attn.train()
    attn.dropout = 0.0
    torch.testing.assert_close(attn(x, None), ref)
    attn.dropout = 0.2
    mask = torch.ones(2, 1, 1, 11, dtype=torch.bool)
    mask[1] = False  # no key at all: SDPA's fallback gives zeros for such rows, not NaN
    out = attn(x, mask)
    assert torch.isfinite(out).all()
