"""PIRL (Misra & van der Maaten 2020): representations invariant to a pretext transform, contrasted with a memory
bank of one vector per training utterance.

Per training item ``I`` (a random crop of ``crop_seconds`` of the batch's audio):

- the untransformed view ``v_I`` → encoder → mean over frames → ``f`` (linear, ``proj_dim``);
- the transformed view ``v_It``: ``transform: jigsaw`` cuts the crop into ``num_chunks`` equal chunks, shuffles
  them (:func:`jigsaw`), encodes every chunk on its own, projects each (linear, ``proj_dim``) and joins them in
  the shuffled order (``jigsaw_pool: concat``, then a linear map: the paper's 9 patch features) or averages
  them (``mean``), → ``g``; ``transform: augment`` draws the ``augment:`` chain on the crop (stream 0) →
  encoder → mean → ``g`` (linear);
- the loss (eq. 5) ``λ L_NCE(m_I, g(v_It)) + (1 − λ) L_NCE(m_I, f(v_I))`` against ``num_negatives`` bank rows
  drawn uniformly without the item's own (:mod:`speechcl.objectives.pirl`).

The memory bank (buffers ``bank [bank_size, proj_dim]``, random unit rows at first, and ``bank_written
[bank_size]``, the update that last wrote each row, −1 never) is written after each optimizer step
(:meth:`PIRL.after_update`): ``m_I ← normalise(0.5 m_I + 0.5 f(v_I))`` for every micro-batch of the update, in
micro-batch order, gathered across ranks. ``bank_size`` is the number of training utterances:
``run_pretraining`` sets it from the training set (``batch["id"]`` are its indices, stable across epochs).

Validation utterances have no bank row: a validation batch is scored with ``f(v_I)`` in place of ``m_I``
(``loss = L(f(v_I), g(v_It))`` against bank negatives) and writes nothing.

DDP with ``R`` ranks equals one process with ``update_freq = R``: the bank is only read during the step (both
terms' anchors and negatives come from the bank as it was after the previous update), the writes of the ``k``-th
micro-batch of every rank are gathered in rank order, which is the single process's micro-batch order (the
sampler gives rank ``r`` batches ``r, r + R, ...``), and applied one after the other, so an utterance met twice
in one update (an epoch boundary) is written twice in the same order either way. The NCE normaliser is taken
from the first micro-batch (rank 0's). What is not equal: the bank is a buffer of the module, so DDP's default
``broadcast_buffers`` copies it from rank 0 at every forward — the same values, at a cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from speechcl.methods.base import Method, MethodOutput, embedding_std, gather_rows, mean_pool
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.feature_encoder import conv_geometry
from speechcl.objectives.pirl import (
    LOSSES,
    contrast_loss,
    nce_normaliser,
    pirl_loss,
    sample_bank_negatives,
    similarities,
)

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter

TRANSFORMS = ("jigsaw", "augment")
JIGSAW_POOLS = ("concat", "mean")
_STUCK_AFTER = 1000  # updates after which an accuracy still near chance is worth a warning


@dataclass
class PIRLConfig:
    """PIRL's settings (``objective: pirl``); defaults from the paper unless the comment says why not."""

    bank_size: int = 0  # rows of the memory bank = training utterances; 0: run_pretraining fills it in
    transform: str = "jigsaw"  # the pretext transform: "jigsaw" (paper's main one, §3) or "augment" (the chain)
    num_chunks: int = 4  # jigsaw pieces; paper: 9 patches of a 3x3 grid. 1-D speech: 4 chunks of 0.5 s in 2 s
    jigsaw_pool: str = "concat"  # paper: patch features concatenated in the random order, then linear; or "mean"
    crop_seconds: float = 2.0  # the segment v_I (random crop per item, both views); 0: the whole batch length
    proj_dim: int = 128  # paper: f and g project to 128 dimensions
    temperature: float = 0.07  # paper: τ = 0.07
    num_negatives: int = 4096  # paper: 32000 of ImageNet's 1.28M (2.5%); fewer for speech corpora and CPU
    lam: float = 0.5  # paper: λ = 0.5 weighs L(m_I, g(v_It)) against L(m_I, f(v_I))
    bank_momentum: float = 0.5  # paper: m_I ← 0.5 m_I + 0.5 f(v_I)
    loss: str = "nce"  # paper: binary NCE; "infonce": softmax cross-entropy over the same 1 + N candidates
    nce_normalize: bool = True  # Z from the first batch (Wu et al. 2018, VISSL's PIRL); False: Z = 1 as printed
    collapse_std: float = 0.01  # stop when z_std (about 1/sqrt(proj_dim) = 0.088 spread) falls below this at chance ...
    collapse_after: int = 200  # ... after this many updates

    def __post_init__(self) -> None:
        checks = [
            (self.bank_size >= 0, "bank_size must be >= 0 (0: set from the training set)"),
            (self.transform in TRANSFORMS, f"transform must be one of {TRANSFORMS}"),
            (self.num_chunks >= 2, "num_chunks must be >= 2"),
            (self.jigsaw_pool in JIGSAW_POOLS, f"jigsaw_pool must be one of {JIGSAW_POOLS}"),
            (self.crop_seconds >= 0, "crop_seconds must be >= 0"),
            (self.proj_dim >= 1, "proj_dim must be >= 1"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.num_negatives >= 1, "num_negatives must be >= 1"),
            (0.0 <= self.lam <= 1.0, "lam must be in [0, 1]"),
            (0.0 <= self.bank_momentum < 1.0, "bank_momentum must be in [0, 1)"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"objective (pirl): {message}, got {self!r}")


def jigsaw(wave: Tensor, num_chunks: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Temporal jigsaw: cut each row into ``num_chunks`` equal chunks and put them in a random order.

    Args:
        wave: ``[B, S]`` with ``S`` a multiple of ``num_chunks``.
        generator: RNG (on ``wave``'s device); one uniform permutation per row.
    Returns:
        ``(shuffled [B, S], perm [B, n])``: chunk ``j`` of ``shuffled[b]`` is chunk ``perm[b, j]`` of ``wave[b]``.
    """
    if wave.dim() != 2 or wave.shape[1] % num_chunks:
        raise ValueError(f"jigsaw needs [B, S] with S a multiple of num_chunks={num_chunks}, got {tuple(wave.shape)}")
    b, s = wave.shape
    perm = torch.rand((b, num_chunks), generator=generator, device=wave.device).argsort(dim=1)
    chunks = wave.reshape(b, num_chunks, s // num_chunks)
    return chunks.gather(1, perm[..., None].expand_as(chunks)).reshape(b, s), perm


def unjigsaw(shuffled: Tensor, perm: Tensor) -> Tensor:
    """The inverse of :func:`jigsaw`: ``[B, S]`` chunks put back in their original order."""
    b, s = shuffled.shape
    n = perm.shape[1]
    chunks = shuffled.reshape(b, n, s // n)
    return chunks.gather(1, perm.argsort(dim=1)[..., None].expand_as(chunks)).reshape(b, s)


@torch.no_grad()
def update_bank_(bank: Tensor, written: Tensor, ids: Tensor, vectors: Tensor, momentum: float, step: int) -> None:
    """Memory-bank write: ``bank[i] ← normalise(momentum · bank[i] + (1 − momentum) · normalise(v))`` and
    ``written[i] ← step`` for each ``(i, v)`` of ``ids [K]``, ``vectors [K, P]``, in order (a repeated id is
    written again on the result of its earlier write)."""
    if ids.dim() != 1 or vectors.shape != (ids.shape[0], bank.shape[1]):
        raise ValueError(f"ids [K] and vectors [K, {bank.shape[1]}] expected, got {tuple(ids.shape)} and "
                         f"{tuple(vectors.shape)}")
    values = F.normalize(vectors.to(bank.dtype), dim=-1)
    order = ids.tolist()
    start = 0
    while start < len(order):  # runs of distinct ids, written at once
        seen: set[int] = set()
        end = start
        while end < len(order) and order[end] not in seen:
            seen.add(order[end])
            end += 1
        rows = ids[start:end]
        bank[rows] = F.normalize(momentum * bank[rows] + (1.0 - momentum) * values[start:end], dim=-1)
        written[rows] = step
        start = end


class PIRL(Method):
    """PIRL on the shared encoder (see the module docstring)."""

    name = "pirl"
    Config = PIRLConfig

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: PIRLConfig) -> None:
        super().__init__(cfg, method_cfg)
        c = method_cfg
        if c.bank_size < 2:
            raise ValueError(
                f"objective.bank_size={c.bank_size}: PIRL's memory bank needs one row per training utterance "
                "(at least 2); `speechcl pretrain` sets it from the training manifest, elsewhere pass "
                "objective.bank_size=<number of training utterances>")
        dim = cfg.encoder_embed_dim
        self.f_head = nn.Linear(dim, c.proj_dim)
        if c.transform == "jigsaw":
            self.chunk_head = nn.Linear(dim, c.proj_dim)
            self.g_head = nn.Linear(c.proj_dim * (c.num_chunks if c.jigsaw_pool == "concat" else 1), c.proj_dim)
        else:
            self.g_head = nn.Linear(dim, c.proj_dim)
        self.register_buffer("bank", F.normalize(torch.randn(c.bank_size, c.proj_dim), dim=-1))
        self.register_buffer("bank_written", torch.full((c.bank_size,), -1, dtype=torch.long))
        self.register_buffer("nce_norm", torch.zeros(()))  # Z/|D| from the first training batch; 0: not yet
        self._stash: list[tuple[Tensor, Tensor]] = []  # (ids [b], f(v_I) [b, P]) per training micro-batch
        self._num_updates = 0
        _, self._min_chunk = conv_geometry(cfg.conv_layers)  # the shortest chunk that still makes a frame

    @property
    def uses_augment(self) -> bool:  # type: ignore[override]
        """Only ``transform: augment`` draws views from the ``augment:`` chain."""
        return self.method_cfg.transform == "augment"

    # --- views ------------------------------------------------------------------------------------------

    def _crop(self, wave: Tensor, padding_mask: Tensor | None, generator: torch.Generator) -> Tensor:
        """``[B, C]``: a random window of every row's valid samples (``C`` = crop, at most the shortest row,
        a multiple of ``num_chunks`` for the jigsaw)."""
        c = self.method_cfg
        b, s = wave.shape
        lengths = (torch.full((b,), s, device=wave.device) if padding_mask is None
                   else (~padding_mask).sum(1))
        size = int(lengths.min())
        if c.crop_seconds > 0:
            size = min(size, round(c.crop_seconds * 16000))
        pieces = c.num_chunks if c.transform == "jigsaw" else 1
        size -= size % pieces
        if size // pieces < self._min_chunk:
            raise ValueError(
                f"pirl: a {size}-sample crop cannot be cut into {pieces} chunk(s) of at least the "
                f"{self._min_chunk}-sample receptive field; raise data.min_sample_size or objective.crop_seconds, "
                "or lower objective.num_chunks")
        span = (lengths - size + 1).to(torch.float32)
        start = (torch.rand(b, generator=generator, device=wave.device) * span).floor().long()
        start = torch.minimum(start, lengths - size)
        return wave.gather(1, start[:, None] + torch.arange(size, device=wave.device))

    def _pooled(self, wave: Tensor, padding_mask: Tensor | None, generator: torch.Generator) -> Tensor:
        """Encoder output averaged over valid frames: ``[B, S] -> [B, D]``."""
        enc = self.encoder(wave, padding_mask, generator=generator)
        return mean_pool(enc.x, enc.padding_mask)

    def _transformed(self, view: Tensor, batch: dict[str, Tensor], generator: torch.Generator,
                     augment: Augmenter | None) -> Tensor:
        """``g(v_It)`` ``[B, proj_dim]``."""
        c = self.method_cfg
        if c.transform == "augment":
            if augment is None:
                raise ValueError("objective.transform=augment needs an augment: chain with transforms "
                                 "(e.g. augment=views); got none or an identity chain")
            wave, mask = augment(view, None, batch["id"], batch["epoch"], stream=0)
            return self.g_head(self._pooled(wave, mask, generator))
        b = view.shape[0]
        shuffled, _ = jigsaw(view, c.num_chunks, generator)
        chunks = self._pooled(shuffled.reshape(b * c.num_chunks, -1), None, generator)  # [B n, D] in shuffled order
        pieces = self.chunk_head(chunks).reshape(b, c.num_chunks, -1)
        return self.g_head(pieces.flatten(1) if c.jigsaw_pool == "concat" else pieces.mean(1))

    # --- the step ---------------------------------------------------------------------------------------

    def _check_ids(self, ids: Tensor) -> None:
        size = self.method_cfg.bank_size
        if ids.numel() and (int(ids.max()) >= size or int(ids.min()) < 0):
            raise ValueError(
                f"pirl: batch item id {int(ids.max()) if int(ids.max()) >= size else int(ids.min())} has no row "
                f"in the memory bank of objective.bank_size={size} rows: the bank needs one row per training "
                "utterance (dataset index); was the model built for another training manifest?")

    def _noise(self, pos: list[Tensor], neg: list[Tensor], store: bool) -> float:
        """The NCE noise term ``N · Z/|D|`` (see :mod:`speechcl.objectives.pirl`)."""
        c = self.method_cfg
        if not c.nce_normalize:
            return c.num_negatives / c.bank_size
        if float(self.nce_norm) > 0:
            return c.num_negatives * float(self.nce_norm)
        value = nce_normaliser(torch.cat(pos), torch.cat(neg), c.temperature).to(self.nce_norm.dtype)
        if store:  # the first training micro-batch fixes Z; under DDP rank 0's (the first micro-batch)
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(value, src=0)
            self.nce_norm.copy_(value)
        return c.num_negatives * float(value)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        c = self.method_cfg
        ids = batch["id"]
        training = self.training
        if training:
            self._check_ids(ids)
        padding = batch.get("padding_mask")
        if padding is not None and not bool(padding.any()):
            padding = None
        view = self._crop(batch["source"], padding, generator)
        f = self.f_head(self._pooled(view, None, generator))
        g = self._transformed(view, batch, generator, augment)
        neg_rows = sample_bank_negatives(ids if training else None, c.bank_size, c.num_negatives,
                                         batch=ids.shape[0], generator=generator)
        negatives = self.bank[neg_rows.to(self.bank.device)]  # [B, N, P]
        anchor = self.bank[ids] if training else f.detach()
        pos_t, neg_t = similarities(anchor, g, negatives)
        stats: dict[str, float] = {}
        if training:
            pos_f, neg_f = similarities(anchor, f, negatives)
            noise = self._noise([pos_t, pos_f], [neg_t, neg_f], store=True)
            out = pirl_loss(pos_t, neg_t, pos_f, neg_f, lam=c.lam, temperature=c.temperature, loss=c.loss,
                            noise=noise)
            loss, loss_t = out.loss, out.transformed
            stats |= {"loss_f_sum": float(out.untransformed.detach().sum()),
                      "correct_f": float((pos_f[:, None] > neg_f).all(1).sum()),
                      "pos_sim_f_sum": float(pos_f.detach().sum())}
            rows = torch.zeros(0, dtype=torch.long, device=ids.device) if batch.get("stand_in") else ids
            self._stash.append((rows, F.normalize(f.detach().float(), dim=-1)[: rows.shape[0]]))
        else:
            noise = self._noise([pos_t], [neg_t], store=False)
            loss_t = contrast_loss(pos_t, neg_t, c.temperature, c.loss, noise)
            loss = loss_t.sum()
        spread = len(ids) > 1  # (the std of one row is undefined; every rank sends the same keys)
        stats |= {"z_std_sum": embedding_std(f) if spread else 0.0, "z_std_t_sum": embedding_std(g) if spread else 0.0,
                  "z_batches": float(spread)}
        written = self.bank_written >= 0
        n_written = int(written.sum())
        stats |= {
            "loss_sum": float(loss.detach()), "loss_t_sum": float(loss_t.detach().sum()), "items": float(len(ids)),
            "correct": float((pos_t[:, None] > neg_t).all(1).sum()), "pos_sim_sum": float(pos_t.detach().sum()),
            "neg_sim_sum": float(neg_t.detach().mean(1).sum()), "batches": 1.0, "bank_rows_written": float(n_written),
            "bank_age_sum": float((self._num_updates - self.bank_written[written]).sum()) if n_written else 0.0,
        }
        return MethodOutput(loss=loss, sample_size=len(ids), stats=stats)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """``loss`` (nats per item: the λ-mix in training, ``L(f(v_I), g(v_It))`` in validation), ``loss_t``
        and (training) ``loss_f`` the two terms, ``accuracy`` of the transformed view's positive among its ``1 +
        N`` candidates (``accuracy_f`` the untransformed's) against ``chance``, ``pos_sim``/``neg_sim`` cosine
        similarities, ``z_std``/``z_std_t`` of ``f``/``g``, ``bank_staleness`` (mean updates since a written row
        was written), ``bank_coverage`` (share of rows written at least once), ``nce_norm`` (``Z/|D|``)."""
        n = max(sums.get("items", 0.0), 1.0)
        batches = max(sums.get("batches", 0.0), 1.0)
        written = sums.get("bank_rows_written", 0.0)
        out = {"loss": sums.get("loss_sum", 0.0) / n, "loss_t": sums.get("loss_t_sum", 0.0) / n,
               "accuracy": sums.get("correct", 0.0) / n, "chance": self.chance,
               "pos_sim": sums.get("pos_sim_sum", 0.0) / n, "neg_sim": sums.get("neg_sim_sum", 0.0) / n}
        if "loss_f_sum" in sums:  # training only
            out |= {"loss_f": sums["loss_f_sum"] / n, "accuracy_f": sums["correct_f"] / n,
                    "pos_sim_f": sums["pos_sim_f_sum"] / n}
        if sums.get("z_batches", 0.0) > 0:  # (else no batch had two items: no z_std, no collapse verdict)
            out |= {"z_std": sums["z_std_sum"] / sums["z_batches"], "z_std_t": sums["z_std_t_sum"] / sums["z_batches"]}
        out |= {"bank_staleness": sums.get("bank_age_sum", 0.0) / max(written, 1.0),
                "bank_coverage": written / (batches * self.method_cfg.bank_size),
                "nce_norm": float(self.nce_norm), "items": n}
        return out

    @property
    def chance(self) -> float:
        """Accuracy of a guess: ``1/(1 + D)`` with ``D = M (1 − (1 − 1/M)^N)`` the expected distinct rows among
        ``N`` negatives drawn with replacement from ``M = bank_size − 1`` (``1/(1 + N)`` when ``N ≪ M``; about
        ``1/bank_size`` when ``N ≫ M``, as on small corpora)."""
        m, n = self.method_cfg.bank_size - 1, self.method_cfg.num_negatives
        distinct = -m * math.expm1(n * math.log1p(-1.0 / m)) if m > 1 else 1.0
        return 1.0 / (1.0 + distinct)

    def set_num_updates(self, num_updates: int) -> None:
        self._num_updates = num_updates
        self._stash.clear()  # writes of an update that was skipped (non-finite) never happened

    @torch.no_grad()
    def after_update(self, num_updates: int) -> None:
        """Write the bank rows of every micro-batch of this update, gathered from all ranks in rank order."""
        for ids, vectors in self._stash:
            all_ids = gather_rows(ids[:, None])[:, 0]
            all_vectors = gather_rows(vectors)
            update_bank_(self.bank, self.bank_written, all_ids.to(self.bank.device),
                         all_vectors.to(self.bank.device), self.method_cfg.bank_momentum, num_updates)
        self._stash.clear()

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        if num_updates >= _STUCK_AFTER and summary.get("accuracy", 1.0) < 2 * summary.get("chance", 0.0):
            return [f"pirl: accuracy {summary['accuracy']:.4f} is still near chance ({summary['chance']:.4f}) after "
                    f"{num_updates} updates: lower optim.lr or objective.num_negatives, or try objective.loss=infonce"]
        return []

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        c = self.method_cfg
        if num_updates < c.collapse_after:
            return None
        # as MoCo's guard: a narrow cone that still ranks the item's own bank row first is not a collapse
        low = min(summary.get("z_std", 1.0), summary.get("z_std_t", 1.0))
        chance = summary.get("chance", 1.0)
        best = max(summary.get("accuracy", 0.0), summary.get("accuracy_f", 0.0))
        if low < c.collapse_std and best <= 2.0 * chance:
            return (f"embedding std {low:.4g} < objective.collapse_std={c.collapse_std} with accuracy {best:.4g} "
                    f"within 2x chance ({chance:.4g}): f and g map every utterance to nearly the same vector; lower "
                    "optim.lr or raise objective.temperature")
        return None

