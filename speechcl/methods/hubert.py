"""HuBERT (Hsu et al. 2021) on the shared encoder: masked prediction of k-means frame labels
(``objective=hubert``).

The labels come from ``speechcl cluster`` (:mod:`speechcl.cluster`): k-means over MFCC+Δ+ΔΔ frames for the
first iteration, over a layer of the previous iteration's model for the next one, written beside the
manifests as ``<split>.<ext>`` with one label per encoder frame; ``data.frame_labels: <ext>`` puts them in
every batch as ``labels [B, T]`` (``-100`` at padding), crops kept on the 320-sample frame grid. Spans of
frames are masked with the encoder's mask embedding (``mask_prob`` 0.8, length 10, BASE), the transformer
output is projected (``A``: ``D -> final_dim``) and scored against one learned embedding per cluster by
cosine over ``τ = 0.1``; the loss is the labels' cross-entropy on masked frames
(:func:`~speechcl.objectives.hubert.hubert_loss`) plus fairseq's feature penalty.

Logged: ``accuracy`` on masked frames against ``chance`` (the frequency of the most common label among each
batch's masked frames: what always guessing that label would score; ``chance_uniform`` = 1/K), the same on
unmasked frames, ``pred_perplexity`` (how many labels the predictions use, ``exp`` of the entropy of the
argmax histogram per batch) beside ``target_perplexity`` (how many the targets use). Predictions that settle on
one label stop the run (:meth:`Hubert.collapse`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from speechcl.methods.base import Method, MethodOutput
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.masking import compute_span_mask
from speechcl.objectives.hubert import HubertLoss, hubert_loss, perplexity

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter


def stuck_threshold(best_guess: float) -> float:
    """Accuracy under which a run still looks stuck at the best constant guess ``p`` (its share of the masked
    frames): ``min(1.5 p, (1 + p) / 2)``, i.e. 1.5x the guess, or half the way from it to 1 when 1.5 p would
    leave no room (``p >= 2/3``) so the warning can always clear."""
    return min(1.5 * best_guess, (1.0 + best_guess) / 2.0)


@dataclass
class HubertConfig:
    """``objective=hubert`` settings (HuBERT BASE: the paper and fairseq ``hubert_base_librispeech``)."""

    num_classes: int = 0  # K: 0 = `speechcl pretrain` reads num_clusters from <manifest_dir>/<data.frame_labels>.json
    mask_prob: float = 0.8  # paper §IV-D: p = 8% of frames start a span (fairseq mask_prob 0.80)
    mask_length: int = 10  # paper §IV-D: l = 10 (fairseq mask_length 10)
    final_dim: int = 256  # projection A: D -> 256 (fairseq hubert BASE final_dim 256)
    temperature: float = 0.1  # τ of the cosine logits (paper §II-B; fairseq logit_temp 0.1)
    masked_weight: float = 1.0  # α of eq. 3 for masked frames (BASE α = 1; fairseq pred_masked_weight 1.0)
    unmasked_weight: float = 0.0  # 1 - α, unmasked frames (fairseq pred_nomask_weight 0.0)
    feature_pen_weight: float = 10.0  # mean squared conv features x sample size (fairseq loss_weights [10])
    # the guard (speechcl): predictions on one label after this many updates stop the run. Short runs pass through
    # a phase of predicting the most frequent label (perplexity 1.0-1.5 for 300 updates of the tiny preset at
    # lr 5e-4), which must not trip it
    collapse_after: int = 1000
    collapse_perplexity: float = 1.1  # stop when the predicted labels' perplexity is below this
    stuck_after: int = 1000  # warn when accuracy is still near chance after this many updates (stuck_threshold)


class Hubert(Method):
    """Masked prediction of frame cluster labels (see the module docstring).

    Heads: ``final_proj`` (``A``: ``[B, T, D] -> [B, T, final_dim]``) and ``label_embeddings [K, final_dim]``
    (fairseq's ``label_embs_concat``, uniform init).
    """

    name: ClassVar[str] = "hubert"
    Config: ClassVar[type] = HubertConfig

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: HubertConfig) -> None:
        super().__init__(cfg, method_cfg)
        m = method_cfg
        if m.num_classes < 2:
            raise ValueError(f"objective.num_classes must be at least 2, got {m.num_classes}: set data.frame_labels "
                             "to the --ext of `speechcl cluster` (num_classes 0 is then read from its <ext>.json)")
        if not 0.0 < m.mask_prob <= 1.0 or m.mask_length < 1:
            raise ValueError(f"objective.mask_prob must be in (0, 1] and mask_length >= 1, got {m.mask_prob}, "
                             f"{m.mask_length}")
        if m.final_dim < 1 or m.temperature <= 0:
            raise ValueError(f"objective.final_dim must be >= 1 and temperature > 0, got {m.final_dim}, {m.temperature}")
        if m.masked_weight < 0 or m.unmasked_weight < 0 or m.masked_weight + m.unmasked_weight == 0:
            raise ValueError("objective.masked_weight and unmasked_weight must be >= 0 and not both 0, got "
                             f"{m.masked_weight}, {m.unmasked_weight}")
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, m.final_dim)
        self.label_embeddings = nn.Parameter(torch.empty(m.num_classes, m.final_dim).uniform_())

    def sample_mask(self, wav: Tensor, padding_mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Span mask ``[B, T]`` over the valid frames of ``wav [B, S]`` (the model config's min_masks and
        require_same_masks, this objective's mask_prob and mask_length)."""
        b, s = wav.shape
        t = int(self.encoder.output_lengths(torch.tensor([s]))[0])
        lengths = None if padding_mask is None else self.encoder.output_lengths((~padding_mask).sum(1))
        return compute_span_mask((b, t), self.method_cfg.mask_prob, self.method_cfg.mask_length, lengths=lengths,
                                 min_masks=self.cfg.mask_min_masks, require_same_masks=self.cfg.require_same_masks,
                                 generator=generator, device=wav.device)

    def predict(self, batch: dict[str, Tensor], generator: torch.Generator | None,
                mask_indices: Tensor | None = None) -> tuple[HubertLoss, Tensor, Tensor]:
        """The loss terms, the mask ``[B, T]`` and the feature penalty of one batch (``mask_indices``: an explicit
        mask instead of a drawn one)."""
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("objective=hubert needs frame labels in each batch: run `speechcl cluster MANIFEST_DIR "
                             "--ext km ...` and set data.frame_labels=km")
        wav = batch["source"]
        padding = batch.get("padding_mask")
        if padding is not None and not bool(padding.any()):
            padding = None
        mask = self.sample_mask(wav, padding, generator) if mask_indices is None else mask_indices
        if labels.shape != mask.shape:
            raise ValueError(f"labels {tuple(labels.shape)} but the encoder makes {tuple(mask.shape)} [batch, frames] "
                             "of this batch: the frame labels follow another frame formula")
        enc = self.encoder(wav, padding, mask_indices=mask, generator=generator)
        out = hubert_loss(self.final_proj(enc.x), self.label_embeddings, labels, mask, self.method_cfg.temperature,
                          self.method_cfg.masked_weight, self.method_cfg.unmasked_weight)
        return out, mask, enc.features_pen

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        out, _, features_pen = self.predict(batch, generator)
        m = self.method_cfg
        loss = out.loss
        if m.feature_pen_weight:
            loss = loss + m.feature_pen_weight * features_pen.float() * out.sample_size
        return MethodOutput(loss=loss, sample_size=out.sample_size, stats=self._stats(out, loss, features_pen))

    @torch.no_grad()
    def _stats(self, out: HubertLoss, loss: Tensor, features_pen: Tensor) -> dict[str, float]:
        k = self.method_cfg.num_classes
        pred_m = out.masked_logits.argmax(-1)
        targets = torch.bincount(out.masked_targets, minlength=k)
        predicted = torch.bincount(pred_m, minlength=k)
        probs = out.masked_logits.float().softmax(-1).mean(0) if pred_m.numel() else torch.zeros(k)
        measured = pred_m.numel() > 0
        return {
            "loss_sum": float(loss.detach()), "sample_size": float(out.sample_size),
            "masked_loss_sum": float(out.masked_sum.detach()), "unmasked_loss_sum": float(out.unmasked_sum.detach()),
            "masked": float(pred_m.numel()), "unmasked": float(out.unmasked_targets.numel()),
            "correct_m": float((pred_m == out.masked_targets).sum()),
            "correct_u": float((out.unmasked_logits.argmax(-1) == out.unmasked_targets).sum()),
            "majority_m": float(targets.max()) if measured else 0.0,
            "ppl_batches": float(measured),
            "pred_ppl_sum": perplexity(predicted) if measured else 0.0,
            "target_ppl_sum": perplexity(targets) if measured else 0.0,
            "prob_ppl_sum": perplexity(probs) if measured else 0.0,
            "features_pen_sum": float(features_pen.detach()), "batches": 1.0,
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """``loss`` (bits per sample-size frame, what is optimised), ``masked_loss`` / ``unmasked_loss`` (bits per
        frame; chance ``log2 K``), ``accuracy`` on masked frames and its ``chance`` (each batch's majority-label
        frequency among masked frames), ``chance_uniform`` (1/K), ``accuracy_unmasked``, ``pred_perplexity`` /
        ``prob_perplexity`` (argmax histogram / mean softmax of the predictions on masked frames) and
        ``target_perplexity``, averaged over batches, ``features_pen`` and the ``masked_frames`` scored."""
        masked = max(sums.get("masked", 0.0), 1.0)
        batches = sums.get("ppl_batches", 0.0)
        nan = float("nan")
        return {
            "loss": sums.get("loss_sum", 0.0) / max(sums.get("sample_size", 0.0), 1.0) / math.log(2),
            "masked_loss": sums.get("masked_loss_sum", 0.0) / masked / math.log(2),
            "unmasked_loss": sums.get("unmasked_loss_sum", 0.0) / max(sums.get("unmasked", 0.0), 1.0) / math.log(2),
            "accuracy": sums.get("correct_m", 0.0) / masked,
            "chance": sums.get("majority_m", 0.0) / masked,
            "chance_uniform": 1.0 / self.method_cfg.num_classes,
            "accuracy_unmasked": sums.get("correct_u", 0.0) / max(sums.get("unmasked", 0.0), 1.0),
            "pred_perplexity": sums.get("pred_ppl_sum", 0.0) / batches if batches else nan,
            "prob_perplexity": sums.get("prob_ppl_sum", 0.0) / batches if batches else nan,
            "target_perplexity": sums.get("target_ppl_sum", 0.0) / batches if batches else nan,
            "features_pen": sums.get("features_pen_sum", 0.0) / max(sums.get("batches", 0.0), 1.0),
            "masked_frames": sums.get("masked", 0.0),
        }

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        m = self.method_cfg
        if num_updates >= m.stuck_after and summary["accuracy"] < stuck_threshold(summary["chance"]):
            return [f"hubert: masked accuracy {summary['accuracy']:.3f} is still near chance ({summary['chance']:.3f}, "
                    f"the majority label) after {num_updates} updates: lower optim.lr, raise data.max_tokens or "
                    "trainer.update_freq, or check the labels (speechcl cluster)"]
        return []

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        m = self.method_cfg
        ppl = summary.get("pred_perplexity", float("nan"))
        if num_updates < m.collapse_after or not ppl < m.collapse_perplexity:  # NaN (nothing measured) never fires
            return None
        return (f"the predicted labels have collapsed: perplexity {ppl:.2f} of {m.num_classes} clusters (below "
                f"objective.collapse_perplexity={m.collapse_perplexity}) while the targets use "
                f"{summary.get('target_perplexity', float('nan')):.1f}; every masked frame gets the same label. "
                "Lower optim.lr, or check that the labels vary (speechcl cluster --num-clusters)")
