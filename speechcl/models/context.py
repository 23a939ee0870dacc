"""Transformer context network with convolutional positional embedding (wav2vec 2.0's ``g: Z -> C``)."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm


class PositionalConv(nn.Module):
    """Grouped conv over time, weight-normalised over the kernel dimension (dim=2), "same" padding
    (the extra frame of an even kernel is dropped), then GELU.

    Args:
        dim: model width D. kernel: fairseq ``conv_pos`` (128). groups: ``conv_pos_groups`` (16).
    """

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        """``[B, T, D] -> [B, T, D]``; ``causal``: output ``t`` sees inputs ``<= t`` only (the same kernel,
        all its padding on the left)."""
        if causal:
            conv = self.conv
            kernel = conv.kernel_size[0]
            y = F.conv1d(F.pad(x.transpose(1, 2), (kernel - 1, 0)), conv.weight, conv.bias, groups=conv.groups)
            return F.gelu(y).transpose(1, 2)
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, : -self.remove]
        return F.gelu(y).transpose(1, 2)


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout: float) -> Tensor:
    """``softmax(q kᵀ / √d)`` with dropout on the weights, then ``· v``: what
    ``F.scaled_dot_product_attention`` computes on CPU when dropout is on (it has no fused CPU kernel for
    that and falls back to this composite), with the same operations and dropout draws — identical results
    in float32 — but without that fallback's float32 copies of bfloat16 inputs and its check for fully
    masked rows (callers guarantee every row has a key).

    ``q, k, v [B, H, T, d]``; ``attn_mask [B, 1, 1, T]`` or ``[B, 1, T, T]`` bool, True where a key may be
    attended.
    """
    scale = math.sqrt(1.0 / math.sqrt(q.shape[-1]))  # both q and k by √scale, as the fallback does
    weights = (q * scale) @ (k.transpose(-2, -1) * scale)
    if attn_mask is not None:
        weights = weights.masked_fill(~attn_mask, float("-inf"))
    return F.dropout(weights.softmax(-1), dropout, training=True) @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (fused kernel via SDPA).

    Masks are boolean (True where a key may be attended) and ``None`` when nothing is masked, in every
    mode: on CUDA, SDPA then runs the flash kernel on unmasked bf16/fp16 batches and the memory-efficient
    kernel (which takes a mask, and dropout) on padded ones or in float32 — an additive float mask would
    also work there but costs a ``[B, 1, 1, T]`` float tensor per call for nothing.
    In training with attention dropout on CPU the weights go through :func:`attention_with_dropout`.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None, rows_attend: bool | None = None) -> Tensor:
        """``x [B, T, D]``; ``attn_mask [B, 1, 1, T]`` or ``[B, 1, T, T]`` bool, True where a key may be
        attended. ``rows_attend``: whether every query row of the mask has a key (:func:`every_row_attends`);
        ``None`` computes it when needed — callers that run many layers pass it, so a compiled layer has
        no data-dependent branch."""
        b, t, d = x.shape
        h = self.heads

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        dropout = self.dropout if self.training else 0.0
        if dropout > 0 and x.device.type == "cpu":
            if rows_attend is None:
                rows_attend = every_row_attends(attn_mask)
            if rows_attend:
                y = attention_with_dropout(q, k, v, attn_mask, dropout)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


def every_row_attends(attn_mask: Tensor | None) -> bool:
    """Whether every query row of a boolean ``attn_mask`` (True = may attend) has at least one key; True
    for ``None``. Reads the mask on the host (one synchronisation on a GPU)."""
    return attn_mask is None or bool(attn_mask.any(-1).all())


class TransformerLayer(nn.Module):
    """One encoder layer; ``layer_norm_first`` switches between post-LN (BASE) and pre-LN (LARGE).

    post-LN: ``x = LN(x + drop(attn(x)))``; ``x = LN(x + drop(fc2(drop_act(gelu(fc1(x))))))``.
    pre-LN:  ``x = x + drop(attn(LN(x)))``;  ``x = x + drop(fc2(drop_act(gelu(fc1(LN(x))))))``.
    """

    def __init__(self, dim: int, ffn_dim: int, heads: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, layer_norm_first: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: Tensor, attn_mask: Tensor | None, rows_attend: bool | None = None) -> Tensor:
        """``x [B, T, D]``; ``attn_mask`` and ``rows_attend`` as :meth:`SelfAttention.forward`."""
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), attn_mask, rows_attend))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, attn_mask, rows_attend)))
        return self.final_layer_norm(x + self._ffn(x))


_SHARED_LAYERDROP: contextvars.ContextVar[torch.Generator | None] = contextvars.ContextVar("shared_layerdrop",
                                                                                          default=None)


@contextlib.contextmanager
def shared_layerdrop(seed: int) -> Iterator[None]:
    """Inside, layerdrop decisions come from a CPU generator seeded with ``seed`` instead of the forward's own
    ``generator``: the trainer passes a seed that is the same on every rank for the same update, so every rank
    skips the same layers (differing skips would leave DDP's gradients unmatched and deadlock FSDP's
    collectives). Successive context networks inside draw successive numbers (two views, two decisions)."""
    token = _SHARED_LAYERDROP.set(torch.Generator().manual_seed(seed))
    try:
        yield
    finally:
        _SHARED_LAYERDROP.reset(token)


class ContextNetwork(nn.Module):
    """Positional conv + transformer layers, with layerdrop and padding masks.

    Args:
        dim, ffn_dim, heads, layers: width D, FFN size, heads and depth (BASE 768/3072/12/12).
        conv_pos, conv_pos_groups: positional convolution (128, 16).
        layer_norm_first: pre-LN when True (final LayerNorm after the last layer), else post-LN (LayerNorm
            after the positional embedding).
        layerdrop: probability of skipping each layer in training (0.05 BASE).
    """

    def __init__(self, dim: int, ffn_dim: int, heads: int, layers: int, conv_pos: int, conv_pos_groups: int,
                 dropout: float, attention_dropout: float, activation_dropout: float, layerdrop: float,
                 layer_norm_first: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.pos_conv = PositionalConv(dim, conv_pos, conv_pos_groups)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm_first = layer_norm_first
        self.layerdrop = layerdrop
        self.layers = nn.ModuleList(
            TransformerLayer(dim, ffn_dim, heads, dropout, attention_dropout, activation_dropout,
                             layer_norm_first, eps)
            for _ in range(layers)
        )
        self._init_linear()

    def _init_linear(self) -> None:
        # BERT-style init as fairseq's init_bert_params: N(0, 0.02) weights, zero biases.
        for module in self.layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, *, return_hidden: bool = False,
                causal: bool = False, generator: torch.Generator | None = None) -> tuple[Tensor, list[Tensor]]:
        """Contextualise ``x [B, T, D]``; ``padding_mask [B, T]`` bool, True at padded frames.

        ``causal``: frame ``t`` sees frames ``<= t`` only, in the positional convolution and in attention
        (for the future-predicting objectives, wav2vec 1.0 and CPC).

        Returns the output ``[B, T, D]`` (after the final LayerNorm in pre-LN models) and, with
        ``return_hidden``, the hidden states in transformers' (v5) order: the input to the first layer, then
        each layer's raw output — in pre-LN models the last entry is *before* the final LayerNorm.
        """
        attn_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
            if bool(padding_mask.any()):
                attn_mask = (~padding_mask)[:, None, None, :]
        if causal:
            t = x.shape[1]
            past = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, None]  # [1, 1, T, T]
            attn_mask = past if attn_mask is None else attn_mask & past
        # the explicit CPU dropout path needs every row to have a key: decided once (on the host, where
        # the mask lives on CPU), not in every layer
        rows_attend = every_row_attends(attn_mask) if x.device.type == "cpu" else True
        x = x + self.pos_conv(x, causal)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        hidden: list[Tensor] = []
        skip = None
        if self.training and self.layerdrop > 0:
            shared = _SHARED_LAYERDROP.get()
            if shared is not None:
                skip = (torch.rand(len(self.layers), generator=shared) < self.layerdrop).tolist()
            else:
                skip = (torch.rand(len(self.layers), generator=generator, device=x.device if generator is None
                                   else generator.device) < self.layerdrop).tolist()
        for i, layer in enumerate(self.layers):
            if return_hidden:
                hidden.append(x)
            if skip is not None and skip[i]:
                continue
            x = layer(x, attn_mask, rows_attend)
        if return_hidden:
            hidden.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, hidden
