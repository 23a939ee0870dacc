"""BEST-RQ's targets and loss (Chiu et al. 2022, "Self-supervised learning with random-projection quantizer
for speech recognition"): normalised log-mel frames, stacked to the encoder's frame rate, quantized by a
frozen random projection and a frozen random codebook; the model predicts the code of each masked frame.

Pure functions of tensors (the frozen matrices are passed in; :class:`speechcl.methods.bestrq.BestRQ` holds
them as buffers):

- :func:`log_mel`: 80 log-mel energies per 25 ms window every 10 ms (``torchaudio.transforms.MelSpectrogram``,
  no centring: mel frame ``j`` sees samples ``[160 j, 160 j + 400)``);
- :func:`normalize_frames`: each mel dimension to mean 0 / variance 1 over the utterance's valid frames (the
  paper normalises each feature and calls it critical against code collapse; it does not say with which
  statistics: per-utterance statistics need no pass over the corpus and follow the channel of each file);
- :func:`stack_frames`: ``stack`` consecutive mel frames per encoder frame (``stack = hop / 160``: 2 for the
  20 ms wav2vec 2.0 hop), with exactly the encoder's frame count (padding by the last valid mel frame, or
  dropping the mel frames past the last encoder frame);
- :func:`random_projection_codes`: ``argmin_i ‖ norm(c_i) − norm(A x) ‖`` per codebook (paper Eq. 1), taken as
  the largest cosine (the same argmin for unit vectors);
- :func:`bestrq_loss`: cross-entropy of the codes at masked frames (summed over frames, averaged over codebooks);
- :func:`code_perplexity`: ``exp`` of the entropy of the empirical code distribution (code usage).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

SAMPLE_RATE = 16000
MEL_WINDOW = 400  # 25 ms
MEL_HOP = 160  # 10 ms
LOG_OFFSET = 1e-6  # log(mel + offset): a finite floor for digital silence
NORM_EPS = 1e-5  # variance floor of normalize_frames (a constant dimension becomes 0)


@functools.lru_cache(maxsize=8)
def _mel_transform(n_mels: int, device: torch.device):  # noqa: ANN202 (torchaudio imported lazily)
    from torchaudio.transforms import MelSpectrogram

    return MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=MEL_WINDOW, win_length=MEL_WINDOW, hop_length=MEL_HOP,
                          n_mels=n_mels, center=False, power=2.0).to(device)


def mel_frames(lengths: Tensor) -> Tensor:
    """Mel frames of ``lengths [B]`` samples: ``floor((L − 400) / 160) + 1``, at least 0."""
    return (torch.div(lengths.to(torch.int64) - MEL_WINDOW, MEL_HOP, rounding_mode="floor") + 1).clamp(min=0)


def log_mel(wave: Tensor, lengths: Tensor | None = None, n_mels: int = 80) -> tuple[Tensor, Tensor]:
    """Log-mel energies of ``wave [B, S]`` (16 kHz, float32) -> ``(feats [B, M, n_mels], frames [B])``.

    ``M = floor((S − 400) / 160) + 1``; row ``b`` has ``frames[b]`` valid frames (those inside its ``lengths[b]``
    valid samples; ``lengths`` None: all ``S``)."""
    if wave.dim() != 2:
        raise ValueError(f"bestrq: expected a waveform [batch, samples], got {tuple(wave.shape)}")
    if wave.shape[1] < MEL_WINDOW:
        raise ValueError(f"bestrq: {wave.shape[1]} samples are shorter than one 25 ms mel window ({MEL_WINDOW})")
    if lengths is None:
        lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.int64, device=wave.device)
    mel = _mel_transform(n_mels, wave.device)(wave.float())  # [B, n_mels, M]
    return (mel + LOG_OFFSET).log().transpose(1, 2), mel_frames(lengths)


def valid_frames(lengths: Tensor, num_frames: int) -> Tensor:
    """``[B, num_frames]`` bool, True at the first ``lengths[b]`` frames of row ``b``."""
    return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]


def normalize_frames(feats: Tensor, lengths: Tensor) -> Tensor:
    """Each dimension of ``feats [B, M, F]`` to mean 0 and variance 1 over the first ``lengths[b]`` frames of its
    row (population variance, floored at 1e-5; frames past ``lengths`` are transformed alike but unused)."""
    keep = valid_frames(lengths, feats.shape[1]).to(feats.dtype)[..., None]  # [B, M, 1]
    count = keep.sum(1, keepdim=True).clamp(min=1.0)
    mean = (feats * keep).sum(1, keepdim=True) / count
    var = ((feats - mean).square() * keep).sum(1, keepdim=True) / count
    return (feats - mean) / (var + NORM_EPS).sqrt()


def stack_frames(feats: Tensor, lengths: Tensor, num_frames: int, stack: int) -> Tensor:
    """``stack`` consecutive frames of ``feats [B, M, F]`` per output frame -> ``[B, num_frames, stack · F]``.

    Output frame ``t`` holds input frames ``stack·t … stack·t + stack − 1``; an index past row ``b``'s last valid
    frame (``lengths[b] − 1``) takes that last frame (for 2 × 10 ms per 20 ms frame: one mel frame fewer than
    ``2 T`` for about half the lengths), and valid frames past ``stack · num_frames`` are dropped."""
    if stack < 1:
        raise ValueError(f"bestrq: stack must be >= 1, got {stack}")
    b, m, f = feats.shape
    j = torch.arange(num_frames * stack, device=feats.device)[None, :]  # [1, T·stack]
    index = torch.minimum(j, (lengths.to(feats.device)[:, None] - 1).clamp(min=0)).clamp(max=max(m - 1, 0))
    out = feats.gather(1, index[..., None].expand(b, -1, f))  # [B, T·stack, F]
    return out.reshape(b, num_frames, stack * f)


def random_projection_codes(x: Tensor, projection: Tensor, codebook: Tensor) -> Tensor:
    """Nearest codes of ``x [N, d_in]``: ``argmax_v cos(A_g x, c_{g,v})`` per codebook ``g`` -> ``[N, G]`` int64.

    Args:
        x: ``[N, d_in]`` (normalised, stacked) features.
        projection: ``[G, d_in, d]`` frozen random matrices ``A_g`` (``z = x A_g``).
        codebook: ``[G, V, d]`` frozen random codes (normalised here; a zero ``A x`` gets code 0).
    """
    if projection.dim() != 3 or codebook.dim() != 3 or projection.shape[0] != codebook.shape[0] \
            or projection.shape[2] != codebook.shape[2] or x.dim() != 2 or x.shape[1] != projection.shape[1]:
        raise ValueError(f"bestrq: need x [N, d_in], projection [G, d_in, d], codebook [G, V, d]; got "
                         f"{tuple(x.shape)}, {tuple(projection.shape)}, {tuple(codebook.shape)}")
    z = F.normalize(torch.einsum("nk,gkd->gnd", x.float(), projection.float()), dim=-1)  # [G, N, d]
    scores = torch.bmm(z, F.normalize(codebook.float(), dim=-1).transpose(1, 2))  # [G, N, V]
    return scores.argmax(-1).T.contiguous()


@dataclass
class BestRQLoss:
    """Masked prediction over ``N`` masked frames and ``G`` codebooks.

    Attributes:
        loss: cross-entropy summed over the frames, averaged over the codebooks (nats; scalar with gradient).
        predicted: ``[N, G]`` int64 argmax codes of the logits.
        correct: predictions equal to their target, over all frames and codebooks.
    """

    loss: Tensor
    predicted: Tensor
    correct: int


def bestrq_loss(logits: Tensor, targets: Tensor) -> BestRQLoss:
    """``−(1/G) Σ_n Σ_g log softmax(logits[n, g])[targets[n, g]]`` for ``logits [N, G, V]`` and ``targets [N, G]``
    (the masked frames only: the caller selects them). ``N = 0`` gives a zero loss (still attached)."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"bestrq: need logits [N, G, V] and targets [N, G], got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    n, g, v = logits.shape
    flat = logits.float().reshape(n * g, v)
    loss = F.cross_entropy(flat, targets.reshape(-1), reduction="sum") / g
    predicted = logits.detach().argmax(-1)
    return BestRQLoss(loss=loss, predicted=predicted, correct=int((predicted == targets).sum()))


def code_perplexity(codes: Tensor, num_codes: int) -> float:
    """``exp(−Σ_v p_v log p_v)`` of the codes' empirical distribution (``codes [N]`` in ``[0, num_codes)``): 1 when
    one code is used, ``num_codes`` when all are used equally; NaN for no codes."""
    if codes.numel() == 0:
        return float("nan")
    p = torch.bincount(codes.reshape(-1), minlength=num_codes).double() / codes.numel()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
