"""MoCo (He et al. 2020) and MoCo v2 (Chen et al. 2020) on the shared speech encoder: ``objective=moco``.

Per utterance, two random segments (``segment_seconds``, about 1 s, cropped with the trainer's generator),
each augmented as its own view (streams 0 and 1 of the ``augment`` chain). The query is view 0 through the
online encoder, mean pooling over valid frames and the head (v1: a linear map to ``dim``; v2: a 2-layer MLP),
L2-normalised; its key is view 1 through the momentum encoder and momentum head (no gradient). The loss is
:func:`~speechcl.objectives.moco.moco_loss`: InfoNCE of the query against its key and the queue of earlier
keys, at temperature τ. ``symmetric`` adds the swapped pair (view 1 as query, view 0 as key; both keys of an
item are then enqueued).

State, all buffers and submodules (so ``model.safetensors`` holds them and a resumed run continues exactly):

- ``key_encoder`` / ``key_head``: :func:`~speechcl.methods.base.make_teacher` copies, moved by
  :func:`~speechcl.methods.base.ema_update_` with momentum m (0.999, a schedule optional) after every
  optimizer step. They run in eval mode (no dropout): a key is a function of its view only.
- the queue: ``queue [K, dim]`` unit keys, ``queue_ids [K]`` their items (−1: empty), ``queue_step [K]`` the
  update after which each was enqueued (staleness), ``queue_ptr [1]`` the next slot, ``queue_fill [1]``
  the filled slots. FIFO with wrap-around. The queue starts empty and only its filled slots are negatives
  (the paper fills it with random unit vectors instead): the first update has no negatives (loss 0), and
  accuracy, its chance and the loss compare honestly while it fills.
- with ``exclude_same_item`` (speechcl's; not in the papers) a queued key of the query's own utterance —
  another crop, one epoch older — is not a negative. On ImageNet K ≪ the images of an epoch, so that never
  happens; a speech corpus has far fewer utterances (LibriSpeech 960 h: 281k, a synthetic CPU corpus: a few
  hundred), so it can. No effect while K is below the utterances of an epoch.

The queue's update: the keys of every training micro-batch are stashed during ``forward`` (never in eval
mode) and enqueued in :meth:`MoCo.after_update`, so every micro-batch of an update sees the queue as it was
before the update. Under DDP each micro-batch's keys are gathered across ranks (rank order) with
:func:`~speechcl.methods.base.gather_rows` and enqueued micro-batch by micro-batch: the order of the global
batches (``position · world + rank``), so N ranks equal one process with ``trainer.update_freq = N`` (and
N ranks × F micro-batches one process with N·F). A rank's stand-in batch enqueues nothing, as the skipped
empty batch of a single process; an update skipped as non-finite drops its stash.

Shuffle-BN (MoCo's guard against a batch-statistics shortcut) is not needed: the encoder has no BatchNorm
(group norm per utterance in the conv extractor, LayerNorm elsewhere) and neither has the head, so no
statistic is shared between the samples of a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechcl.methods.base import (
    MLP,
    Method,
    MethodOutput,
    ema_decay,
    ema_update_,
    embedding_std,
    gather_rows,
    make_teacher,
    mean_pool,
)
from speechcl.models.config import Wav2Vec2Config
from speechcl.objectives.moco import MoCoLoss, moco_loss

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter

SAMPLE_RATE = 16000
TEMPERATURE = {1: 0.07, 2: 0.2}  # He et al. 2020 §4 (τ 0.07); Chen et al. 2020 Table 1 (τ 0.2 with the MLP)


@dataclass
class MoCoConfig:
    """MoCo's settings (``objective:`` of ``objective=moco``)."""

    version: int = 2  # 1: MoCo (He et al. 2020): linear head, τ 0.07; 2: MoCo v2 (Chen et al. 2020): MLP head, τ 0.2
    dim: int = 128  # the embedding's size (both papers: 128)
    hidden_dim: int | None = None  # v2 MLP hidden width; None: the encoder's width (v2: 2048 = ResNet-50's)
    temperature: float | None = None  # τ; None: the version's (0.07 / 0.2)
    # K: the paper's 65536 is 5% of ImageNet's 1.28M images, ~256 updates of 256 keys old. Speech corpora have
    # far fewer items (LibriSpeech 960 h: 281k utterances) and CPU updates ~10 keys: 4096 stays below the
    # utterances of an epoch on LibriSpeech subsets; for a small CPU corpus use ~1024 (≤ its utterances)
    queue_size: int = 4096
    momentum: float = 0.999  # m of the key encoder (He et al. 2020 §3.2 and Table 4: 0.999)
    momentum_end: float = 1.0  # where a linear/cosine schedule ends (BYOL's cosine: 1.0); unused when constant
    momentum_schedule: str = "constant"  # constant (MoCo) | linear | cosine
    momentum_updates: int = 0  # schedule length in updates (0: constant momentum)
    symmetric: bool = False  # both views as query (the symmetrised loss of MoCo v3, Chen et al. 2021)
    segment_seconds: float = 1.0  # crop of each view (COLA, Saeed et al. 2021: 960 ms segments)
    exclude_same_item: bool = True  # no negative from the query's own utterance (speechcl's, see the module doc)
    collapse_std: float = 0.01  # stop when the queries' z_std is below this (spread: ~1/√dim) at chance accuracy
    collapse_after: int = 200  # ... after this many updates

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"objective.version must be 1 (MoCo) or 2 (MoCo v2), got {self.version!r}")
        if self.dim < 1 or self.queue_size < 1:
            raise ValueError(f"objective.dim and objective.queue_size must be >= 1, got {self.dim} and "
                             f"{self.queue_size}")
        if self.hidden_dim is not None and (type(self.hidden_dim) is not int or self.hidden_dim < 1):
            raise ValueError(f"objective.hidden_dim must be a positive integer or null, got {self.hidden_dim!r}")
        if self.temperature is not None and not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"objective.temperature must be > 0 or null, got {self.temperature!r}")
        for key in ("momentum", "momentum_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"objective.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.momentum_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"objective.momentum_schedule must be constant, linear or cosine, got "
                             f"{self.momentum_schedule!r}")
        if not self.segment_seconds > 0:
            raise ValueError(f"objective.segment_seconds must be > 0, got {self.segment_seconds}")


def random_segments(wave: Tensor, padding_mask: Tensor | None, length: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """A random ``length``-sample window of every row's valid part (the whole row when shorter).

    ``wave [B, S]``, ``padding_mask [B, S]`` (True = padded) -> ``([B, W], [B, W] or None)`` with
    ``W = min(length, longest valid row)``; start offsets uniform, drawn from ``generator``."""
    b, s = wave.shape
    lengths = (torch.full((b,), s, device=wave.device) if padding_mask is None
               else (~padding_mask).sum(1))
    width = min(length, int(lengths.max()) if b else length)
    room = (lengths - width).clamp(min=0)  # [B] the largest start
    u = torch.rand(b, generator=generator, device=generator.device, dtype=torch.float64).to(wave.device)
    start = torch.minimum((u * (room + 1)).floor().long(), room)
    index = (start[:, None] + torch.arange(width, device=wave.device)).clamp(max=s - 1)
    out = wave.gather(1, index)
    valid = torch.arange(width, device=wave.device)[None, :] < (lengths - start)[:, None]
    if bool(valid.all()):
        return out, None
    return out.masked_fill(~valid, 0.0), ~valid


class MoCo(Method):
    """MoCo v1/v2 (see the module docstring): query encoder + momentum key encoder + a queue of keys."""

    name = "moco"
    Config = MoCoConfig
    uses_augment = True

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: MoCoConfig) -> None:
        super().__init__(cfg, method_cfg)
        c = method_cfg
        width = cfg.encoder_embed_dim
        self.head: nn.Module = (nn.Linear(width, c.dim) if c.version == 1
                                else MLP(width, c.hidden_dim or width, c.dim, layers=2))
        self.key_encoder = make_teacher(self.encoder)
        self.key_head = make_teacher(self.head)
        self.key_encoder.eval()  # no dropout in the keys (see train())
        self.key_head.eval()
        self.temperature = c.temperature if c.temperature is not None else TEMPERATURE[c.version]
        self.register_buffer("queue", torch.zeros(c.queue_size, c.dim))
        self.register_buffer("queue_ids", torch.full((c.queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_step", torch.zeros(c.queue_size, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue_fill", torch.zeros(1, dtype=torch.long))
        self._stash: list[tuple[Tensor, Tensor]] = []  # (keys [n, dim], ids [n]) per training micro-batch
        self._num_updates = 0
        self.momentum = c.momentum

    def train(self, mode: bool = True) -> MoCo:
        super().train(mode)
        self.key_encoder.eval()
        self.key_head.eval()
        return self

    # --- the views and their embeddings -------------------------------------------------------------------

    def _query(self, wave: Tensor, mask: Tensor | None, generator: torch.Generator) -> Tensor:
        enc = self.encoder(wave, mask, generator=generator)
        return F.normalize(self.head(mean_pool(enc.x, enc.padding_mask)).float(), dim=-1)

    @torch.no_grad()
    def _key(self, wave: Tensor, mask: Tensor | None) -> Tensor:
        enc = self.key_encoder(wave, mask)
        return F.normalize(self.key_head(mean_pool(enc.x, enc.padding_mask)).float(), dim=-1)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        wave, padding = batch["source"], batch.get("padding_mask")
        if padding is not None and not bool(padding.any()):
            padding = None
        ids = batch["id"].to(wave.device)
        length = round(self.method_cfg.segment_seconds * SAMPLE_RATE)
        views = []
        for stream in (0, 1):
            view, mask = random_segments(wave, padding, length, generator)
            if augment is not None:
                view, mask = augment(view, mask, batch["id"], batch["epoch"], stream=stream)
            views.append((view, mask))
        pairs = [(0, 1), (1, 0)] if self.method_cfg.symmetric else [(0, 1)]
        queries = [self._query(*views[a], generator) for a, _ in pairs]
        keys = [self._key(*views[b]) for _, b in pairs]
        q, k = torch.cat(queries), torch.cat(keys)
        q_ids = ids.repeat(len(pairs))

        fill = int(self.queue_fill)
        negatives = self.queue[:fill]
        valid = None
        if self.method_cfg.exclude_same_item and fill:
            valid = self.queue_ids[:fill][None, :] != q_ids[:, None]  # [B', fill]
        out = moco_loss(q, k, negatives, self.temperature, valid)

        if self.training:  # enqueued after the step; a DDP stand-in batch: an empty entry (ranks gather alike)
            rows = slice(0, 0) if batch.get("stand_in") else slice(None)
            self._stash.append((k.detach()[rows], q_ids[rows]))
        stats = self._stats(out, q, k, valid, fill) | in_batch_stats(q, k, blocks=len(pairs))
        return MethodOutput(loss=out.loss, sample_size=q.shape[0], stats=stats)

    def _stats(self, out: MoCoLoss, q: Tensor, k: Tensor, valid: Tensor | None, fill: int) -> dict[str, float]:
        n = q.shape[0]
        q = q.detach()
        sims = q @ self.queue[:fill].T  # [B', fill] cosines of the queries and the queued keys
        chosen = torch.ones_like(sims, dtype=torch.bool) if valid is None else valid
        z_std = embedding_std(q)
        age = (self._num_updates - self.queue_step[:fill]).double()
        return {
            "loss_sum": float(out.loss.detach()), "sample_size": float(n), "correct": float(out.correct),
            "chance_sum": float((1.0 / (1.0 + out.negatives.double())).sum()),
            "negatives_sum": float(out.negatives.sum()),
            "pos_sim_sum": float((q * k).sum()),
            "neg_sim_sum": float(sims[chosen].double().sum()), "neg_count": float(chosen.sum()),
            "z_std_sum": 0.0 if math.isnan(z_std) else z_std, "z_std_count": 0.0 if math.isnan(z_std) else 1.0,
            "queue_fill_sum": fill / self.method_cfg.queue_size,
            "staleness_sum": float(age.mean()) if fill else 0.0, "staleness_count": 1.0 if fill else 0.0,
            "batches": 1.0,
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("sample_size", 0.0), 1.0)
        batches = max(sums.get("batches", 0.0), 1.0)

        def ratio(key: str, count: str) -> float:
            return sums.get(key, 0.0) / sums[count] if sums.get(count) else float("nan")

        return {
            "loss": sums.get("loss_sum", 0.0) / n,  # nats per query
            "accuracy": sums.get("correct", 0.0) / n,  # the positive ranked first among 1 + negatives
            "chance": sums.get("chance_sum", 0.0) / n,  # mean 1 / (1 + negatives)
            "negatives": sums.get("negatives_sum", 0.0) / n,
            "pos_sim": sums.get("pos_sim_sum", 0.0) / n,  # cosine of query and key
            "neg_sim": ratio("neg_sim_sum", "neg_count"),  # cosine of query and queued keys
            "z_std": ratio("z_std_sum", "z_std_count"),  # of the unit queries (~1/√dim when spread, 0 collapsed)
            "queue_fill": sums.get("queue_fill_sum", 0.0) / batches,
            "staleness": ratio("staleness_sum", "staleness_count"),  # mean age (updates) of the queued keys
            # the query's own key ranked first among the keys of its micro-batch (chance 1/B): the queue's keys
            # are older than the positive, so ``accuracy`` alone can rise on staleness without learning
            "batch_accuracy": ratio("batch_correct", "batch_queries"),
            "batch_chance": ratio("batch_chance_sum", "batch_queries"),
            "momentum": self.momentum,
            "temperature": self.temperature,
            "queries": n,
        }

    # --- schedules, the momentum encoder and the queue -------------------------------------------------------

    def momentum_at(self, update: int) -> float:
        """The key encoder's momentum for the (0-based) update ``update``."""
        c = self.method_cfg
        return ema_decay(c.momentum, c.momentum_end, update, c.momentum_updates, c.momentum_schedule)

    def set_num_updates(self, num_updates: int) -> None:
        self._num_updates = num_updates
        self._stash = []  # keys of an update skipped as non-finite are never enqueued

    def after_update(self, num_updates: int) -> None:
        self.momentum = self.momentum_at(num_updates - 1)
        ema_update_(self.key_encoder, self.encoder, self.momentum)
        ema_update_(self.key_head, self.head, self.momentum)
        stash, self._stash = self._stash, []
        for keys, ids in stash:  # micro-batch order; within one, rank order (= the global batch order)
            rows = gather_rows(torch.cat([keys.double(), ids.double()[:, None]], 1))  # ids exact below 2^53
            self.enqueue(rows[:, :-1].to(self.queue.dtype), rows[:, -1].long(), num_updates)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, ids: Tensor, num_updates: int) -> None:
        """FIFO: write ``keys [N, dim]`` (items ``ids [N]``) at the pointer, wrapping around; with N > K only
        the newest K stay. ``num_updates`` stamps their age."""
        size, n = self.queue.shape[0], keys.shape[0]
        if n == 0:
            return
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(n, device=self.queue.device)) % size
        keep = slice(max(n - size, 0), n)
        self.queue[slots[keep]] = keys[keep].to(self.queue.device)
        self.queue_ids[slots[keep]] = ids[keep].to(self.queue.device)
        self.queue_step[slots[keep]] = num_updates
        self.queue_ptr.fill_((ptr + n) % size)
        self.queue_fill.fill_(min(int(self.queue_fill) + n, size))

    # --- guards ----------------------------------------------------------------------------------------------

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        if num_updates >= 1000 and summary["queue_fill"] > 0 and summary["accuracy"] <= 2.0 * summary["chance"]:
            return [f"moco: accuracy {summary['accuracy']:.4f} is still near chance ({summary['chance']:.4f}) after "
                    f"{num_updates} updates: lower optim.lr, check the augment chain, or lower objective.momentum"]
        return []

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        """Collapsed: the queries' ``z_std`` below ``collapse_std`` *and* accuracy within 2× chance (near-equal
        unit vectors that still rank their keys first are a narrow cone, not a collapse)."""
        c = self.method_cfg
        z_std, accuracy = summary.get("z_std", float("nan")), summary.get("accuracy", 0.0)
        if num_updates >= c.collapse_after and z_std < c.collapse_std and accuracy <= 2.0 * summary.get("chance", 1.0):
            return (f"the queries collapsed: z_std {z_std:.4f} < objective.collapse_std={c.collapse_std} (spread unit "
                    f"vectors give ~{1 / math.sqrt(c.dim):.3f}) with accuracy {accuracy:.4f} at chance "
                    f"({summary.get('chance', float('nan')):.4f}); lower optim.lr or objective.momentum (0.99), or raise "
                    "objective.temperature")
        return None


def in_batch_stats(q: Tensor, k: Tensor, blocks: int = 1) -> dict[str, float]:
    """How often each query's own key is the most similar among the keys of its micro-batch, free of the
    queue's staleness: ``q, k [blocks·B, D]`` unit rows in ``blocks`` aligned blocks (query ``i`` of a block and
    key ``i`` of the same block are a pair). Sums ``batch_correct``, ``batch_chance_sum`` (``1/B`` per query) and
    ``batch_queries``; nothing when ``B < 2``."""
    n = q.shape[0] // blocks
    if n < 2:
        return {}
    sims = torch.einsum("aid,ajd->aij", q.detach().float().reshape(blocks, n, -1), k.detach().float().reshape(blocks, n, -1))
    hits = sims.argmax(-1) == torch.arange(n, device=q.device)
    return {"batch_correct": float(hits.sum()), "batch_chance_sum": float(blocks), "batch_queries": float(blocks * n)}
