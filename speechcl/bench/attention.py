"""Does our attention get the fused kernels, and do padding masks hold, in every mode?

:func:`check_attention` runs the context network (positional conv + transformer layers) on a padded and
an unpadded batch, in training (dropout on, forward and backward) and in eval, in float32 and under bf16
autocast, with ``scaled_dot_product_attention`` restricted to its fused kernels (flash, memory-efficient,
cuDNN; the unfused ``math`` fallback excluded): a call that qualifies for none of them raises, so a pass
means every attention call of the mode ran fused. Per case it also reports which single kernels accept
our call (flash wants an unmasked half-precision batch; the memory-efficient kernel takes the boolean
padding mask) and checks the padding invariant: perturbing the padded frames of the hidden states that
enter the first layer (where only the attention mask keeps them from the valid frames) changes no valid
output.

On CPU the fused kernel is the CPU flash kernel; training with attention dropout takes the explicit
path (:func:`speechcl.models.context.attention_with_dropout`), which calls no SDPA kernel at all.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from speechcl.models.context import ContextNetwork

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def _single_kernels(q: torch.Tensor, mask: torch.Tensor | None, dropout: float) -> dict[str, bool]:
    """Which fused kernels alone accept ``q`` (as q, k and v) with ``mask`` and ``dropout``."""
    out = {}
    for backend in FUSED:
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, q, q, attn_mask=mask, dropout_p=dropout)
            out[backend.name.lower()] = True
        except RuntimeError:
            out[backend.name.lower()] = False
    return out


def perturb_padding(net: ContextNetwork, padding: torch.Tensor, value: float = 3.0) -> Any:
    """Add ``value`` at the padded frames (``padding [B, T]``, True = padded) of the hidden states entering
    the first transformer layer; returns the hook handle (``.remove()`` it)."""

    def hook(module: Any, args: tuple) -> tuple:
        x = args[0]
        return (x + value * padding[..., None].to(x.dtype), *args[1:])

    return net.layers[0].register_forward_pre_hook(hook)


def _run(net: ContextNetwork, x: torch.Tensor, mask: torch.Tensor | None, training: bool, precision: str,
         seed: int, perturb: bool = False) -> torch.Tensor:
    """``net(x, mask)`` with only the fused SDPA kernels allowed (and backward in training), the global RNG
    seeded first so that two calls draw the same dropout; the output as float32. ``perturb``: with
    :func:`perturb_padding` on ``mask``."""
    torch.manual_seed(seed)
    autocast = (torch.autocast(x.device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    handle = perturb_padding(net, mask) if perturb and mask is not None else None
    try:
        with autocast, torch.set_grad_enabled(training), sdpa_kernel(FUSED):
            out, _ = net(x, mask)
            if training:
                out.float().square().mean().backward()
    finally:
        if handle is not None:
            handle.remove()
    return out.detach().float()


def check_attention(device: torch.device, dim: int = 768, heads: int = 12, layers: int = 2, batch: int = 4,
                    frames: int = 499, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (mode, precision, padding) case: ``fused`` (the network ran with the fused kernels
    only; an error message otherwise), ``kernels`` (single fused kernels accepting one of its attention
    calls), ``padding_invariant`` (valid outputs unchanged when padded frames change; None unpadded).

    The network has BASE's width, heads and dropouts (0.1) and ``layers`` layers; ``frames`` is 10 s of
    audio at BASE's 20 ms frames; the padded batch's rows keep ``frames, 3/4, 1/2, ...`` of them.
    """
    torch.manual_seed(seed)
    net = ContextNetwork(dim, 4 * dim, heads, layers, conv_pos=128, conv_pos_groups=16, dropout=0.1,
                         attention_dropout=0.1, activation_dropout=0.0, layerdrop=0.0,
                         layer_norm_first=False).to(device)
    x = torch.randn(batch, frames, dim, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    valid = [max(1, frames - i * frames // (2 * batch) * 2) for i in range(batch)]
    padding = torch.arange(frames)[None, :] >= torch.tensor(valid)[:, None]
    padding = padding.to(device)
    rows = []
    for training in (True, False):
        for precision in ("fp32", "bf16"):
            for padded in (False, True):
                net.train(training)
                mask = padding if padded else None
                row: dict[str, Any] = {"mode": "train" if training else "eval", "precision": precision,
                                       "padded": padded}
                try:
                    out = _run(net, x, mask, training, precision, seed + 2)
                    row["fused"] = True
                    row["padding_invariant"] = None
                    if padded:
                        other = _run(net, x, mask, training, precision, seed + 2, perturb=True)
                        keep = ~padding
                        row["padding_invariant"] = bool(torch.equal(out[keep], other[keep]))
                except RuntimeError as err:
                    row["fused"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    row["padding_invariant"] = None
                attn_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                q = torch.randn(batch, heads, frames, dim // heads, device=device, dtype=attn_dtype)
                attn_mask = None if mask is None else (~mask)[:, None, None, :]
                explicit = training and device.type == "cpu"
                row["kernels"] = ("explicit CPU dropout path" if explicit
                                  else _single_kernels(q, attn_mask, 0.1 if training else 0.0))
                rows.append(row)
    net.zero_grad(set_to_none=True)
    return rows


def attention_ok(rows: list[dict[str, Any]]) -> bool:
    """Every case ran fused and kept the padding invariant."""
    return all(r["fused"] is True and r["padding_invariant"] is not False for r in rows)
