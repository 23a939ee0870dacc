"""The channels-last feature encoder equals nn.Conv1d → GroupNorm/LayerNorm → GELU, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from speechcl.models.config import preset
from speechcl.models.feature_encoder import (
    FeatureEncoder,
    conv_channels_last,
    conv_channels_last_input_grad,
    conv_channels_last_weight_grad,
)


def reference_features(encoder: FeatureEncoder, wav: torch.Tensor) -> torch.Tensor:
    """The textbook computation, channels-first, through autograd: ``[B, S] -> [B, T, C]``."""
    x = wav[:, None, :]
    for block in encoder.layers:
        x = F.conv1d(x, block.conv.weight, block.conv.bias, stride=block.stride)
        if block.norm_kind == "group":
            x = F.group_norm(x, x.shape[1], block.norm.weight, block.norm.bias, block.norm.eps)
        elif block.norm_kind == "layer":
            x = F.layer_norm(x.transpose(1, 2), block.norm.normalized_shape, block.norm.weight, block.norm.bias,
                             block.norm.eps).transpose(1, 2)
        x = F.gelu(x)
    return x.transpose(1, 2)


def randomise_affine(module: torch.nn.Module, seed: int) -> None:
    """Norm weights around 1 and biases around 0, so that their gradients are checked non-trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("c_in,kernel,stride,length", [
    (1, 10, 5, 4003),   # waveform layer: oneDNN forward, copied windows for the weight gradient
    (48, 3, 2, 501),    # GEMMs on views, two chunks, one trailing sample no window reaches
    (48, 2, 2, 400),    # kernel == stride: one chunk
    (40, 5, 2, 333),    # three chunks, the last one shorter
    (64, 2, 3, 200),    # kernel < stride: windows with gaps
])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_paths_equal_conv1d(c_in, kernel, stride, length, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, length, c_in, generator=g, dtype=torch.float64)
    weight = torch.randn(24, c_in, kernel, generator=g, dtype=torch.float64)
    b = torch.randn(24, generator=g, dtype=torch.float64) if bias else None
    xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = F.conv1d(xr.transpose(1, 2), wr, b, stride=stride).transpose(1, 2)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(grad)

    y = conv_channels_last(x, weight, b, stride)
    assert y.shape == ref.shape and y.is_contiguous()
    assert rel(y, ref.detach()) < 1e-12
    grad_w = conv_channels_last_weight_grad(grad, x, kernel, stride)
    assert grad_w.dtype == torch.float32 and grad_w.shape == weight.shape
    assert rel(grad_w.double(), wr.grad) < 1e-6
    grad_x = conv_channels_last_input_grad(grad, weight, stride, length)
    assert grad_x.shape == x.shape
    assert rel(grad_x, xr.grad) < 1e-12


def test_conv_gemm_and_onednn_paths_agree():
    """float32 runs the GEMMs on views, bfloat16 oneDNN's convolution: same function, to bf16 rounding."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 999, 64, generator=g)
    weight = torch.randn(32, 64, 3, generator=g) / 14
    low = conv_channels_last(x.bfloat16(), weight, None, 2).float()
    exact = conv_channels_last(x.bfloat16().float(), weight.bfloat16().float(), None, 2)
    assert rel(low, exact) < 1e-2


@pytest.mark.parametrize("name", ["base", "tiny"])  # group norm without bias; layer norm with bias
def test_encoder_equals_reference_values_and_gradients(name):
    cfg = preset(name)
    torch.manual_seed(0)
    enc = FeatureEncoder(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias)
    if name == "base":  # narrower, same layout
        enc = FeatureEncoder(tuple((64, k, s) for _, k, s in cfg.conv_layers), cfg.extractor_mode, cfg.conv_bias)
    randomise_affine(enc, 1)
    wav = torch.randn(2, 6000) + 0.2
    grads = []
    for fn in (reference_features, FeatureEncoder.forward):
        enc.zero_grad()
        w = wav.clone().requires_grad_()
        out = fn(enc, w)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)))
        grads.append((out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}, w.grad))
    (ref, ref_grads, ref_wav), (got, got_grads, got_wav) = grads
    assert got.shape == ref.shape
    assert rel(got, ref) < 1e-5
    for n in ref_grads:
        assert rel(got_grads[n], ref_grads[n]) < 1e-4, n
    assert rel(got_wav, ref_wav) < 1e-4
    with torch.no_grad():  # the in-place inference path computes the same
        assert rel(enc(wav), ref) < 1e-5


def test_encoder_frozen_first_block():
    """Gradients stop where nothing below needs them; the trainable blocks get the reference's."""
    torch.manual_seed(0)
    enc = FeatureEncoder(((16, 10, 5), (16, 3, 2), (16, 2, 2)), "layer_norm", True)
    randomise_affine(enc, 3)
    enc.layers[0].requires_grad_(False)
    wav = torch.randn(2, 2000)
    reference_features(enc, wav).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad}
    enc.zero_grad()
    enc(wav).square().sum().backward()
    assert all(p.grad is None for p in enc.layers[0].parameters())
    for n, p in enc.named_parameters():
        if p.requires_grad:
            assert rel(p.grad, expected[n]) < 1e-4, n


def test_encoder_under_bf16_autocast_close_to_float32():
    cfg = preset("base")
    torch.manual_seed(0)
    enc = FeatureEncoder(tuple((64, k, s) for _, k, s in cfg.conv_layers), cfg.extractor_mode, cfg.conv_bias)
    wav = torch.randn(2, 8000, requires_grad=True)
    ref = reference_features(enc, wav)
    ref.float().square().sum().backward()
    ref_grad = enc.layers[1].conv.weight.grad.clone()
    enc.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = enc(wav)
    assert low.dtype == torch.bfloat16
    low.float().square().sum().backward()
    assert rel(low.float(), ref.detach()) < 3e-2
    assert rel(enc.layers[1].conv.weight.grad, ref_grad) < 5e-2


def masked_reference_features(encoder: FeatureEncoder, wav: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The textbook computation with the group norm's statistics over each row's valid frames only."""
    x = wav[:, None, :]
    valid = torch.tensor(lengths)
    for block in encoder.layers:
        x = F.conv1d(x, block.conv.weight, block.conv.bias, stride=block.stride)
        valid = (valid - block.kernel) // block.stride + 1
        if block.norm_kind == "group":
            keep = (torch.arange(x.shape[2])[None, :] < valid[:, None])[:, None, :].to(x.dtype)  # [B, 1, T]
            n = valid.to(x.dtype)[:, None, None]
            mean = (x * keep).sum(2, keepdim=True) / n
            var = ((x - mean).square() * keep).sum(2, keepdim=True) / n
            x = (x - mean) * (var + block.norm.eps).rsqrt() * block.norm.weight[:, None] + block.norm.bias[:, None]
        elif block.norm_kind == "layer":
            x = F.layer_norm(x.transpose(1, 2), block.norm.normalized_shape, block.norm.weight, block.norm.bias,
                             block.norm.eps).transpose(1, 2)
        x = F.gelu(x)
    return x.transpose(1, 2)


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_padded_batch_rows_equal_rows_alone(mode):
    """With lengths, each row's valid frames equal the row run alone; values and all gradients (padded
    frames included) equal the textbook masked group norm."""
    torch.manual_seed(0)
    enc = FeatureEncoder(((32, 10, 5), (32, 3, 2), (32, 2, 2)), mode, mode == "layer_norm")
    randomise_affine(enc, 4)
    lengths = [6000, 3217, 6000, 1400]
    wav = torch.randn(4, 6000) + 0.3
    for i, n in enumerate(lengths):
        wav[i, n:] = 0.0
    frames = enc.output_lengths(torch.tensor(lengths)).tolist()
    with torch.no_grad():
        batched = enc(wav, lengths)
        for i, n in enumerate(lengths):
            alone = enc(wav[i:i + 1, :n])
            assert rel(batched[i:i + 1, :frames[i]], alone) < 1e-5, i
    results = []
    for fn in (masked_reference_features, FeatureEncoder.forward):
        enc.zero_grad()
        w = wav.clone().requires_grad_()
        out = fn(enc, w, lengths)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(5)))
        results.append((out.detach(), {k: p.grad.clone() for k, p in enc.named_parameters()}, w.grad))
    (ref, ref_grads, ref_wav), (got, got_grads, got_wav) = results
    assert rel(got, ref) < 1e-5
    for k in ref_grads:
        assert rel(got_grads[k], ref_grads[k]) < 1e-4, k
    assert rel(got_wav, ref_wav) < 1e-4
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        low = enc(wav, lengths)
    assert rel(low.float(), ref) < 3e-2


def test_lengths_of_a_full_batch_change_nothing():
    torch.manual_seed(0)
    enc = FeatureEncoder(((16, 10, 5), (16, 3, 2)), "group_norm", False)
    wav = torch.randn(2, 3000)
    with torch.no_grad():
        assert torch.equal(enc(wav, [3000, 3000]), enc(wav))
    with pytest.raises(ValueError, match="3 lengths for a batch of 2"):
        enc(wav, [3000, 3000, 3000])
