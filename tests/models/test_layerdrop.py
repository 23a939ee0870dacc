"""Layerdrop under :func:`shared_layerdrop`: the skipped layers depend on the shared seed only, not on the
forward's own generator (which differs per rank), and successive networks inside draw fresh decisions."""

from __future__ import annotations

import torch

from speechcl.models.context import ContextNetwork, shared_layerdrop


def _skipped(net: ContextNetwork, generator: torch.Generator) -> list[int]:
    """Indices of the layers a training forward skipped (a hook on each layer records the ones that ran)."""
    ran: list[int] = []
    handles = [layer.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, layer in enumerate(net.layers)]
    net(torch.randn(2, 7, 16), generator=generator)
    for handle in handles:
        handle.remove()
    return [k for k in range(len(net.layers)) if k not in ran]


def test_shared_seed_decides_and_rank_generators_do_not() -> None:
    torch.manual_seed(0)
    net = ContextNetwork(16, 32, 2, 12, conv_pos=4, conv_pos_groups=2, dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, layerdrop=0.5, layer_norm_first=True).train()
    rank0, rank1 = (torch.Generator().manual_seed(s) for s in (11, 12))
    assert _skipped(net, rank0) != _skipped(net, rank1)  # without the context: each rank its own (12 layers)

    decisions = []
    for generator in (torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)):
        with shared_layerdrop(1234):
            decisions.append((_skipped(net, generator), _skipped(net, generator)))
    assert decisions[0] == decisions[1]  # every "rank" skips the same layers, call by call
    first, second = decisions[0]
    assert first != second  # a second network inside the same update draws its own decision
    with shared_layerdrop(99):
        other = _skipped(net, torch.Generator().manual_seed(11))
    assert other != first  # the seed (the update) decides
    net.eval()
    with shared_layerdrop(1234):
        assert _skipped(net, rank0) == []  # no layerdrop in eval mode
