"""Raw-waveform convolutional feature encoder (wav2vec 2.0's ``f: X -> Z``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechcl.models.config import ConvSpec


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` backward (fairseq ``feature_grad_mult``)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def conv_output_lengths(lengths: Tensor, conv_layers: Sequence[ConvSpec]) -> Tensor:
    """Frames produced from ``lengths`` samples: ``floor((L - k) / s) + 1`` per layer, never below 0.

    Args:
        lengths: ``[batch]`` integer sample counts.
    Returns:
        ``[batch]`` int64 frame counts (16000 samples -> 49 frames with the BASE extractor).
    """
    out = lengths.to(torch.int64)
    for _, kernel, stride in conv_layers:
        out = torch.div(out - kernel, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


class ConvBlock(nn.Module):
    """Conv1d → optional norm (GroupNorm(C, C) or channel LayerNorm) → GELU, on channels-last tensors.

    ``norm`` is ``None``, ``"group"`` or ``"layer"``. The convolution is computed as an unfold + matmul on
    ``[B, T, C]`` tensors: the channel LayerNorm then normalises contiguous rows and no transposes are
    needed (on CPU about 4× faster for forward + backward than ``conv1d`` with transposed LayerNorms).
    Weights keep ``nn.Conv1d``'s ``[C_out, C_in, k]`` layout. Norms run in float32 (fairseq's Fp32 norms).
    """

    def __init__(self, in_dim: int, spec: ConvSpec, bias: bool, norm: str | None) -> None:
        super().__init__()
        out_dim, kernel, stride = spec
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.kernel, self.stride = kernel, stride
        self.norm_kind = norm
        self.norm: nn.Module | None
        if norm == "group":
            self.norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        else:
            self.norm = None

    def forward(self, x: Tensor) -> Tensor:
        """``[B, S, C_in] -> [B, S', C_out]`` with ``S' = floor((S - k) / stride) + 1``."""
        weight = self.conv.weight
        c_out = weight.shape[0]
        cols = x.unfold(1, self.kernel, self.stride)  # [B, S', C_in, k]
        b, t = cols.shape[:2]
        y = torch.matmul(cols.reshape(b, t, -1), weight.reshape(c_out, -1).t())  # [B, S', C_out]
        if self.conv.bias is not None:
            y = y + self.conv.bias
        if self.norm is not None:
            dtype = y.dtype
            yf = y.float()
            if self.norm_kind == "group":  # GroupNorm(C, C): each channel over time
                mean = yf.mean(1, keepdim=True)
                var = yf.var(1, unbiased=False, keepdim=True)
                yf = (yf - mean) * torch.rsqrt(var + self.norm.eps) * self.norm.weight + self.norm.bias
            else:
                yf = F.layer_norm(yf, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
            y = yf.to(dtype)
        return F.gelu(y)


class FeatureEncoder(nn.Module):
    """Stack of strided 1-D convolutions over the raw waveform.

    Args:
        conv_layers: ``(dim, kernel, stride)`` per layer (fairseq ``conv_feature_layers``).
        mode: ``"group_norm"`` — GroupNorm after the first conv only (BASE); ``"layer_norm"`` — LayerNorm
            after every conv (LV-60).
        conv_bias: add a bias to every conv (False for BASE, True for LV-60).
    """

    def __init__(self, conv_layers: Sequence[ConvSpec], mode: str = "group_norm", conv_bias: bool = False) -> None:
        super().__init__()
        if mode not in ("group_norm", "layer_norm"):
            raise ValueError(f"mode must be 'group_norm' or 'layer_norm', got {mode!r}")
        self.conv_layers = tuple(conv_layers)
        blocks = []
        in_dim = 1
        for i, spec in enumerate(self.conv_layers):
            if mode == "layer_norm":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            blocks.append(ConvBlock(in_dim, spec, conv_bias, norm))
            in_dim = spec[0]
        self.layers = nn.ModuleList(blocks)

    @property
    def receptive_field(self) -> int:
        field, jump = 1, 1
        for _, kernel, stride in self.conv_layers:
            field += (kernel - 1) * jump
            jump *= stride
        return field

    @property
    def hop(self) -> int:
        hop = 1
        for _, _, stride in self.conv_layers:
            hop *= stride
        return hop

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.conv_layers)

    def forward(self, wav: Tensor) -> Tensor:
        """``wav [B, S]`` float waveform → features ``[B, T, C]`` (channels last)."""
        if wav.dim() != 2:
            raise ValueError(f"expected a waveform batch of shape [batch, samples], got {tuple(wav.shape)}")
        if wav.shape[1] < self.receptive_field:
            raise ValueError(
                f"input of {wav.shape[1]} samples is shorter than the encoder's receptive field "
                f"({self.receptive_field} samples); pad or drop utterances this short"
            )
        x = wav.unsqueeze(-1)
        for block in self.layers:
            x = block(x)
        return x
