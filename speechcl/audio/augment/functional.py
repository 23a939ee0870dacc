"""Waveform augmentations as pure functions of tensors (no sampling of their strength, no state).

Every function takes a batch ``wave`` ``[B, S]`` (float) and, where it matters, ``lengths`` ``[B]`` (int64, the
valid samples of each row; ``None`` = every row is ``S`` long). Samples at or past a row's length are padding:
they are read as zeros and written as zeros, and level measurements (SNR, gain, peak) use valid samples only.
Strength arguments are a float (whole batch) or a ``[B]`` tensor (one value per row) unless said otherwise.
The random ones take a ``torch.Generator`` (CPU) so the caller decides what they depend on.

The chain that samples strengths per item and applies them with a probability lives in
:mod:`speechcl.audio.augment.chain`; these are what the invariance analysis applies at a fixed strength.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torchaudio.functional as AF
from torch import Tensor

# Spectral exponent beta of each noise colour: power spectral density ~ 1 / f**beta.
NOISE_COLORS: dict[str, float] = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0, "violet": -2.0}

# Speed and pitch ratios are rounded to this grid (1/100 = 1%) so that resampling runs between two
# sample rates with a large common divisor (a short polyphase kernel): 0.9, 1.0, 1.1 are exact.
RATIO_STEPS = 100


@lru_cache(maxsize=4096)
def fast_fft_length(n: int) -> int:
    """The smallest 5-smooth number (2^a 3^b 5^c) >= n: FFTs of such sizes are several times faster than of
    a size with a large prime factor."""
    best, p5 = 1 << max(n - 1, 0).bit_length(), 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35 << max(0, (max(n, 1) - 1) // p35).bit_length()  # p35 * 2^k >= n
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def fftconvolve_fast(x: Tensor, h: Tensor) -> Tensor:
    """torchaudio's fftconvolve (full mode, ``[..., Sx + Sh - 1]``) with ``x`` zero-padded so the transform
    has a 5-smooth size; the padding only adds zeros past the result, which are cut off."""
    full = x.shape[-1] + h.shape[-1] - 1
    pad = fast_fft_length(full) - full
    return AF.fftconvolve(torch.nn.functional.pad(x, (0, pad)) if pad else x, h)[..., :full]


def _check_wave(wave: Tensor, name: str) -> None:
    if wave.dim() != 2 or not wave.is_floating_point():
        raise ValueError(f"{name}: wave must be a float tensor [B, S], got {wave.dtype} {tuple(wave.shape)}")


def _lengths(wave: Tensor, lengths: Tensor | None) -> Tensor:
    """Valid lengths as int64 ``[B]`` on wave's device."""
    if lengths is None:
        return torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
    lengths = torch.as_tensor(lengths, device=wave.device).long()
    if lengths.shape != (wave.shape[0],) or bool((lengths < 0).any()) or bool((lengths > wave.shape[1]).any()):
        raise ValueError(f"lengths must be [B] with 0 <= length <= S; got {lengths.tolist()} for wave "
                         f"{tuple(wave.shape)}")
    return lengths


def valid_mask(lengths: Tensor, num_samples: int) -> Tensor:
    """``[B, S]`` bool, True at valid samples (the complement of a padding mask)."""
    return torch.arange(num_samples, device=lengths.device)[None, :] < lengths[:, None]


def _per_row(value: float | Tensor, wave: Tensor) -> Tensor:
    """A float or ``[B]`` tensor as ``[B, 1]`` float on wave's device."""
    value = torch.as_tensor(value, dtype=wave.dtype, device=wave.device)
    if value.dim() == 0:
        value = value.expand(wave.shape[0])
    if value.shape != (wave.shape[0],):
        raise ValueError(f"a per-row strength must be a float or [B={wave.shape[0]}], got {tuple(value.shape)}")
    return value[:, None]


def _zero_padding(wave: Tensor, lengths: Tensor | None) -> Tensor:
    return wave if lengths is None else wave * valid_mask(lengths, wave.shape[1])


def peak(wave: Tensor, lengths: Tensor | None = None) -> Tensor:
    """``[B]`` max |sample| over valid samples."""
    return _zero_padding(wave, lengths).abs().amax(dim=1) if wave.shape[1] else wave.new_zeros(wave.shape[0])


def rms(wave: Tensor, lengths: Tensor | None = None) -> Tensor:
    """``[B]`` root mean square over valid samples (0 for an empty row)."""
    n = _lengths(wave, lengths).clamp(min=1).to(wave.dtype)
    return (_zero_padding(wave, lengths).square().sum(dim=1) / n).sqrt()


# --- level and sign ------------------------------------------------------------------------------------------

def apply_gain(wave: Tensor, db: float | Tensor) -> Tensor:
    """Scale by ``db`` decibels (RMS ratio ``10 ** (db / 20)``); padding stays zero because it is zero."""
    _check_wave(wave, "gain")
    return wave * 10.0 ** (_per_row(db, wave) / 20.0)


def invert_polarity(wave: Tensor) -> Tensor:
    """``-wave`` (inaudible; a representation should ignore it)."""
    return -wave


def clip(wave: Tensor, level: float | Tensor, lengths: Tensor | None = None) -> Tensor:
    """Hard clipping at ``level`` times the row's peak (0 < level <= 1; 1 leaves the row unchanged)."""
    _check_wave(wave, "clip")
    bound = peak(wave, lengths)[:, None] * _per_row(level, wave)
    return torch.maximum(torch.minimum(wave, bound), -bound)


def mu_law(wave: Tensor, bits: int = 8, lengths: Tensor | None = None) -> Tensor:
    """μ-law companding to ``2 ** bits`` levels and back (torchaudio's mu_law_encoding/decoding), applied to
    the row scaled to peak 1 and scaled back: at most ``2 ** bits`` distinct values per row."""
    _check_wave(wave, "mu_law")
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"mu_law: bits must be in 1..16, got {bits}")
    scale = peak(wave, lengths).clamp(min=torch.finfo(wave.dtype).tiny)[:, None]
    channels = 2 ** int(bits)
    decoded = AF.mu_law_decoding(AF.mu_law_encoding((wave / scale).clamp(-1.0, 1.0), channels), channels)
    return _zero_padding(decoded.to(wave.dtype) * scale, lengths)


# --- time ----------------------------------------------------------------------------------------------------

def time_shift(wave: Tensor, shift: int | Tensor, lengths: Tensor | None = None) -> Tensor:
    """Delay each row by ``shift`` samples (negative: advance), filling with zeros; content moved past the
    row's valid end is dropped, so lengths do not change. Time map: ``out[t + shift] = in[t]``."""
    _check_wave(wave, "time_shift")
    B, S = wave.shape
    shift = torch.as_tensor(shift, device=wave.device).long().expand(B)
    src = torch.arange(S, device=wave.device)[None, :] - shift[:, None]  # out[t] = in[t - shift]
    inside = (src >= 0) & (src < S)
    out = torch.gather(wave, 1, src.clamp(0, max(S - 1, 0))) * inside
    return _zero_padding(out, lengths)


def time_mask(wave: Tensor, starts: Tensor, widths: Tensor) -> Tensor:
    """Zero ``widths[b, m]`` samples from ``starts[b, m]`` (both int64 ``[B, M]``) in each row."""
    _check_wave(wave, "time_mask")
    if starts.shape != widths.shape or starts.dim() != 2 or starts.shape[0] != wave.shape[0]:
        raise ValueError(f"time_mask: starts and widths must both be [B, M], got {tuple(starts.shape)} and "
                         f"{tuple(widths.shape)} for wave {tuple(wave.shape)}")
    t = torch.arange(wave.shape[1], device=wave.device)[None, None, :]
    starts, widths = starts.to(wave.device)[:, :, None], widths.to(wave.device)[:, :, None]
    masked = ((t >= starts) & (t < starts + widths)).any(dim=1)
    return wave.masked_fill(masked, 0.0)


def ratio_rates(ratio: float, sample_rate: int) -> tuple[int, int]:
    """The integer rates ``(orig, new)`` that resample by ``ratio`` rounded to 1/RATIO_STEPS: playing
    ``sample_rate`` audio as if recorded at ``orig`` (= ``ratio * sample_rate``, rounded) and resampling it to
    ``new`` (= ``sample_rate``) makes it ``ratio`` times faster (length / ratio)."""
    if not ratio > 0:
        raise ValueError(f"a speed or pitch ratio must be > 0, got {ratio}")
    step = sample_rate // RATIO_STEPS if sample_rate % RATIO_STEPS == 0 else 1
    orig = max(1, round(ratio * sample_rate / step)) * step
    return orig, sample_rate


def speed_ratio(factor: float, sample_rate: int = 16000) -> float:
    """The speed factor actually applied for ``factor`` (rounded to the resampling grid)."""
    orig, new = ratio_rates(factor, sample_rate)
    return orig / new


def _resample(wave: Tensor, orig: int, new: int) -> Tensor:
    g = math.gcd(orig, new)
    return AF.resample(wave, orig // g, new // g) if orig != new else wave


def speed_perturb(wave: Tensor, factor: float, sample_rate: int = 16000, lengths: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Kaldi-style speed perturbation (tempo and pitch together) by resampling (torchaudio's resample):
    ``factor`` > 1 is faster and shorter. Returns ``(wave [B, S'], lengths [B])`` with each row's whole
    content kept: ``new_length = ceil(length / factor)``, ``S' = max(new_length)`` (``ceil(S / factor)``
    without ``lengths``). Time map: ``out[t / factor] = in[t]``."""
    _check_wave(wave, "speed")
    lengths = _lengths(wave, lengths)
    orig, new = ratio_rates(factor, sample_rate)
    g = math.gcd(orig, new)
    new_lengths = torch.div(lengths * (new // g) + (orig // g) - 1, orig // g, rounding_mode="floor")
    out = _resample(wave, orig, new)
    width = int(new_lengths.max()) if len(new_lengths) else 0
    out = out[:, :width]
    if out.shape[1] < width:  # pragma: no cover - resample returns ceil(S * new / orig) >= every new length
        out = torch.nn.functional.pad(out, (0, width - out.shape[1]))
    return _zero_padding(out, new_lengths), new_lengths


def pitch_shift(wave: Tensor, semitones: float, sample_rate: int = 16000, n_fft: int = 512,
                hop_length: int = 128) -> Tensor:
    """Shift pitch by ``semitones`` keeping duration: a phase-vocoder time stretch (torchaudio's
    phase_vocoder) by the pitch ratio, then resampling back to the original length. The ratio
    ``2 ** (semitones / 12)`` is rounded to 1/RATIO_STEPS (about 17 cents). Every row is ``S`` long (pass
    one row's valid slice to shift it alone: the STFT would otherwise see the padding). Each row's RMS is
    restored."""
    _check_wave(wave, "pitch_shift")
    orig, new = ratio_rates(2.0 ** (semitones / 12.0), sample_rate)
    if orig == new or wave.shape[1] == 0:
        return wave.clone()
    S = wave.shape[1]
    n_fft = min(n_fft, 1 << max(S - 1, 1).bit_length() - 1) if S < n_fft else n_fft
    hop_length = min(hop_length, max(n_fft // 4, 1))
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft, hop_length, window=window, return_complex=True)
    phase_advance = torch.linspace(0, math.pi * hop_length, spec.shape[-2], device=wave.device,
                                   dtype=wave.dtype)[..., None]
    stretched = AF.phase_vocoder(spec, new / orig, phase_advance)  # rate < 1 stretches (pitch up)
    long = torch.istft(stretched, n_fft, hop_length, window=window, length=round(S * orig / new))
    out = _resample(long, orig, new)[:, :S]
    out = torch.nn.functional.pad(out, (0, S - out.shape[1])) if out.shape[1] < S else out
    before, after = rms(wave), rms(out)  # the vocoder's bin interpolation loses level (a tone an octave up: -5 dB)
    return out * torch.where(after > 0, before / after.clamp(min=1e-30), torch.zeros_like(after))[:, None]


# --- noise ---------------------------------------------------------------------------------------------------

def colored_noise(length: int, color: str = "white", generator: torch.Generator | None = None) -> Tensor:
    """``[length]`` float32 Gaussian noise with power spectral density ~ 1 / f**beta (``NOISE_COLORS``),
    zero mean and unit RMS, drawn on the CPU from ``generator``."""
    if color not in NOISE_COLORS:
        raise ValueError(f"noise color must be one of {sorted(NOISE_COLORS)}, got {color!r}")
    beta = NOISE_COLORS[color]
    if beta == 0.0 or length < 2:
        return torch.randn(length, generator=generator)
    size = fast_fft_length(length)  # shaped at a fast FFT size, then cut to length
    spec = torch.fft.rfft(torch.randn(size, generator=generator))
    f = torch.arange(spec.shape[0], dtype=torch.float32)
    f[0] = 1.0  # DC is removed below; avoid dividing by zero
    spec = spec * f.pow(-beta / 2.0)
    spec[0] = 0.0
    noise = torch.fft.irfft(spec, n=size)[:length]
    noise = noise - noise.mean()
    return noise / noise.square().mean().sqrt().clamp(min=1e-12)


def mix_at_snr(wave: Tensor, noise: Tensor, snr_db: float | Tensor, lengths: Tensor | None = None) -> Tensor:
    """``wave + a * noise`` with ``a`` chosen per row so that the signal-to-noise ratio over the valid samples
    is ``snr_db`` (torchaudio's add_noise). Rows whose signal or noise is silent come back unchanged."""
    _check_wave(wave, "mix_at_snr")
    if noise.shape != wave.shape:
        raise ValueError(f"noise must have wave's shape {tuple(wave.shape)}, got {tuple(noise.shape)}")
    lengths = _lengths(wave, lengths)
    noise = _zero_padding(noise.to(wave), lengths)
    audible = (rms(wave, lengths) > 0) & (rms(noise, lengths) > 0)
    if not bool(audible.any()):
        return wave.clone()
    snr = _per_row(snr_db, wave)[:, 0]
    mixed = AF.add_noise(wave[audible], noise[audible], snr[audible], lengths[audible])
    out = wave.clone()
    out[audible] = mixed
    return out


def add_noise(wave: Tensor, snr_db: float | Tensor, color: str = "white", generator: torch.Generator | None = None,
              lengths: Tensor | None = None) -> Tensor:
    """Additive Gaussian noise of ``color`` at ``snr_db`` over each row's valid samples; the noise of row b is
    ``colored_noise(lengths[b], color, generator)`` (rows drawn in order from the one generator)."""
    _check_wave(wave, "noise")
    lengths = _lengths(wave, lengths)
    noise = torch.zeros_like(wave)
    for b, n in enumerate(lengths.tolist()):
        noise[b, :n] = colored_noise(n, color, generator).to(wave)
    return mix_at_snr(wave, noise, snr_db, lengths)


def babble_noise(wave: Tensor, sources: Sequence[Sequence[int]], lengths: Tensor | None = None) -> Tensor:
    """``[B, S]`` babble for each row b: the sum of rows ``sources[b]`` of the batch, each scaled to unit RMS
    over its valid samples and repeated (or cut) to row b's length. Silent sources are skipped."""
    _check_wave(wave, "babble")
    lengths = _lengths(wave, lengths)
    n = lengths.tolist()
    unit = wave / rms(wave, lengths).clamp(min=torch.finfo(wave.dtype).tiny)[:, None]
    out = torch.zeros_like(wave)
    for b, rows in enumerate(sources):
        for j in rows:
            if n[j] == 0 or not bool(wave[j, :n[j]].any()):
                continue
            reps = -(-n[b] // n[j])
            out[b, :n[b]] += unit[j, :n[j]].repeat(reps)[:n[b]]
    return out


def add_babble(wave: Tensor, snr_db: float | Tensor, speakers: int = 3, generator: torch.Generator | None = None,
               lengths: Tensor | None = None) -> Tensor:
    """Babble from ``speakers`` other rows of the batch (chosen at random, without the row itself) at
    ``snr_db``; a batch of one row comes back unchanged."""
    B = wave.shape[0]
    sources = [[j for j in torch.randperm(B - 1, generator=generator).tolist()[:speakers]] for _ in range(B)]
    sources = [[j + (j >= b) for j in rows] for b, rows in enumerate(sources)]
    return mix_at_snr(wave, babble_noise(wave, sources, lengths), snr_db, lengths)


# --- channel -------------------------------------------------------------------------------------------------

def synthetic_rir(rt60: float, sample_rate: int = 16000, drr_db: float = 0.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """``[L]`` float32 room impulse response, ``L = ceil(rt60 * sample_rate)``: a unit direct path at sample 0
    plus an exponentially decaying Gaussian tail (Polack's statistical model) whose energy falls by 60 dB in
    ``rt60`` seconds and whose total energy is ``drr_db`` below the direct path's."""
    if not rt60 > 0:
        raise ValueError(f"reverb: rt60 must be > 0 seconds, got {rt60}")
    length = max(2, math.ceil(rt60 * sample_rate))
    t = torch.arange(length, dtype=torch.float32) / sample_rate
    tail = torch.randn(length, generator=generator) * torch.exp(-3.0 * math.log(10.0) * t / rt60)
    tail[0] = 0.0
    tail = tail / tail.square().sum().sqrt() * 10.0 ** (-drr_db / 20.0)
    tail[0] = 1.0
    return tail


def reverberate(wave: Tensor, rir: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Convolve each row with ``rir`` (``[L]`` or ``[B, L]``) by FFT (torchaudio's fftconvolve), keep the first
    ``S`` samples (the direct path is at rir[0], so no delay) and restore each row's RMS over valid samples."""
    _check_wave(wave, "reverb")
    rir = rir.to(wave)
    rir = rir.expand(wave.shape[0], -1) if rir.dim() == 1 else rir
    x = _zero_padding(wave, lengths)
    wet = _zero_padding(fftconvolve_fast(x, rir)[:, :wave.shape[1]], lengths)
    before, after = rms(x, lengths), rms(wet, lengths)
    return wet * torch.where(after > 0, before / after.clamp(min=1e-30), torch.zeros_like(after))[:, None]


@lru_cache(maxsize=64)
def bandpass_fir(low_hz: float, high_hz: float, sample_rate: int = 16000, taps: int = 511) -> Tensor:
    """``[taps]`` linear-phase FIR pass band ``[low_hz, high_hz]`` (windowed sinc, Blackman window; transition
    about 5.5 * sample_rate / taps Hz wide); ``low_hz = 0`` is a low-pass. Cached."""
    nyquist = sample_rate / 2
    if not 0 <= low_hz < high_hz <= nyquist or taps % 2 == 0:
        raise ValueError(f"band_limit: need 0 <= low_hz < high_hz <= {nyquist} and odd taps, got low_hz={low_hz}, "
                         f"high_hz={high_hz}, taps={taps}")
    n = torch.arange(taps, dtype=torch.float64) - taps // 2

    def lowpass(cut: float) -> Tensor:
        return 2 * cut / sample_rate * torch.sinc(2 * cut / sample_rate * n)

    h = lowpass(min(high_hz, nyquist)) - (lowpass(low_hz) if low_hz > 0 else 0.0)
    return (h * torch.blackman_window(taps, periodic=False, dtype=torch.float64)).float()


def band_limit(wave: Tensor, low_hz: float = 300.0, high_hz: float = 3400.0, sample_rate: int = 16000,
               lengths: Tensor | None = None, taps: int = 511) -> Tensor:
    """Keep ``[low_hz, high_hz]`` (default: the 300-3400 Hz telephone band; ``low_hz = 0``: low-pass) with a
    zero-delay FIR (:func:`bandpass_fir`) applied by FFT convolution (torchaudio's fftconvolve)."""
    _check_wave(wave, "band_limit")
    h = bandpass_fir(float(low_hz), float(min(high_hz, sample_rate / 2)), sample_rate, taps).to(wave)
    full = fftconvolve_fast(_zero_padding(wave, lengths), h.expand(wave.shape[0], -1))
    return _zero_padding(full[:, taps // 2: taps // 2 + wave.shape[1]], lengths)
