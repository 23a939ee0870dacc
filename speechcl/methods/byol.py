"""BYOL (Grill et al. 2020) and BYOL for audio (BYOL-A, Niizumi et al. 2021) on the shared encoder: ``objective=byol``.

Per utterance two views of about one second (crops from :func:`~speechcl.methods.simclr.draw_crops` with the
trainer's generator; ``crop: same`` — BYOL-A — augments one segment twice, ``independent``/``disjoint`` take two
segments), each augmented as its own stream (0, 1) of the ``augment`` chain. The online network is the encoder
→ mean over valid frames → projector → predictor; the target network (``target_encoder``, ``target_projector``:
:func:`~speechcl.methods.base.make_teacher` copies, no gradient; the encoder in eval mode, no dropout) is the
encoder → mean → projector,
moved after every optimizer step by :func:`~speechcl.methods.base.ema_update_` with decay τ:
``constant`` (BYOL-A: 0.99) or ``cosine`` from τ_base towards 1 (BYOL: 0.996 → 1 over training), see
:func:`~speechcl.methods.base.ema_decay`. The loss is :func:`~speechcl.objectives.byol.symmetric_byol_loss`:
``2 − 2·cos`` of each view's prediction and the other view's target projection, no negatives.

The heads are the papers' MLPs (hidden 4096, output 256) with BatchNorm over the items of a micro-batch
(``head_norm: batch``; each view its own batch, as BYOL; the target projector normalises with its batch too,
its running statistics copied from the online one). BatchNorm is what keeps BYOL from collapsing here: with
``head_norm: layer`` (LayerNorm, a per-item norm) the small model on a synthetic corpus collapsed within 100
updates (``z_std`` 0.017 → 0.0008 at update 80), with BatchNorm it did not (``z_std`` ≈ 0.05, ``cosine`` ≈ 0.62).
A micro-batch of one item is normalised with the running statistics. Nothing else crosses items, micro-batches
or ranks: N ranks equal one process with ``trainer.update_freq = N`` up to BatchNorm's running statistics (used
in evaluation only), which DDP takes from rank 0.

Logged: ``loss`` (per item, ``L + L̃`` in ``[0, 8]``), ``cosine`` (online prediction vs target projection),
``z_std`` / ``target_std`` (:func:`~speechcl.methods.base.embedding_std` of the online and target projections
across the items of a micro-batch: about ``1/√dim`` when spread, 0 when every utterance maps to one point),
``repr_std`` (the same for the encoder's pooled output, the representation ``extract`` gives; with BatchNorm heads
the projections' spread is partly the norm's doing, this one's is not) and ``ema_decay``. Collapse — the failure
BYOL is known for — stops the run: any of the three stds below ``collapse_std/√dim`` after ``collapse_after``
updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from speechcl.methods.base import (
    MLP,
    Method,
    MethodOutput,
    ema_decay,
    ema_update_,
    embedding_std,
    make_teacher,
    mean_pool,
)
from speechcl.methods.simclr import draw_crops, take_crops
from speechcl.models.config import Wav2Vec2Config
from speechcl.objectives.byol import byol_cosine, symmetric_byol_loss

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter

SAMPLE_RATE = 16000
CROPS = ("same", "independent", "disjoint")
SCHEDULES = ("constant", "linear", "cosine")
NORMS = ("batch", "layer", "none")


@dataclass
class BYOLConfig:
    """``objective=byol`` settings (``conf/objective/byol.yaml``)."""

    segment_seconds: float = 1.0  # BYOL-A: 1 s segments (its unit_sec)
    crop: str = "same"  # BYOL-A: both views augment one segment; independent / disjoint: two segments (COLA-like)
    proj_dim: int = 256  # BYOL and BYOL-A: projection (and prediction) size 256
    proj_hidden: int = 4096  # BYOL and BYOL-A: MLP hidden width 4096 (projector and predictor)
    head_norm: str = "batch"  # the norm inside both MLPs: batch (the papers' BatchNorm) | layer | none
    ema_decay: float = 0.99  # τ (BYOL-A: 0.99 constant; BYOL: τ_base 0.996)
    ema_end_decay: float = 1.0  # where a linear/cosine schedule ends (BYOL: 1)
    ema_schedule: str = "constant"  # constant (BYOL-A) | cosine (BYOL: 1 − (1 − τ_base)(cos(πk/K) + 1)/2) | linear
    ema_updates: int = 0  # K, the schedule's length in updates (BYOL: all of training); needed unless constant
    collapse_std: float = 0.05  # stop when z_std or target_std < collapse_std / sqrt(proj_dim) (ours)
    collapse_after: int = 100  # ... once this many updates are done (ours)

    def __post_init__(self) -> None:
        if self.head_norm not in NORMS:
            raise ValueError(f"objective.head_norm must be one of {NORMS}, got {self.head_norm!r}")
        if self.crop not in CROPS:
            raise ValueError(f"objective.crop must be one of {CROPS}, got {self.crop!r}")
        if self.ema_schedule not in SCHEDULES:
            raise ValueError(f"objective.ema_schedule must be one of {SCHEDULES}, got {self.ema_schedule!r}")
        if self.ema_schedule != "constant" and self.ema_updates < 1:
            raise ValueError(f"objective.ema_schedule={self.ema_schedule} needs objective.ema_updates >= 1 (the "
                             f"schedule's length, e.g. trainer.max_update), got {self.ema_updates}")
        for key in ("ema_decay", "ema_end_decay"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"objective.{key} must be in [0, 1], got {getattr(self, key)}")
        if not self.segment_seconds > 0:
            raise ValueError(f"objective.segment_seconds must be > 0, got {self.segment_seconds}")
        if self.proj_dim < 1 or self.proj_hidden < 1:
            raise ValueError(f"objective.proj_dim and objective.proj_hidden must be >= 1, got {self.proj_dim}, "
                             f"{self.proj_hidden}")


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over the items of a micro-batch (``[N, C]``); a micro-batch of one item, which has no batch
    statistic, is normalised with the running statistics instead (and leaves them unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            training=False, eps=self.eps)
        return super().forward(x)


def head(in_dim: int, hidden_dim: int, out_dim: int, norm: str) -> nn.Module:
    """BYOL's projector / predictor: ``Linear → norm → ReLU → Linear`` (``[N, in_dim] -> [N, out_dim]``), the norm
    ``batch`` (:class:`BatchNorm`, the papers'), ``layer`` (:class:`~speechcl.methods.base.MLP` with LayerNorm,
    per item) or ``none``."""
    if norm == "batch":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), BatchNorm(hidden_dim), nn.ReLU(),
                             nn.Linear(hidden_dim, out_dim))
    return MLP(in_dim, hidden_dim, out_dim, layers=2, norm=norm == "layer")


class BYOL(Method):
    """BYOL / BYOL-A on the shared encoder (see the module docstring): online encoder + projector + predictor,
    EMA target encoder + projector, two views, the symmetric ``2 − 2·cos`` loss."""

    name = "byol"
    Config = BYOLConfig
    uses_augment = True

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: BYOLConfig) -> None:
        super().__init__(cfg, method_cfg)
        c, d = method_cfg, cfg.encoder_embed_dim
        self.projector = head(d, c.proj_hidden, c.proj_dim, c.head_norm)
        self.predictor = head(c.proj_dim, c.proj_hidden, c.proj_dim, c.head_norm)
        self.target_encoder = make_teacher(self.encoder)
        self.target_projector = make_teacher(self.projector)
        self.target_encoder.eval()  # no dropout in the targets (see train())
        self.segment = max(1, round(c.segment_seconds * SAMPLE_RATE))
        self.decay = self.decay_at(0)
        self._unaugmented_same_crop = False
        self._warned = False

    def train(self, mode: bool = True) -> BYOL:
        """The target encoder stays in eval mode (no dropout); the target projector follows ``mode``, so that with
        BatchNorm it normalises with its micro-batch's statistics in training, as BYOL's target network does (its
        running statistics are the online projector's, copied by every EMA update)."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def decay_at(self, update: int) -> float:
        """The target network's EMA decay τ for the (0-based) update ``update``."""
        c = self.method_cfg
        return ema_decay(c.ema_decay, c.ema_end_decay, update, c.ema_updates, c.ema_schedule)

    # --- views and embeddings ------------------------------------------------------------------------------

    def views(self, batch: dict[str, Tensor], generator: torch.Generator, augment: Augmenter | None = None
              ) -> list[tuple[Tensor, Tensor | None]]:
        """The two views ``(wave [B, S'], padding_mask [B, S'] or None)`` of every item: crops of
        ``segment_seconds`` (one shared crop with ``crop: same``), each augmented as stream 0 / 1."""
        source, padding = batch["source"], batch.get("padding_mask")
        b, s = source.shape
        lengths = torch.full((b,), s, device=source.device) if padding is None else (~padding).sum(1)
        starts, crop = draw_crops(lengths, self.segment, generator, self.method_cfg.crop == "disjoint")
        if self.method_cfg.crop == "same":
            starts = starts[:, :1].expand(-1, 2)
        out = []
        for stream in (0, 1):
            wave, mask = take_crops(source, starts[:, stream], crop)
            if augment is not None:
                wave, mask = augment(wave, mask, batch["id"], batch["epoch"], stream=stream)
            out.append((wave, mask))
        return out

    def _pooled(self, encoder: nn.Module, wave: Tensor, mask: Tensor | None,
                generator: torch.Generator | None) -> Tensor:
        lengths = (torch.full((wave.shape[0],), wave.shape[1], device=wave.device) if mask is None
                   else (~mask).sum(1))
        if bool((self.encoder.output_lengths(lengths) < 1).any()):
            raise ValueError(f"objective=byol: a view has {int(lengths.min())} valid samples, fewer than one encoder "
                             "frame needs (400 with the standard convs): raise data.min_sample_size or "
                             "objective.segment_seconds")
        enc = encoder(wave, mask, generator=generator)
        return mean_pool(enc.x, enc.padding_mask)

    def online(self, wave: Tensor, mask: Tensor | None, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """``(representation y [B, D], projection z [B, proj_dim], prediction p [B, proj_dim])`` of the online
        network for ``wave [B, S]`` (``y``: the encoder's output averaged over the valid frames)."""
        y = self._pooled(self.encoder, wave, mask, generator)
        z = self.projector(y)
        return y, z, self.predictor(z)

    @torch.no_grad()
    def target(self, wave: Tensor, mask: Tensor | None) -> Tensor:
        """The target network's projection ``[B, proj_dim]`` of ``wave [B, S]`` (no gradient, no dropout)."""
        return self.target_projector(self._pooled(self.target_encoder, wave, mask, None))

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        (w0, m0), (w1, m1) = self.views(batch, generator, augment)
        self._unaugmented_same_crop = augment is None and self.method_cfg.crop == "same"
        y0, z0, p0 = self.online(w0, m0, generator)
        y1, z1, p1 = self.online(w1, m1, generator)
        t0, t1 = self.target(w0, m0), self.target(w1, m1)
        with torch.autocast(device_type=z0.device.type, enabled=False):  # the loss in float32
            p0, p1, t0, t1 = p0.float(), p1.float(), t0.float(), t1.float()
            loss = symmetric_byol_loss(p0, p1, t0, t1)
            cosine = torch.cat([byol_cosine(p0.detach(), t1), byol_cosine(p1.detach(), t0)])
        n = w0.shape[0]
        spread = n >= 2  # a std across the items needs two

        def std(a: Tensor, b: Tensor) -> float:
            return (embedding_std(a) + embedding_std(b)) / 2 if spread else 0.0

        stats = {
            "loss_sum": float(loss.detach()), "sample_size": float(n),
            "cos_sum": float(cosine.double().sum()), "cos_count": float(cosine.numel()),
            "z_std_sum": std(z0, z1), "target_std_sum": std(t0, t1), "repr_std_sum": std(y0, y1),
            "std_count": 1.0 if spread else 0.0,
        }
        return MethodOutput(loss=loss, sample_size=n, stats=stats)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """``loss`` per item (``L + L̃``, 0 … 8), ``cosine`` of predictions and targets, ``z_std`` / ``target_std``
        (per micro-batch, averaged), ``ema_decay`` and the ``items``."""
        def ratio(num: str, den: str) -> float:
            d = sums.get(den, 0.0)
            return sums.get(num, 0.0) / d if d > 0 else float("nan")

        return {
            "loss": ratio("loss_sum", "sample_size"), "cosine": ratio("cos_sum", "cos_count"),
            "z_std": ratio("z_std_sum", "std_count"), "target_std": ratio("target_std_sum", "std_count"),
            "repr_std": ratio("repr_std_sum", "std_count"),
            "ema_decay": self.decay, "items": sums.get("sample_size", 0.0),
        }

    # --- the target network and guards ----------------------------------------------------------------------

    def set_num_updates(self, num_updates: int) -> None:
        self.decay = self.decay_at(num_updates)

    def after_update(self, num_updates: int) -> None:
        self.decay = self.decay_at(num_updates - 1)
        ema_update_(self.target_encoder, self.encoder, self.decay)
        ema_update_(self.target_projector, self.projector, self.decay)

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        c = self.method_cfg
        if num_updates < c.collapse_after:
            return None
        for key, what, dim in (("target_std", "target network's projections", c.proj_dim),
                               ("z_std", "online projections", c.proj_dim),
                               ("repr_std", "encoder's representations (mean over frames)", self.cfg.encoder_embed_dim)):
            value, floor = summary.get(key, float("nan")), c.collapse_std / math.sqrt(dim)
            if math.isfinite(value) and value < floor:
                return (f"the {what} collapsed: {key} {value:.4g} < {floor:.4g} (objective.collapse_std="
                        f"{c.collapse_std} / sqrt({dim}); spread embeddings give ~{1 / math.sqrt(dim):.3f}), cosine "
                        f"{summary.get('cosine', float('nan')):.4f}: every utterance maps to about one point; keep "
                        "objective.head_norm=batch, lower optim.lr, raise objective.ema_decay, or strengthen the augment "
                        "chain")
        return None

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        if self._unaugmented_same_crop and not self._warned:
            self._warned = True
            return ["byol: objective.crop=same with augment=none gives two identical views, so nothing teaches "
                    "invariance; use the augment chain (augment=views) or objective.crop=independent"]
        return []
