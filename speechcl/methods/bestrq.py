"""BEST-RQ (Chiu et al. 2022, "Self-supervised learning with random-projection quantizer for speech
recognition") on the shared speech encoder: ``objective=bestrq``.

Targets (no gradient, float32 outside autocast; :mod:`speechcl.objectives.bestrq`): 80 log-mel energies every
10 ms of the *unmasked* waveform, each dimension normalised over the utterance's valid frames
(``feature_norm: utterance``), ``hop / 160`` consecutive mel frames stacked per encoder frame (2 per 20 ms
frame: 160 dims) with exactly the encoder's frame count, projected by a frozen Xavier-initialised matrix
``A [160, 16]``, L2-normalised, and assigned the nearest (largest-cosine) entry of a frozen codebook of 8192
standard-normal, L2-normalised vectors. ``num_codebooks > 1`` repeats this with independent ``A`` and codebooks
and one softmax per codebook (the paper's multi-softmax ablation).

Student: the encoder sees the waveform with a span mask on its projected conv features (the learned
``mask_emb`` of :class:`~speechcl.models.wav2vec2.Wav2Vec2Encoder`; the paper instead replaces masked *input*
frames with N(0, 0.1) noise); a linear softmax layer over the codebook on the transformer output predicts the
code of each masked frame; cross-entropy on masked frames only.

Masking (:func:`~speechcl.models.masking.compute_span_mask`, fairseq's semantics): ``objective.mask_prob`` is
the paper's probability that a frame starts a span (0.01) and ``mask_length`` its length in encoder frames
(400 ms = 20 frames). fairseq draws ``n = floor(mask_prob_fs · L / span + u)`` spans, so the encoder's
``mask_prob_fs = mask_prob · mask_length`` (0.2) gives ``E[n] = 0.01 · L``; spans may overlap, about
``1 − 0.99^20 ≈ 18%`` of frames are masked. ``mask_min_masks`` spans at least per utterance (speechcl's: a
1 s utterance would otherwise often have none). The masked counts are not equalised across a batch.

The frozen quantizer is a pair of buffers (``projection [G, d_in, d]``, ``codebook [G, V, d]``), drawn from a
generator seeded with ``quantizer_seed`` (independent of the global RNG) and saved in ``model.safetensors``:
a resumed or reloaded model quantizes alike. They are not parameters: no optimizer step or weight decay
reaches them.

Logged (:meth:`BestRQ.summarize`): ``loss`` (bits per masked frame; chance ``log2 V``), ``accuracy`` on masked
frames against ``chance`` (1/V) and ``majority`` (the share of the batch's most frequent masked target: what the
best constant guess for that batch would score, an upper bound of any fixed code's accuracy), ``code_perplexity`` (target code usage over valid frames, per batch) and
``pred_perplexity`` (of the argmax predictions at masked frames). Per-batch perplexities are bounded by the
frames of a batch. Guards (:meth:`BestRQ.collapse`): a target perplexity below ``collapse_perplexity`` stops the
run at once (constant features: silence, a constant signal); a prediction perplexity below it stops the run
after ``collapse_after`` updates (the classifier still answers one code). Early on the classifier does answer
one code, the most frequent (silence) one: accuracy then equals that code's share, near ``majority``; on the
synthetic CPU corpus this unigram stage lasted all of 80 updates of the small model and 600 of the tiny one
(V = 64 … 8192), hence the late default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from speechcl.methods.base import Method, MethodOutput
from speechcl.methods.hubert import stuck_threshold
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.feature_encoder import conv_geometry
from speechcl.models.masking import compute_span_mask
from speechcl.objectives.bestrq import (
    MEL_HOP,
    BestRQLoss,
    bestrq_loss,
    code_perplexity,
    log_mel,
    normalize_frames,
    random_projection_codes,
    stack_frames,
    valid_frames,
)

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter

STUCK_AFTER = 1000  # updates after which accuracy near the best constant guess is worth a warning


@dataclass
class BestRQConfig:
    """BEST-RQ's settings (``objective:`` of ``objective=bestrq``); defaults: Chiu et al. 2022."""

    codebook_size: int = 8192  # V (paper: 8192)
    code_dim: int = 16  # d of the projection and the codes (paper: 16)
    num_codebooks: int = 1  # G; >1: independent quantizers, one softmax each (paper's multi-softmax ablation)
    n_mels: int = 80  # log-mel dimensions (paper: 80)
    feature_norm: str = "utterance"  # utterance: mean/variance per utterance over valid frames | none
    mask_prob: float = 0.01  # probability that a frame starts a masked span (paper: 0.01)
    mask_length: int = 20  # span in encoder frames (paper: 400 ms = 20 frames of 20 ms)
    mask_min_masks: int = 1  # spans per utterance at least (speechcl's; the paper has none)
    quantizer_seed: int = 0  # seeds the frozen projection and codebook (independent of trainer.seed)
    # stop when the target (at once) or predicted (after collapse_after) code perplexity is below this
    collapse_perplexity: float = 2.0
    # updates before the prediction-collapse guard is armed (speechcl's). The unigram stage (every masked frame gets
    # the most frequent code, pred_perplexity ~1) is normal early on: it lasted the whole of 600-update CPU runs
    collapse_after: int = 2000

    def __post_init__(self) -> None:
        for key in ("codebook_size", "code_dim", "num_codebooks", "n_mels", "mask_length"):
            if type(getattr(self, key)) is not int or getattr(self, key) < 1:
                raise ValueError(f"objective.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.feature_norm not in ("utterance", "none"):
            raise ValueError(f"objective.feature_norm must be utterance or none, got {self.feature_norm!r}")
        if not 0.0 < self.mask_prob * self.mask_length <= 1.0:
            raise ValueError(f"objective.mask_prob × objective.mask_length must lie in (0, 1] (the encoder's span "
                             f"mask_prob), got {self.mask_prob} × {self.mask_length}")
        if self.mask_min_masks < 0 or self.collapse_after < 0:
            raise ValueError(f"objective.mask_min_masks and objective.collapse_after must be >= 0, got "
                             f"{self.mask_min_masks} and {self.collapse_after}")


@dataclass
class Prediction:
    """One forward pass (``B`` rows, ``T`` frames, ``N`` masked frames, ``G`` codebooks, ``V`` codes)."""

    logits: Tensor  # [N, G, V] at the masked frames (row-major over batch, time)
    codes: Tensor  # [B, T, G] int64 target codes of every frame
    mask: Tensor  # [B, T] bool, True at masked frames
    valid: Tensor  # [B, T] bool, True at unpadded frames


def frozen_quantizer(in_dim: int, cfg: BestRQConfig) -> tuple[Tensor, Tensor]:
    """``(projection [G, in_dim, d], codebook [G, V, d])`` drawn from a generator seeded with ``quantizer_seed``:
    each ``A_g`` Xavier-uniform (paper: Xavier initialisation), each code standard normal, L2-normalised."""
    g = torch.Generator().manual_seed(cfg.quantizer_seed)
    projection = torch.empty(cfg.num_codebooks, in_dim, cfg.code_dim)
    for a in projection:
        nn.init.xavier_uniform_(a, generator=g)
    codebook = torch.randn(cfg.num_codebooks, cfg.codebook_size, cfg.code_dim, generator=g)
    return projection, nn.functional.normalize(codebook, dim=-1)


class BestRQ(Method):
    """BEST-RQ (see the module docstring): the encoder, a softmax classifier, a frozen random quantizer."""

    name = "bestrq"
    Config = BestRQConfig

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: BestRQConfig) -> None:
        super().__init__(cfg, method_cfg)
        c = method_cfg
        hop, _ = conv_geometry(cfg.conv_layers)
        if hop % MEL_HOP:
            raise ValueError(f"bestrq stacks {MEL_HOP}-sample mel frames per encoder frame: the encoder's hop "
                             f"({hop} samples, the product of the conv strides) must be a multiple of {MEL_HOP}")
        self.stack = hop // MEL_HOP
        projection, codebook = frozen_quantizer(self.stack * c.n_mels, c)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", codebook)
        self.classifier = nn.Linear(cfg.encoder_embed_dim, c.num_codebooks * c.codebook_size)

    @torch.no_grad()
    def targets(self, wave: Tensor, lengths: Tensor, num_frames: int) -> Tensor:
        """Target codes ``[B, num_frames, G]`` of ``wave [B, S]`` with ``lengths [B]`` valid samples."""
        c = self.method_cfg
        with torch.autocast(device_type=wave.device.type, enabled=False):
            feats, mel_lengths = log_mel(wave.float(), lengths, c.n_mels)
            if c.feature_norm == "utterance":
                feats = normalize_frames(feats, mel_lengths)
            stacked = stack_frames(feats, mel_lengths, num_frames, self.stack)  # [B, T, stack · n_mels]
            codes = random_projection_codes(stacked.flatten(0, 1), self.projection, self.codebook)
        return codes.view(wave.shape[0], num_frames, c.num_codebooks)

    def draw_mask(self, frame_lengths: Tensor, num_frames: int, generator: torch.Generator | None) -> Tensor:
        """The span mask ``[B, num_frames]`` (True = masked) of rows with ``frame_lengths [B]`` valid frames: spans
        start with probability ``mask_prob`` per frame (the encoder's ``mask_prob · mask_length``, see the module
        docstring), at least ``mask_min_masks`` per row."""
        c = self.method_cfg
        return compute_span_mask(
            (frame_lengths.shape[0], num_frames), c.mask_prob * c.mask_length, c.mask_length, lengths=frame_lengths,
            min_masks=c.mask_min_masks, require_same_masks=False, generator=generator, device=frame_lengths.device)

    def predict(self, wave: Tensor, padding_mask: Tensor | None, generator: torch.Generator | None,
                mask_indices: Tensor | None = None) -> Prediction:
        """Logits at the masked frames of ``wave [B, S]`` (``padding_mask [B, S]`` True at padding) and the targets;
        the span mask is drawn from ``generator`` unless ``mask_indices [B, T]`` is given."""
        c = self.method_cfg
        b, s = wave.shape
        lengths = (torch.full((b,), s, dtype=torch.int64, device=wave.device) if padding_mask is None
                   else (~padding_mask).sum(1))
        t = int(self.encoder.output_lengths(torch.tensor([s]))[0])
        frame_lengths = self.encoder.output_lengths(lengths)
        if mask_indices is None:
            mask_indices = self.draw_mask(frame_lengths, t, generator)
        enc = self.encoder(wave, padding_mask, mask_indices=mask_indices, generator=generator)
        codes = self.targets(wave, lengths, t)
        x = enc.x[mask_indices]  # [N, D]
        logits = self.classifier(x).view(x.shape[0], c.num_codebooks, c.codebook_size)
        return Prediction(logits=logits, codes=codes, mask=mask_indices, valid=valid_frames(frame_lengths, t))

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        padding = batch.get("padding_mask")
        if padding is not None and not bool(padding.any()):
            padding = None
        out = self.predict(batch["source"], padding, generator)
        loss = bestrq_loss(out.logits, out.codes[out.mask])
        return MethodOutput(loss=loss.loss, sample_size=int(out.mask.sum()), stats=self._stats(out, loss))

    @torch.no_grad()
    def _stats(self, out: Prediction, loss: BestRQLoss) -> dict[str, float]:
        v, groups = self.method_cfg.codebook_size, self.method_cfg.num_codebooks
        masked_codes = out.codes[out.mask]  # [N, G]
        valid_codes = out.codes[out.valid]  # [F, G]
        n = masked_codes.shape[0]
        majority = sum(int(torch.bincount(masked_codes[:, g], minlength=v).max()) for g in range(groups)) if n else 0
        code_ppl = [code_perplexity(valid_codes[:, g], v) for g in range(groups)]
        pred_ppl = [code_perplexity(loss.predicted[:, g], v) for g in range(groups)]
        measured = n > 0
        return {
            "loss_sum": float(loss.loss.detach()), "masked": float(n), "frames": float(valid_codes.shape[0]),
            "correct": float(loss.correct), "majority_sum": float(majority),
            "code_ppl_sum": sum(code_ppl) / groups if measured else 0.0,
            "pred_ppl_sum": sum(pred_ppl) / groups if measured else 0.0,
            "ppl_batches": 1.0 if measured else 0.0,
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """``loss`` in bits per masked frame (averaged over codebooks), ``accuracy`` on masked frames, its
        ``chance`` (1/V) and ``majority`` (the batch's most frequent target), ``code_perplexity`` /
        ``pred_perplexity`` (targets over valid frames / argmax predictions at masked frames, per batch),
        ``mask_share`` (masked / valid frames) and the ``masked`` frames scored."""
        groups = self.method_cfg.num_codebooks
        n = max(sums.get("masked", 0.0), 1.0)
        batches = sums.get("ppl_batches", 0.0)
        return {
            "loss": sums.get("loss_sum", 0.0) / n / math.log(2),
            "accuracy": sums.get("correct", 0.0) / (n * groups),
            "chance": 1.0 / self.method_cfg.codebook_size,
            "majority": sums.get("majority_sum", 0.0) / (n * groups),
            "code_perplexity": sums.get("code_ppl_sum", 0.0) / batches if batches else float("nan"),
            "pred_perplexity": sums.get("pred_ppl_sum", 0.0) / batches if batches else float("nan"),
            "mask_share": sums.get("masked", 0.0) / max(sums.get("frames", 0.0), 1.0),
            "masked": sums.get("masked", 0.0),
        }

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        best_guess = max(summary["chance"], summary["majority"])
        if num_updates >= STUCK_AFTER and summary["accuracy"] < stuck_threshold(best_guess):
            return [f"{self.name}: masked accuracy {summary['accuracy']:.3f} is still near the best constant guess "
                    f"({best_guess:.3f}) after {num_updates} updates: lower optim.lr, raise data.max_tokens, "
                    "or use a smaller objective.codebook_size"]
        return []

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        c = self.method_cfg
        code_ppl, pred_ppl = summary.get("code_perplexity", math.nan), summary.get("pred_perplexity", math.nan)
        if code_ppl < c.collapse_perplexity:  # NaN (nothing measured) never fires
            return (f"the target codes are degenerate: perplexity {code_ppl:.2f} of {c.codebook_size} codes (below "
                    f"objective.collapse_perplexity={c.collapse_perplexity}), so the normalised log-mel frames are "
                    "(nearly) constant: check the audio (silence, a constant or clipped signal) and "
                    f"objective.feature_norm={c.feature_norm!r}")
        if num_updates >= c.collapse_after and pred_ppl < c.collapse_perplexity:
            return (f"the predictions have collapsed: perplexity {pred_ppl:.2f} of the predicted codes (below "
                    f"objective.collapse_perplexity={c.collapse_perplexity}) while the targets use {code_ppl:.1f}: "
                    "the classifier answers one code; lower optim.lr or raise data.max_tokens")
        return None
