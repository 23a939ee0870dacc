"""Future prediction on the shared encoder: wav2vec 1.0 (``objective=wav2vec``) and CPC (``objective=cpc``).

Both predict the encoder's conv features ``z_{t+k}`` (``[B, T, C]``, after the feature LayerNorm, not
projected: wav2vec 1.0 and CPC score the encoder output itself) of the next ``k = 1 … K`` frames from a
causal context ``c_t``, through one affine map per step ``h_k(c_t) = W_k c_t (+ b_k)``, against distractor
frames. They differ only in the loss over those scores and in their reference defaults:

- ``wav2vec`` (Schneider et al. 2019): 10 distractors per ``(t, k)`` from the same utterance, binary
  cross-entropy (:func:`~speechcl.objectives.wav2vec.wav2vec_loss`);
- ``cpc`` (van den Oord et al. 2018; modified CPC, Rivière et al. 2020): 128 distractors (CPC_audio's
  ``negativeSamplingExt``), softmax InfoNCE (:func:`~speechcl.objectives.cpc.cpc_loss`).

The context network (``aggregator``) is the shared transformer run causally (``causal=True``: causal
positional convolution and attention mask, no masking), or wav2vec 1.0's causal convolution stack over
``z`` as a head of the method, to reproduce the original. Causality holds frame by frame with a
``layer_norm`` extractor (the tiny preset); a ``group_norm`` extractor (small, BASE) normalises each
channel over the whole utterance, so the future leaks into every frame through those statistics — as it
does in wav2vec 1.0's own encoder, whose group norm with one group pools over time too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechcl.methods.base import Method, MethodOutput, embedding_std
from speechcl.models.config import Wav2Vec2Config
from speechcl.objectives.cpc import cpc_loss
from speechcl.objectives.wav2vec import (
    NEGATIVE_SCOPES,
    FuturePairs,
    chance_accuracy,
    future_logits,
    future_pairs,
    positive_first,
    sample_future_negatives,
    wav2vec_loss,
)

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter

AGGREGATORS = ("transformer", "conv")
STUCK_AFTER = 1000  # updates after which accuracy near chance is worth a warning


@dataclass
class Wav2VecConfig:
    """``objective=wav2vec`` settings (wav2vec 1.0 defaults; fairseq ``wav2vec`` model and criterion)."""

    prediction_steps: int = 12  # K: wav2vec 1.0 §2 / fairseq prediction_steps 12 (CPC §3.1: 12 steps as well)
    num_negatives: int = 10  # wav2vec 1.0 §2: "ten negatives" per step, λ = their number (weight 1 each)
    negatives: str = "utterance"  # utterance | batch: wav2vec 1.0 §2 draws from each audio sequence, p_n(z) = 1/T
    prediction_bias: bool = True  # h_k affine: fairseq's ConvTranspose2d(1, K) step projection has a bias
    aggregator: str = "transformer"  # transformer (shared, causal) | conv: wav2vec 1.0's context network
    conv_layers: int = 9  # wav2vec 1.0 §2: nine layers of kernel 3, stride 1 (receptive field ≈ 210 ms at 10 ms)
    conv_kernel: int = 3  # wav2vec 1.0 §2
    conv_dim: int = 0  # aggregator channels; 0: the encoder's feature width C (512 in BASE, the paper's 512)
    collapse_after: int = 200  # updates before the collapse guard is armed (speechcl choice)
    collapse_spread: float = 0.05  # stop when z or c spread (embedding_std · √dim, ≈1 isotropic) falls below


@dataclass
class CPCConfig(Wav2VecConfig):
    """``objective=cpc`` settings (modified CPC defaults: CPC_audio ``cpc/train.py``).

    CPC_audio draws its negatives from a batch of one speaker's sequences (``samplingType samespeaker``);
    batches here mix speakers, so the default is the same utterance (one speaker, as there), and
    ``negatives: batch`` is the original paper's and CPC_audio's ``uniform`` sampling over the batch."""

    num_negatives: int = 128  # CPC_audio --negativeSamplingExt 128
    prediction_bias: bool = False  # CPC's W_k is linear: CPC_audio nn.Linear(dimAR, dimEncoder, bias=False)


@dataclass
class Prediction:
    """The scored pairs of one batch (``P`` pairs, ``N`` distractors)."""

    logits: Tensor  # [P, 1 + N] float32 h_k(c_t)·z, column 0 the positive z_{t+k}
    pairs: FuturePairs
    negatives: Tensor  # [P, N] frame numbers b·T + t
    preds: Tensor  # [B, T, K, C] h_k(c_t) for every frame and step
    targets: Tensor  # [B, T, C] z
    context: Tensor  # [B, T, D'] c
    valid: Tensor  # [B, T] bool, True at valid frames


class CausalConvAggregator(nn.Module):
    """wav2vec 1.0's context network ``g: Z -> C``: ``layers`` × (left zero-padding of ``kernel − 1``
    frames, ``Conv1d(kernel, stride 1)``, LayerNorm over channels, ReLU).

    The paper normalises each layer over channels *and time* (group norm with one group), which lets
    every frame see the utterance's statistics; a per-frame LayerNorm keeps ``c_t`` a function of
    ``z_{<=t}`` and of nothing padded. ``[B, T, in_dim] -> [B, T, dim]``.
    """

    def __init__(self, in_dim: int, dim: int, layers: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.convs = nn.ModuleList(nn.Conv1d(in_dim if i == 0 else dim, dim, kernel) for i in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            y = conv(F.pad(x.transpose(1, 2), (self.kernel - 1, 0)))  # [B, dim, T]
            x = F.relu(norm(y.transpose(1, 2)))
        return x


class FuturePrediction(Method):
    """Predict ``z_{t+1} … z_{t+K}`` from ``c_t`` (see the module docstring); subclasses pick the loss.

    ``extract_features`` returns the shared encoder's transformer hidden states, run causally as in
    training. With ``aggregator: conv`` the context comes from the conv head instead, so this objective
    trains only the conv feature encoder and the head: the transformer's hidden states are then those of
    its initialisation over trained features.
    """

    Config: ClassVar[type] = Wav2VecConfig
    pair_loss: ClassVar[Callable[[Tensor], Tensor]]

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: Wav2VecConfig) -> None:
        super().__init__(cfg, method_cfg)
        m = method_cfg
        for key, value, choices in (("negatives", m.negatives, NEGATIVE_SCOPES), ("aggregator", m.aggregator, AGGREGATORS)):
            if value not in choices:
                raise ValueError(f"objective.{key} must be one of {', '.join(choices)}, got {value!r}")
        for key in ("prediction_steps", "num_negatives", "conv_layers", "conv_kernel"):
            if getattr(m, key) < 1:
                raise ValueError(f"objective.{key} must be at least 1, got {getattr(m, key)}")
        if m.conv_dim < 0:
            raise ValueError(f"objective.conv_dim must be >= 0 (0: the feature width), got {m.conv_dim}")
        c = cfg.conv_out_dim
        self.encoder.causal = True  # extraction (speechcl extract, probes, s3prl) sees what training saw
        self.aggregator: CausalConvAggregator | None = None
        context_dim = cfg.encoder_embed_dim
        if m.aggregator == "conv":
            context_dim = m.conv_dim or c
            self.aggregator = CausalConvAggregator(c, context_dim, m.conv_layers, m.conv_kernel)
        self.context_dim = context_dim
        self.predictor = nn.Linear(context_dim, m.prediction_steps * c, bias=m.prediction_bias)  # K maps W_k
        # Scores start at unit scale: c and z are LayerNorm outputs (norms ≈ √D, √C), so N(0, 1/(D·C)) weights
        # give h_k(c)·z a standard deviation ≈ 1 (nn.Linear's default gives ≈ √(C/3): ≈ 9 at C = 256, a loss
        # several times chance at the first update).
        nn.init.normal_(self.predictor.weight, std=1.0 / math.sqrt(context_dim * c))
        if self.predictor.bias is not None:
            nn.init.zeros_(self.predictor.bias)

    def predict(self, wav: Tensor, padding_mask: Tensor | None, generator: torch.Generator | None) -> Prediction:
        """Scores of every valid pair of ``wav [B, S]`` (``padding_mask [B, S]`` True at padding), with
        distractors drawn from ``generator``."""
        m = self.method_cfg
        enc = self.encoder(wav, padding_mask, causal=True, generator=generator)
        z = enc.features  # [B, T, C]
        b, t, c = z.shape
        context = enc.x if self.aggregator is None else self.aggregator(z)
        preds = self.predictor(context).view(b, t, m.prediction_steps, c)
        valid = torch.ones(b, t, dtype=torch.bool, device=z.device) if enc.padding_mask is None else ~enc.padding_mask
        pairs = future_pairs(enc.lengths, t, m.prediction_steps)
        negatives = sample_future_negatives(pairs, valid, m.prediction_steps, m.num_negatives, m.negatives,
                                            generator=generator)
        logits = future_logits(preds, z, pairs, negatives, same_utterance=m.negatives == "utterance")
        return Prediction(logits=logits, pairs=pairs, negatives=negatives, preds=preds, targets=z,
                          context=context, valid=valid)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        padding = batch.get("padding_mask")
        if padding is not None and not bool(padding.any()):
            padding = None
        out = self.predict(batch["source"], padding, generator)
        loss = type(self).pair_loss(out.logits).sum()
        return MethodOutput(loss=loss, sample_size=len(out.pairs), stats=self._stats(out, loss))

    @torch.no_grad()
    def _stats(self, out: Prediction, loss: Tensor) -> dict[str, float]:
        steps = self.method_cfg.prediction_steps
        b, t, c = out.targets.shape
        correct = positive_first(out.logits)
        per_step = torch.bincount(out.pairs.step, weights=correct.double(), minlength=steps)
        count = torch.bincount(out.pairs.step, minlength=steps)
        rows = out.pairs.context * steps + out.pairs.step
        pred_norm = out.preds.detach().reshape(-1, c)[rows].float().norm(dim=1)  # [P]
        z_flat = out.targets.detach().reshape(-1, c).float()
        cols = torch.cat([out.pairs.target[:, None], out.negatives], dim=1)
        cosine = out.logits.detach() / (pred_norm[:, None] * z_flat.norm(dim=1)[cols]).clamp(min=1e-8)
        stats = {
            "loss_sum": float(loss.detach()), "pairs": float(len(out.pairs)), "correct": float(correct.sum()),
            "chance_sum": float(chance_accuracy(out.negatives).sum()), "pos_sim_sum": float(cosine[:, 0].sum()),
            "neg_sim_sum": float(cosine[:, 1:].mean(1).sum()) if cosine.shape[0] else 0.0,
            "std_batches": 0.0, "z_std_sum": 0.0, "c_std_sum": 0.0,
        }
        z_std = embedding_std(out.targets[out.valid])
        c_std = embedding_std(out.context[out.valid])
        if math.isfinite(z_std) and math.isfinite(c_std):
            stats |= {"std_batches": 1.0, "z_std_sum": z_std, "c_std_sum": c_std}
        for k in range(steps):
            stats[f"correct_k{k + 1}"] = float(per_step[k])
            stats[f"pairs_k{k + 1}"] = float(count[k])
        return stats

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """``loss`` in bits per pair, ``accuracy`` (positive ranked first) and its ``chance`` for the drawn
        distractors, per step ``accuracy_k<k>``, mean cosine of prediction and positive / distractors
        (``pos_sim`` / ``neg_sim``), ``z_std`` / ``c_std`` (:func:`~speechcl.methods.base.embedding_std` of
        the targets and contexts; ``1/√dim`` when spread, 0 when collapsed) and the ``pairs`` scored."""
        n = max(sums.get("pairs", 0.0), 1.0)
        batches = sums.get("std_batches", 0.0)
        summary = {
            "loss": sums.get("loss_sum", 0.0) / n / math.log(2),
            "accuracy": sums.get("correct", 0.0) / n,
            "chance": sums.get("chance_sum", 0.0) / n,
            "pos_sim": sums.get("pos_sim_sum", 0.0) / n,
            "neg_sim": sums.get("neg_sim_sum", 0.0) / n,
            "z_std": sums.get("z_std_sum", 0.0) / batches if batches else float("nan"),
            "c_std": sums.get("c_std_sum", 0.0) / batches if batches else float("nan"),
            "pairs": sums.get("pairs", 0.0),
        }
        for k in range(1, self.method_cfg.prediction_steps + 1):
            summary[f"accuracy_k{k}"] = sums.get(f"correct_k{k}", 0.0) / max(sums.get(f"pairs_k{k}", 0.0), 1.0)
        return summary

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        if num_updates >= STUCK_AFTER and summary["accuracy"] < 1.5 * summary["chance"]:
            return [f"{self.name}: accuracy {summary['accuracy']:.3f} is still near chance ({summary['chance']:.3f}) "
                    f"after {num_updates} updates: lower optim.lr, raise data.max_tokens or trainer.update_freq"]
        return []

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        m = self.method_cfg
        if num_updates < m.collapse_after:
            return None
        for key, dim in (("z_std", self.cfg.conv_out_dim), ("c_std", self.context_dim)):
            spread = summary.get(key, float("nan")) * math.sqrt(dim)
            if spread < m.collapse_spread:  # NaN (nothing measured) never fires
                return (f"{key} {summary[key]:.2e} (spread {spread:.3f} of an isotropic 1.0, below "
                        f"objective.collapse_spread={m.collapse_spread}): the {'targets' if key == 'z_std' else 'contexts'} "
                        "have collapsed onto one direction; lower optim.lr or raise objective.num_negatives")
        return None


class Wav2Vec(FuturePrediction):
    """wav2vec 1.0: binary cross-entropy of each future frame against 10 same-utterance distractors."""

    name: ClassVar[str] = "wav2vec"
    Config: ClassVar[type] = Wav2VecConfig
    pair_loss = staticmethod(wav2vec_loss)


class CPC(FuturePrediction):
    """CPC: InfoNCE of each future frame against 128 distractors."""

    name: ClassVar[str] = "cpc"
    Config: ClassVar[type] = CPCConfig
    pair_loss = staticmethod(cpc_loss)
