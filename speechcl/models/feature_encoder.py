"""Raw-waveform convolutional feature encoder (wav2vec 2.0's ``f: X -> Z``).

Every activation is channels-last, ``[batch, time, channels]``; the parameters keep ``nn.Conv1d``'s and the
norms' names and layouts, and the function is ``nn.Conv1d`` → norm → GELU per layer. How it is computed:

- **Convolutions** (:func:`conv_channels_last` and its two gradients), each direction with the kernel that
  was fastest on CPU for the BASE layers (1 thread):

  * forward, float32: GEMMs on strided views of the input. The ``k`` taps of a kernel with stride ``s``
    are split into chunks of at most ``s`` taps; the windows of one chunk, ``[frames, taps · C_in]``, are
    a view of the input whose rows are ``s · C_in`` apart and do not overlap, so each chunk is one GEMM
    on the input as it lies in memory (no unfold copy) and the chunks accumulate into the output
    (5-10% faster than oneDNN, 20% faster than unfold + matmul);
  * forward in bfloat16/float16, and for the waveform layer (``C_in = 1``): oneDNN's convolution on the
    same memory seen as a channels-last image (a little faster there, and rounded once rather than once
    per chunk);
  * weight gradient: GEMMs on the same views, summed in float32 (1.7-2.8x faster than oneDNN's in float32);
  * input gradient: oneDNN's transposed convolution (about 15% faster than GEMMs into strided views).
- **Norms in float32** (fairseq's ``Fp32GroupNorm``/``Fp32LayerNorm``): the group norm's per-channel
  statistics over time are two-pass sums over slices of ``_SLICE_FRAMES`` frames, so no float32 copy of
  a whole bfloat16 activation is made.
- **Padded batches.** Given each row's sample count, the group norm takes its statistics over that row's
  valid frames only (the frames its own samples produce). Every valid output frame depends only on valid
  frames of the layers below, so a padded row's valid output equals the row run alone (to float rounding),
  which plain ``GroupNorm`` over the padded length does not give. Padded frames are normalised with the
  row's statistics and receive the exact gradient of that function.
- **Training memory.** With gradients the stack runs as one autograd function (:class:`_ConvStack`) that
  keeps only each layer's convolution output and recomputes norm and GELU in backward (element-wise, cheap
  next to the GEMMs): one saved tensor per layer instead of three (the convolution's input, the norm's
  input and the GELU's input). Without gradients norm and GELU work in place.
- Under ``torch.autocast`` the convolutions and GELU run in the autocast type, the norms in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from speechcl.models.config import ConvSpec

_MIN_GEMM_DEPTH = 64
"""Chunks with ``taps · C_in`` below this would make memory-bound GEMMs; those layers use oneDNN or copies."""
_SLICE_FRAMES = 256
"""Frames per slice in the norm's statistics passes (keeps their float32 temporaries in cache)."""


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


def conv_geometry(conv_layers: Sequence[ConvSpec]) -> tuple[int, int]:
    """``(hop, receptive_field)`` in samples of a conv stack without padding (BASE: ``(320, 400)``).

    Output frame ``t`` sees samples ``[t * hop, t * hop + receptive_field)``: the hop is the product of
    the strides, and each layer widens the field by ``(kernel - 1)`` times the hop below it.
    """
    hop, field = 1, 1
    for _, kernel, stride in conv_layers:
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


def num_frames(num_samples: int, conv_layers: Sequence[ConvSpec]) -> int:
    """Frames a conv stack makes of ``num_samples`` samples (:func:`conv_output_lengths` of one length)."""
    return int(conv_output_lengths(torch.tensor([num_samples]), conv_layers)[0])


# --- convolution (kernel choices: see the module docstring) ---------------------------------------------


def _tap_major(weight: Tensor) -> Tensor:
    """``nn.Conv1d`` weight ``[C_out, C_in, k]`` → ``[k · C_in, C_out]`` (row ``j · C_in + c`` is tap j,
    input channel c), the right-hand side of the window GEMMs."""
    c_out, c_in, kernel = weight.shape
    return weight.permute(2, 1, 0).reshape(kernel * c_in, c_out)


def _few_channels(c_in: int, kernel: int, stride: int) -> bool:
    """Whether a chunk's GEMM would have so small a ``K = taps · C_in`` that it is memory-bound."""
    return c_in * min(kernel, stride) < _MIN_GEMM_DEPTH


def _tap_views(x: Tensor, kernel: int, stride: int, frames: int) -> list[tuple[int, Tensor]]:
    """``(first_tap, view)`` per chunk of at most ``stride`` taps: ``view [B, frames, taps · C]`` of
    ``x [B, S, C]`` (rows contiguous in memory, batch stride free) holds ``x[b, t·stride + first_tap :][:taps]``
    flattened in row t. Rows are ``stride · C`` apart and do not overlap, so each ``view[b]`` is a matrix a
    GEMM reads in place."""
    b, _, c = x.shape
    return [(tap, x.as_strided((b, frames, min(stride, kernel - tap) * c), (x.stride(0), stride * c, 1),
                               x.storage_offset() + tap * c))
            for tap in range(0, kernel, stride)]


def _as_image(x: Tensor) -> Tensor:
    """``[B, S, C]`` → the same memory as a channels-last ``[B, C, 1, S]`` image (no copy)."""
    return x.transpose(1, 2).unsqueeze(2)


def conv_channels_last(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """``nn.Conv1d`` (no padding) on channels-last data, in ``x``'s dtype, without autograd.

    Args:
        x: ``[B, S, C_in]``, contiguous.
        weight: ``[C_out, C_in, k]``; bias ``[C_out]`` or None (cast to ``x``'s dtype).
    Returns:
        ``[B, T, C_out]``, ``T = (S - k) // stride + 1``.
    """
    x = x.contiguous()
    b, length, c_in = x.shape
    c_out, _, kernel = weight.shape
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    if x.dtype in (torch.bfloat16, torch.float16) or _few_channels(c_in, kernel, stride):
        image = F.conv2d(_as_image(x), weight.unsqueeze(2), bias, stride=(1, stride))
        return image.squeeze(2).transpose(1, 2).contiguous()  # channels-last already: no copy
    frames = (length - kernel) // stride + 1
    y = x.new_empty(b, frames, c_out)
    w = _tap_major(weight)
    for i, (tap, view) in enumerate(_tap_views(x, kernel, stride, frames)):
        rows = w[tap * c_in: tap * c_in + view.shape[2]]
        for j in range(b):
            if i > 0:
                y[j].addmm_(view[j], rows)
            elif bias is None:
                torch.mm(view[j], rows, out=y[j])
            else:
                torch.addmm(bias, view[j], rows, out=y[j])
    return y


def conv_channels_last_weight_grad(grad: Tensor, x: Tensor, kernel: int, stride: int) -> Tensor:
    """Weight gradient of :func:`conv_channels_last` for ``grad [B, T, C_out]`` (contiguous, ``x``'s dtype)
    and its input ``x [B, S, C_in]``: float32 ``[C_out, C_in, k]``."""
    b, _, c_in = x.shape
    frames, c_out = grad.shape[1:]
    grad_w = grad.new_zeros(kernel * c_in, c_out, dtype=torch.float32)  # tap-major
    if _few_channels(c_in, kernel, stride):  # one GEMM over copied windows [B · T, k · C_in]
        windows = x.unfold(1, kernel, stride).transpose(2, 3).reshape(-1, kernel * c_in)
        chunks = [(0, windows, grad.reshape(b * frames, c_out))]
    else:
        chunks = [(tap, view[j], grad[j]) for tap, view in _tap_views(x, kernel, stride, frames) for j in range(b)]
    for tap, a, g in chunks:
        rows = grad_w[tap * c_in: tap * c_in + a.shape[1]]
        if a.dtype == torch.float32:
            rows.addmm_(a.t(), g)
        else:  # sum the batch in float32, the weight gradient's type
            rows += torch.mm(a.t(), g)
    return grad_w.view(kernel, c_in, c_out).permute(2, 1, 0).contiguous()


def conv_channels_last_input_grad(grad: Tensor, weight: Tensor, stride: int, length: int) -> Tensor:
    """Input gradient of :func:`conv_channels_last` for ``grad [B, T, C_out]`` (``grad``'s dtype), the
    weight ``[C_out, C_in, k]`` and the input length ``S``: ``[B, S, C_in]`` (a transposed convolution)."""
    kernel = weight.shape[2]
    extra = length - ((grad.shape[1] - 1) * stride + kernel)  # trailing samples no window reached
    image = F.conv_transpose2d(_as_image(grad), weight.to(grad.dtype).unsqueeze(2), stride=(1, stride),
                               output_padding=(0, extra))
    return image.squeeze(2).transpose(1, 2).contiguous()  # channels-last already: no copy


# --- norm and activation -------------------------------------------------------------------------------


def _time_moments(y: Tensor, valid: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance over time of ``y [B, T, C]``: float32 ``[B, 1, C]`` each,
    two passes over slices of time. With ``valid`` (frames per row), row ``b`` uses its first
    ``valid[b]`` frames (at least one)."""
    if valid is not None:
        moments = [_time_moments(y[b:b + 1, :max(n, 1)]) for b, n in enumerate(valid)]
        return torch.cat([m for m, _ in moments]), torch.cat([v for _, v in moments])
    total = y.new_zeros(y.shape[0], 1, y.shape[2], dtype=torch.float32)
    for part in y.split(_SLICE_FRAMES, 1):
        total += part.sum(1, keepdim=True, dtype=torch.float32)
    mean = total / y.shape[1]
    squares = torch.zeros_like(total)
    for part in y.split(_SLICE_FRAMES, 1):
        centred = part.to(torch.float32, copy=True).sub_(mean)
        squares += centred.mul_(centred).sum(1, keepdim=True)
    return mean, squares / y.shape[1]


def _group_norm(y: Tensor, weight: Tensor, bias: Tensor, eps: float, out: Tensor | None = None,
                valid: Sequence[int] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``GroupNorm(C, C)`` of channels-last ``y [B, T, C]`` (each channel over time), computed in float32
    and written in ``y``'s dtype to ``out`` (a new tensor if None; ``y`` itself works); also
    ``(mean, rstd)``, float32 ``[B, 1, C]``. With ``valid`` (frames per row) the statistics cover each
    row's valid frames only; all frames are normalised with them."""
    mean, var = _time_moments(y, valid)
    rstd = (var + eps).rsqrt_()
    scale = rstd * weight
    shift = bias - mean * scale
    out = torch.empty_like(y) if out is None else out
    if y.dtype == torch.float32:
        return torch.addcmul(shift, y, scale, out=out), (mean, rstd)
    for src, dst in zip(y.split(_SLICE_FRAMES, 1), out.split(_SLICE_FRAMES, 1)):  # float32 math, slice by slice
        dst.copy_(torch.addcmul(shift, src.float(), scale))
    return out, (mean, rstd)


def _group_norm_backward(grad: Tensor, y: Tensor, stats: tuple[Tensor, Tensor], weight: Tensor,
                         valid: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`_group_norm` (same ``valid``) for ``grad [B, T, C]``, which is overwritten with
    the input's."""
    mean, rstd = stats
    sum_g = torch.zeros_like(mean)  # Σ_t g
    sum_gy = torch.zeros_like(mean)  # Σ_t g · (y - mean)
    for g, x in zip(grad.split(_SLICE_FRAMES, 1), y.split(_SLICE_FRAMES, 1)):
        g = g.to(torch.float32)
        sum_g += g.sum(1, keepdim=True)
        sum_gy += (x.to(torch.float32, copy=True).sub_(mean).mul_(g)).sum(1, keepdim=True)
    grad_weight = (sum_gy * rstd).sum((0, 1))
    grad_bias = sum_g.sum((0, 1))
    # dy = rstd·w·(g - Σ_t g / n - ŷ·Σ_t g·ŷ / n) = a·g + b·y + c per (batch, channel) at the n frames the
    # statistics cover (sums over all frames: every output uses the statistics); a·g at the others.
    a = rstd * weight
    if valid is None:
        frames: Tensor | int = y.shape[1]
    else:
        frames = torch.tensor([max(n, 1) for n in valid], dtype=torch.float32, device=y.device).view(-1, 1, 1)
    b = -a * rstd.square() * sum_gy / frames
    c = -a * sum_g / frames - b * mean
    if valid is None:
        _affine_grad(grad, y, a, b, c)
        return grad, grad_weight, grad_bias
    for i, n in enumerate(valid):
        row = slice(i, i + 1)
        _affine_grad(grad[row, :n], y[row, :n], a[row], b[row], c[row])
        tail = grad[row, n:]
        if tail.shape[1]:
            tail.copy_(tail.to(torch.float32) * a[row])
    return grad, grad_weight, grad_bias


def _affine_grad(grad: Tensor, y: Tensor, a: Tensor, b: Tensor, c: Tensor) -> None:
    """``grad ← a·grad + b·y + c`` in float32, slice by slice (``a, b, c`` broadcast as ``[B, 1, C]``)."""
    for g, x in zip(grad.split(_SLICE_FRAMES, 1), y.split(_SLICE_FRAMES, 1)):
        g.copy_(torch.addcmul(c, x.to(torch.float32), b).addcmul_(g.to(torch.float32), a))


def _layer_norm_backward(grad: Tensor, y: Tensor, stats: tuple[Tensor, Tensor], norm: nn.LayerNorm
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the channel LayerNorm of ``y [B, T, C]`` (``stats``: its float32 mean and rstd
    ``[B, T, 1]``) for ``grad``, which is overwritten with the input's; float32 math slice by slice."""
    grad_weight = torch.zeros_like(norm.weight, dtype=torch.float32)
    grad_bias = torch.zeros_like(grad_weight)
    slices = (t.split(_SLICE_FRAMES, 1) for t in (grad, y, *stats))
    for g, x, mean, rstd in zip(*slices):
        g32, x32, mean, rstd = (t.float().contiguous() for t in (g, x, mean, rstd))
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(  # (FSDP's bf16 parameters: upcast too)
            g32, x32, norm.normalized_shape, mean, rstd, norm.weight.float(), norm.bias.float(), [True, True, True])
        g.copy_(dx)
        grad_weight += dw
        grad_bias += db
    return grad, grad_weight, grad_bias


class _Activation:
    """Norm (``None``, ``"group"`` or ``"layer"``, float32) then GELU of one block's conv output."""

    def __init__(self, block: ConvBlock) -> None:
        self.kind = block.norm_kind
        self.norm = block.norm

    def normalize(self, y: Tensor, inplace: bool = False, valid: Sequence[int] | None = None
                  ) -> tuple[Tensor, object]:
        """``(norm(y), what backward needs)``; ``y`` itself when there is no norm. ``inplace`` lets the
        group norm overwrite ``y``; ``valid`` (frames per row) limits its statistics."""
        if self.kind == "group":
            return _group_norm(y, self.norm.weight, self.norm.bias, self.norm.eps, y if inplace else None, valid)
        if self.kind == "layer":
            # The CPU kernel computes a reduced-precision input in float32 itself; elsewhere it is upcast.
            native = y.dtype == torch.float32 or y.device.type == "cpu"
            x = y if native else y.float()
            weight, bias = self.norm.weight, self.norm.bias
            if x.dtype == torch.float32:  # reduced-precision parameters (FSDP's bf16) with a float32 input
                weight, bias = weight.float(), bias.float()
            out, mean, rstd = torch.native_layer_norm(x, self.norm.normalized_shape, weight, bias, self.norm.eps)
            return out.to(y.dtype), (mean, rstd)
        return y, None

    def forward(self, y: Tensor, keep_input: bool, valid: Sequence[int] | None = None) -> Tensor:
        """``GELU(norm(y))``; overwrites ``y`` unless ``keep_input``."""
        u, _ = self.normalize(y, inplace=not keep_input, valid=valid)
        if u is y and keep_input:
            return F.gelu(y)
        return torch.ops.aten.gelu_(u)

    def backward(self, grad: Tensor, y: Tensor, u: Tensor, stats: object, valid: Sequence[int] | None = None
                 ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Gradient for ``y`` from ``grad`` (for the GELU output, overwritten) and the recomputed
        ``u, stats = normalize(y, valid=valid)``; also the norm weight's and bias's gradients."""
        grad = torch.ops.aten.gelu_backward.grad_input(grad, u, grad_input=grad)
        if self.kind == "group":
            return _group_norm_backward(grad, y, stats, self.norm.weight, valid)  # type: ignore[arg-type]
        if self.kind == "layer":
            return _layer_norm_backward(grad, y, stats, self.norm)  # type: ignore[arg-type]
        return grad, None, None


# --- the stack -----------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Conv1d → optional norm (GroupNorm(C, C) or channel LayerNorm) → GELU, on channels-last tensors.

    ``norm`` is ``None``, ``"group"`` or ``"layer"``. Weights keep ``nn.Conv1d``'s ``[C_out, C_in, k]``
    layout; the computation is the module docstring's (norms in float32, as fairseq's Fp32 norms).
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
        return conv_stack(x, [self])


def _params(blocks: Sequence[ConvBlock]) -> list[Tensor | None]:
    """Per block: conv weight, conv bias, norm weight, norm bias (None where absent)."""
    out: list[Tensor | None] = []
    for block in blocks:
        norm = block.norm
        out += [block.conv.weight, block.conv.bias, None if norm is None else norm.weight,
                None if norm is None else norm.bias]
    return out


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The autocast type of ``x``'s device where autocast would cast ``x`` (on, and not float64), else
    ``x``'s dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return x.dtype


def _without_autocast(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``x``'s device (the stack casts explicitly), a no-op where it is off already."""
    device = x.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()


def _valid_frames(lengths: Sequence[int] | None, length: int, blocks: Sequence[ConvBlock]
                  ) -> tuple[tuple[int, ...] | None, ...]:
    """Per block, each row's valid output frames for ``lengths`` valid input steps of ``length``; None for a
    block whose rows are all valid (or when ``lengths`` is None)."""
    if lengths is None:
        return (None,) * len(blocks)
    rows = torch.tensor([min(int(n), length) for n in lengths])
    full = torch.tensor([length])
    out: list[tuple[int, ...] | None] = []
    for block in blocks:
        spec = [(block.conv.out_channels, block.kernel, block.stride)]
        rows, full = conv_output_lengths(rows, spec), conv_output_lengths(full, spec)
        out.append(None if bool((rows >= full).all()) else tuple(rows.tolist()))
    return tuple(out)


def conv_stack(x: Tensor, blocks: Sequence[ConvBlock], lengths: Sequence[int] | None = None) -> Tensor:
    """Run ``blocks`` on ``x [B, S, C_in]`` → ``[B, T, C_out]`` (in the autocast type under autocast).

    ``lengths``: valid input steps per row (right padding); group norms then take their statistics over
    each row's valid frames only (module docstring). With gradients this is :class:`_ConvStack` (saves
    one tensor per block); otherwise a plain forward that works in place.
    """
    dtype = _compute_dtype(x)
    params = _params(blocks)
    valid = _valid_frames(lengths, x.shape[1], blocks)
    if torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad for p in params)):
        return _ConvStack.apply(x, tuple(blocks), dtype, valid, *params)
    with torch.no_grad(), _without_autocast(x):
        h = x.to(dtype).contiguous()
        for block, rows in zip(blocks, valid):
            y = conv_channels_last(h, block.conv.weight, block.conv.bias, block.stride)
            h = _Activation(block).forward(y, keep_input=False, valid=rows)
        return h


class _ConvStack(torch.autograd.Function):
    """:func:`conv_stack` with gradients: keeps each block's conv output ``y_i`` (and the input) and, in
    backward, recomputes ``x_{i+1} = GELU(norm_i(y_i))`` one block at a time."""

    @staticmethod
    def forward(ctx, x: Tensor, blocks: tuple[ConvBlock, ...], dtype: torch.dtype,  # type: ignore[override]
                valid: tuple[tuple[int, ...] | None, ...], *params: Tensor | None) -> Tensor:
        ctx.blocks, ctx.dtype, ctx.valid = blocks, dtype, valid
        with _without_autocast(x):
            h = x.to(dtype).contiguous()
            ys = []
            for block, rows in zip(blocks, valid):
                y = conv_channels_last(h, block.conv.weight, block.conv.bias, block.stride)
                ys.append(y)
                h = _Activation(block).forward(y, keep_input=True, valid=rows)
        # The parameters too, so that autograd's version check catches them being changed before backward.
        ctx.save_for_backward(x, *ys, *(p for p in params if p is not None))
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        blocks: tuple[ConvBlock, ...] = ctx.blocks
        x, *ys = ctx.saved_tensors[: len(blocks) + 1]
        dtype, valid = ctx.dtype, ctx.valid
        needs = ctx.needs_input_grad[4:]  # four parameters per block, as _params lists them
        grads: list[Tensor | None] = [None] * len(needs)
        grad_x = None
        with _without_autocast(x):
            # A copy: the activation backward overwrites it, and the caller's may be shared.
            grad = grad.to(dtype, memory_format=torch.contiguous_format, copy=True)
            u, stats = _Activation(blocks[-1]).normalize(ys[-1], valid=valid[-1])
            for i in range(len(blocks) - 1, -1, -1):
                block = blocks[i]
                grad, grads[4 * i + 2], grads[4 * i + 3] = _Activation(block).backward(grad, ys[i], u, stats, valid[i])
                if i > 0:  # the block's input GELU(norm(y_{i-1})), recomputed; norm(y_{i-1}) is kept for later
                    u, stats = _Activation(blocks[i - 1]).normalize(ys[i - 1], valid=valid[i - 1])
                    h = F.gelu(u)
                else:
                    h = x.to(dtype).contiguous()
                if needs[4 * i]:
                    grads[4 * i] = conv_channels_last_weight_grad(grad, h, block.kernel, block.stride)
                if needs[4 * i + 1]:
                    grads[4 * i + 1] = grad.sum((0, 1), dtype=torch.float32)
                length = h.shape[1]
                del h
                # Go on below this block while its input or an earlier block needs a gradient.
                if not (ctx.needs_input_grad[0] or any(needs[: 4 * i])):
                    break
                grad = conv_channels_last_input_grad(grad, block.conv.weight, block.stride, length)
            else:
                grad_x = grad.to(x.dtype)
        params = _params(blocks)
        grads = [None if g is None else g.to(p.dtype) for g, p in zip(grads, params)]  # type: ignore[union-attr]
        return (grad_x, None, None, None, *grads)


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
        """Samples one output frame sees (400 for BASE)."""
        return conv_geometry(self.conv_layers)[1]

    @property
    def hop(self) -> int:
        """Samples between consecutive output frames (320 for BASE)."""
        return conv_geometry(self.conv_layers)[0]

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.conv_layers)

    def forward(self, wav: Tensor, lengths: Tensor | Sequence[int] | None = None) -> Tensor:
        """``wav [B, S]`` float waveform → features ``[B, T, C]`` (channels last).

        ``lengths [B]``: valid samples per row of a right-padded batch; the group norm's statistics then
        skip each row's padding, so a row's valid frames come out as if it ran alone.
        """
        if wav.dim() != 2:
            raise ValueError(f"expected a waveform batch of shape [batch, samples], got {tuple(wav.shape)}")
        if wav.shape[1] < self.receptive_field:
            raise ValueError(
                f"input of {wav.shape[1]} samples is shorter than the encoder's receptive field "
                f"({self.receptive_field} samples); pad or drop utterances this short"
            )
        if lengths is not None:
            lengths = [int(n) for n in lengths]
            if len(lengths) != wav.shape[0]:
                raise ValueError(f"got {len(lengths)} lengths for a batch of {wav.shape[0]} waveforms")
        return conv_stack(wav.unsqueeze(-1), list(self.layers), lengths)
