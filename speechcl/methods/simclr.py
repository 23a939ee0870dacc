"""``objective=simclr``: SimCLR (Chen et al. 2020) on speech, with COLA's variant (Saeed et al. 2021).

Each utterance of a micro-batch gives two random segments of ``segment_seconds`` (crop positions from the
trainer's ``generator``, so resumed runs crop alike), each augmented independently (view streams 0 and 1 of
the ``augment:`` chain) → the shared encoder (no masking) → mean over valid frames → projection head →
NT-Xent (:mod:`speechcl.objectives.simclr`) with the other items' views as negatives.

COLA is ``similarity=bilinear head=cola proj_dim=512 negatives=positives`` (its released code: 960 ms windows,
a linear layer + LayerNorm + tanh, bilinear similarity without temperature, each anchor against the batch's
positives); its max pooling over time is not offered (mean pooling, as SimCLR's global average pool).

Batches and ranks:

- a micro-batch of one utterance has no negative: it contributes nothing (loss ``0 ×`` its projections, so
  every parameter still takes part in the backward, ``sample_size`` 0, statistics 0); the trainer's
  gradient normalisation divides by the global sample size (at least 1), so DDP and accumulation are
  unaffected. Set ``data.max_batch_size``/``data.max_tokens`` so that batches hold many items.
- negatives are those of the micro-batch, never gathered across ranks: N ranks equal one process with
  ``trainer.update_freq=N`` exactly. SimCLR's global-batch negatives (all ranks' projections in one
  softmax) would need a differentiable all-gather (``torch.distributed.nn.functional.all_gather``) and would
  then differ from gradient accumulation, whose micro-batches cannot see one another; not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechcl.methods.base import MLP, Method, MethodOutput, embedding_std, mean_pool
from speechcl.models.config import Wav2Vec2Config
from speechcl.objectives.simclr import SIMILARITIES, cosine_pairs, nt_xent, pair_contrast

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter

SAMPLE_RATE = 16000
CROPS = ("independent", "disjoint")
HEADS = ("mlp", "cola")
NEGATIVES = ("views", "positives")


@dataclass
class SimCLRConfig:
    """``objective=simclr`` settings (``conf/objective/simclr.yaml``)."""

    segment_seconds: float = 0.96  # COLA: 960 ms windows (SimCLR is image-only: its crop is the whole view)
    crop: str = "independent"  # COLA: both windows drawn independently (may overlap); "disjoint": never overlap
    similarity: str = "cosine"  # SimCLR: cosine / temperature; "bilinear": COLA's learned W, no temperature
    temperature: float = 0.1  # SimCLR τ (Table 5 / ImageNet 0.1; CIFAR-10 0.5, App. B.9); cosine only
    negatives: str = "views"  # SimCLR: 2N-2 per anchor (both views of the others); "positives": COLA's N-1
    head: str = "mlp"  # SimCLR: Linear-ReLU-Linear; "cola": Linear + LayerNorm + tanh (COLA's released code)
    proj_dim: int = 128  # SimCLR: 128 (COLA: 512)
    proj_hidden: int = 0  # SimCLR: hidden width = the encoder's output width (0 → encoder_embed_dim); mlp only
    collapse_after: int = 200  # updates before the collapse guard looks (ours)
    collapse_std: float = 0.1  # collapse: z_std below collapse_std / sqrt(proj_dim) (ours; spread rows ≈ 1/sqrt(d))
    stuck_after: int = 1000  # warn when the accuracy is still under twice its chance after this many updates (ours)

    def __post_init__(self) -> None:
        for key, allowed in (("crop", CROPS), ("similarity", SIMILARITIES), ("negatives", NEGATIVES),
                             ("head", HEADS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"objective.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if not self.segment_seconds > 0:
            raise ValueError(f"objective.segment_seconds must be > 0, got {self.segment_seconds}")
        if not self.temperature > 0:
            raise ValueError(f"objective.temperature must be > 0, got {self.temperature}")
        if self.proj_dim < 1 or self.proj_hidden < 0:
            raise ValueError(f"objective.proj_dim must be >= 1 and proj_hidden >= 0, got {self.proj_dim}, "
                             f"{self.proj_hidden}")


def draw_crops(lengths: Tensor, segment: int, generator: torch.Generator, disjoint: bool = False
               ) -> tuple[Tensor, Tensor]:
    """Two crop starts per item and the crop length.

    Args:
        lengths: ``[B]`` valid samples per item.
        segment: samples per crop; an item shorter than that is taken whole (crop length = its length).
        generator: draws 3 uniforms per item (on its device) whatever the mode.
        disjoint: the two crops never overlap where the item holds two (the slack before, between and after
            them comes from two sorted uniform draws; which crop is view 0 from the third); a shorter item
            gets its two crops at its two ends (the least overlap possible).
    Returns:
        ``starts [B, 2]`` int64 (view 0, view 1) and ``crop [B]`` int64, with ``0 <= start``,
        ``start + crop <= length``.
    """
    lengths = lengths.long()
    u = torch.rand((lengths.shape[0], 3), generator=generator, device=generator.device,
                   dtype=torch.float64).to(lengths.device)
    crop = lengths.clamp(max=segment)
    free = lengths - crop  # [B] choices of start - 1
    starts = (u[:, :2] * (free + 1)[:, None]).floor().long()  # u < 1: start <= free
    if disjoint:
        room = (lengths - 2 * crop).clamp(min=0)  # slack around two non-overlapping crops
        a = (u[:, :2] * (room + 1)[:, None]).floor().long()
        lo, hi = a.min(1).values, a.max(1).values + crop  # uniform pair of disjoint placements
        two = lengths >= 2 * crop
        lo = torch.where(two, lo, torch.zeros_like(lo))
        hi = torch.where(two, hi, free)
        swap = u[:, 2] < 0.5  # which of the two placements is view 0
        starts = torch.stack([torch.where(swap, hi, lo), torch.where(swap, lo, hi)], 1)
    return starts, crop


def take_crops(source: Tensor, starts: Tensor, crop: Tensor) -> tuple[Tensor, Tensor | None]:
    """Rows ``source[b, starts[b] : starts[b] + crop[b]]`` of ``source [B, S]`` as ``[B, max crop]`` (zeros
    after a shorter crop) and their padding mask (True at padding; None when every crop is full)."""
    width = int(crop.max()) if crop.numel() else 0
    offsets = torch.arange(width, device=source.device)
    valid = offsets[None, :] < crop[:, None].to(source.device)
    index = (starts[:, None].to(source.device) + offsets[None, :]).clamp(max=max(source.shape[1] - 1, 0))
    wave = source.gather(1, index) * valid
    return wave, (None if bool(valid.all()) else ~valid)


def _widen(wave: Tensor, mask: Tensor | None, width: int) -> tuple[Tensor, Tensor]:
    """``wave [B, S]`` (and its padding mask) right-padded to ``width`` samples; the mask is never None."""
    if mask is None:
        mask = torch.zeros_like(wave, dtype=torch.bool)
    extra = width - wave.shape[1]
    return F.pad(wave, (0, extra)), F.pad(mask, (0, extra), value=True)


class SimCLR(Method):
    """SimCLR / COLA on the shared encoder: two cropped, augmented views per utterance, pooled and projected,
    contrasted with NT-Xent against the micro-batch's other items (see the module docstring)."""

    name = "simclr"
    Config = SimCLRConfig
    uses_augment = True

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: SimCLRConfig) -> None:
        super().__init__(cfg, method_cfg)
        c, d = method_cfg, cfg.encoder_embed_dim
        self.projector: nn.Module
        if c.head == "mlp":
            self.projector = MLP(d, c.proj_hidden or d, c.proj_dim, layers=2)
        else:
            self.projector = nn.Sequential(nn.Linear(d, c.proj_dim), nn.LayerNorm(c.proj_dim), nn.Tanh())
        # COLA: W [d, d] drawn from N(0, 0.05²) (Keras' random_normal, its released code)
        self.bilinear = nn.Parameter(torch.randn(c.proj_dim, c.proj_dim) * 0.05) if c.similarity == "bilinear" else None
        self.segment = max(1, round(c.segment_seconds * SAMPLE_RATE))

    def views(self, batch: dict[str, Tensor], generator: torch.Generator, augment: Augmenter | None = None
              ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The two views of every item, stacked: ``wave [2B, S']`` (rows ``0..B-1`` view 0, ``B..2B-1`` view 1),
        its padding mask (None without padding) and the overlap of each item's two crops ``[B]`` (shared
        samples / crop length)."""
        source, padding = batch["source"], batch.get("padding_mask")
        b, s = source.shape
        lengths = (torch.full((b,), s, device=source.device) if padding is None
                   else (~padding).sum(1))
        starts, crop = draw_crops(lengths, self.segment, generator, self.method_cfg.crop == "disjoint")
        shared = (torch.minimum(starts[:, 0], starts[:, 1]) + crop - torch.maximum(starts[:, 0], starts[:, 1]))
        overlap = shared.clamp(min=0).double() / crop.clamp(min=1).double()
        waves, masks = [], []
        for stream in (0, 1):
            wave, mask = take_crops(source, starts[:, stream], crop)
            if augment is not None:
                wave, mask = augment(wave, mask, batch["id"], batch["epoch"], stream=stream)
            waves.append(wave)
            masks.append(mask)
        if masks[0] is None and masks[1] is None and waves[0].shape == waves[1].shape:
            return torch.cat(waves), None, overlap
        width = max(w.shape[1] for w in waves)
        (w0, m0), (w1, m1) = (_widen(w, m, width) for w, m in zip(waves, masks))
        return torch.cat([w0, w1]), torch.cat([m0, m1]), overlap

    def embed(self, wave: Tensor, padding_mask: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """``wave [M, S]`` → encoder (no mask) → mean over valid frames → projection ``[M, proj_dim]``."""
        lengths = (torch.full((wave.shape[0],), wave.shape[1], device=wave.device) if padding_mask is None
                   else (~padding_mask).sum(1))
        frames = self.encoder.output_lengths(lengths)
        if bool((frames < 1).any()):
            short = int(lengths[frames < 1].min())
            raise ValueError(f"objective=simclr: a view has {short} valid samples, fewer than one encoder frame "
                             "needs (400 with the standard convs): raise data.min_sample_size or "
                             "objective.segment_seconds")
        enc = self.encoder(wave, padding_mask, generator=generator)
        return self.projector(mean_pool(enc.x, enc.padding_mask))

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        wave, padding, overlap = self.views(batch, generator, augment)
        z = self.embed(wave, padding, generator)
        n = batch["source"].shape[0]
        if n < 2:  # no negative: this micro-batch adds nothing, but every parameter is in the graph
            return MethodOutput(loss=z.sum() * 0.0, sample_size=0, stats=_ZERO_STATS.copy())
        c = self.method_cfg
        za, zb = z.float()[:n], z.float()[n:]
        weight = None if self.bilinear is None else self.bilinear.float()
        with torch.autocast(device_type=z.device.type, enabled=False):  # logits in float32
            loss_fn = nt_xent if c.negatives == "views" else pair_contrast
            out = loss_fn(za, zb, c.similarity, c.temperature, weight)
        positive, negative = cosine_pairs(za, zb, all_views=c.negatives == "views")
        stats = {
            "loss_sum": float(out.loss.detach()), "sample_size": float(out.count), "correct": float(out.correct),
            "chance_sum": out.count / out.candidates, "chance_loss_sum": out.count * math.log(out.candidates),
            "pos_sim_sum": float(positive.sum()), "pos_count": float(positive.numel()),
            "neg_sim_sum": float(negative.sum()), "neg_count": float(negative.numel()),
            "z_std_sum": embedding_std(z), "batches": 1.0, "items": float(n), "overlap_sum": float(overlap.sum()),
        }
        return MethodOutput(loss=out.loss, sample_size=out.count, stats=stats)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """``loss`` and ``chance_loss`` in bits per anchor; ``accuracy`` (positive ranked first among the
        candidates) and its ``chance`` (1/(2N−1), or 1/N for COLA's negatives, averaged over anchors);
        ``pos_sim``/``neg_sim`` (cosine of the projections), ``z_std`` (per micro-batch, averaged),
        ``view_overlap`` (shared share of an item's two crops)."""
        def ratio(num: str, den: str, scale: float = 1.0) -> float:
            d = sums.get(den, 0.0)
            return sums.get(num, 0.0) / d * scale if d > 0 else float("nan")

        return {
            "loss": ratio("loss_sum", "sample_size", 1 / math.log(2)),
            "chance_loss": ratio("chance_loss_sum", "sample_size", 1 / math.log(2)),
            "accuracy": ratio("correct", "sample_size"), "chance": ratio("chance_sum", "sample_size"),
            "pos_sim": ratio("pos_sim_sum", "pos_count"), "neg_sim": ratio("neg_sim_sum", "neg_count"),
            "z_std": ratio("z_std_sum", "batches"), "view_overlap": ratio("overlap_sum", "items"),
            "anchors": sums.get("sample_size", 0.0),
        }

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        c = self.method_cfg
        floor = c.collapse_std / math.sqrt(c.proj_dim)
        z_std = summary.get("z_std", float("nan"))
        if num_updates >= c.collapse_after and math.isfinite(z_std) and z_std < floor:
            return (f"the projections collapsed: z_std {z_std:.4g} < {floor:.4g} ({c.collapse_std}/sqrt({c.proj_dim})), "
                    f"pos_sim {summary.get('pos_sim', float('nan')):.3f}, neg_sim {summary.get('neg_sim', float('nan')):.3f};"
                    " lower optim.lr, raise objective.temperature or use more items per batch")
        return None

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        warnings = []
        accuracy, chance = summary.get("accuracy", float("nan")), summary.get("chance", float("nan"))
        if num_updates >= self.method_cfg.stuck_after and accuracy < 2 * chance:
            warnings.append(f"simclr accuracy {accuracy:.3f} is still near chance ({chance:.3f}) after {num_updates} "
                            "updates: lower optim.lr, or put more items in a batch (data.max_tokens)")
        if summary.get("view_overlap", 0.0) > 0.9:
            warnings.append(f"the two crops of an item share {summary['view_overlap']:.0%} of their samples: the "
                            "utterances are about as short as objective.segment_seconds, so the views differ by "
                            "augmentation only; shorten the segments or lengthen data.max_sample_size")
        return warnings


_ZERO_STATS = dict.fromkeys(
    ("loss_sum", "sample_size", "correct", "chance_sum", "chance_loss_sum", "pos_sim_sum", "pos_count", "neg_sim_sum",
     "neg_count", "z_std_sum", "batches", "items", "overlap_sum"), 0.0)
