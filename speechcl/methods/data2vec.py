"""data2vec for speech (Baevski et al. 2022) on the shared encoder: ``objective=data2vec``.

The student is the encoder with time masking (span masks from :func:`~speechcl.models.masking.compute_span_mask`
at data2vec's ``mask_prob`` 0.65 / ``mask_length`` 10, the encoder's learned ``mask_emb`` at masked frames); a
linear head (``final_proj``, ``D → D``) regresses, at the masked frames only, targets built by an EMA teacher
from the *unmasked* input: the average of its top ``K`` blocks, each instance-normalised per utterance and
channel over the valid frames (:func:`~speechcl.objectives.data2vec.data2vec_targets`). The loss is
:func:`~speechcl.objectives.data2vec.regression_loss` (L2 × 1/√D, summed over the masked frames).

Which layer output. The paper (§3.3) and fairseq take each block's feed-forward output *before* its last
residual connection and LayerNorm (fairseq's ``layer_results[i][2]``, ``fc2``'s output); ``target: ffn`` (the
default) captures exactly that with forward hooks on the teacher layers' ``fc2``, registered for the teacher's
forward only (the teacher runs in eval mode, so no dropout sits between ``fc2`` and the hook). ``target: block``
uses the block outputs the encoder returns as hidden states instead (after the residual; in post-LN models
after the LayerNorm, in pre-LN models the raw residual stream, whose scale grows with depth — instance
normalisation evens that out).

The teacher (``teacher``, a :func:`~speechcl.methods.base.make_teacher` copy in eval mode, no gradient) follows
the student by :func:`~speechcl.methods.base.ema_update_` after every optimizer step, with τ annealed linearly
from 0.999 to 0.9999 over 30k updates (:func:`~speechcl.methods.base.ema_decay`). With ``ema_transformer_only``
(the paper's and fairseq's speech setting) it copies only the context network (``encoder.encoder``): the
feature encoder, its LayerNorm and projection are the student's, and the teacher reads the student's projected
features before dropout and masking (captured from ``post_extract_proj``'s output in the same forward, so the
convolutions run once). fairseq's ``ema_layers_only`` (the positional convolution copied from the student
instead of averaged) is not offered: here it is averaged with the rest.

Logged: ``loss`` per masked frame, ``zero_loss`` (the loss of predicting 0, the instance-normalised targets' mean:
the student learns where ``loss`` falls below it), ``target_var`` / ``pred_var`` (fairseq's ``compute_var``: the mean over
channels of the standard deviation over the masked frames of a micro-batch, averaged over micro-batches;
:func:`~speechcl.objectives.data2vec.channel_std`), ``ema_decay``, ``masked`` (share of valid frames masked).
fairseq's guards stop the run: ``target_var < 0.1`` or ``pred_var < 0.01`` once more than ``guard_after`` (5000)
updates are done. Nothing crosses micro-batches or ranks: N ranks equal ``trainer.update_freq = N``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from speechcl.methods.base import Method, MethodOutput, ema_decay, ema_update_, make_teacher
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.context import ContextNetwork
from speechcl.models.masking import compute_span_mask
from speechcl.objectives.data2vec import channel_std, data2vec_targets, regression_loss

if TYPE_CHECKING:
    from speechcl.audio.augment import Augmenter

TARGETS = ("ffn", "block")
SCHEDULES = ("constant", "linear", "cosine")
PAPER_TOP_K = 8  # Baevski et al. 2022, speech: the top 8 of BASE's 12 blocks (fairseq average_top_k_layers)


@dataclass
class Data2VecConfig:
    """``objective=data2vec`` settings (``conf/objective/data2vec.yaml``); fairseq names in brackets."""

    top_k: int | None = None  # K blocks averaged [average_top_k_layers: 8]; null: min(8, round(2L/3)) for L layers
    target: str = "ffn"  # ffn: each block's FFN output before the residual (paper §3.3); block: block outputs
    instance_norm: bool = True  # instance-normalise each target layer [instance_norm_target_layer: true]
    mask_prob: float = 0.65  # [mask_prob: 0.65]: mask_prob·T/mask_length spans per utterance, ~half the frames
    mask_length: int = 10  # [mask_length]
    mask_min_masks: int = 1  # spans per utterance at least (fairseq data2vec's apply_mask: min_masks=1)
    require_same_masks: bool = True  # [require_same_masks: true]
    loss_beta: float = 0.0  # 0: L2 [loss_beta: 0, the speech recipe]; > 0: smooth L1 with this beta (paper §3.3)
    loss_scale: float | None = None  # per-frame factor; null: 1/sqrt(D) [loss_scale: null]
    ema_decay: float = 0.999  # τ0 [ema_decay]
    ema_end_decay: float = 0.9999  # τe [ema_end_decay]
    ema_schedule: str = "linear"  # fairseq: linear from τ0 to τe, then constant | constant | cosine
    ema_updates: int = 30000  # τn, updates to reach τe [ema_anneal_end_step: 30000]
    ema_transformer_only: bool = True  # teacher = the context network only [ema_transformer_only: true]
    min_target_var: float = 0.1  # stop below this target_var [min_target_var]
    min_pred_var: float = 0.01  # stop below this pred_var [min_pred_var]
    guard_after: int = 5000  # the guards look once more updates than this are done (fairseq: num_updates > 5000)

    def __post_init__(self) -> None:
        if self.top_k is not None and (type(self.top_k) is not int or self.top_k < 1):
            raise ValueError(f"objective.top_k must be a positive integer or null, got {self.top_k!r}")
        if self.target not in TARGETS:
            raise ValueError(f"objective.target must be one of {TARGETS}, got {self.target!r}")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"objective.mask_prob must be in (0, 1] (data2vec predicts masked frames), got "
                             f"{self.mask_prob}")
        if self.mask_length < 1 or self.mask_min_masks < 0:
            raise ValueError(f"objective.mask_length must be >= 1 and mask_min_masks >= 0, got {self.mask_length}, "
                             f"{self.mask_min_masks}")
        if self.loss_beta < 0 or (self.loss_scale is not None and not self.loss_scale > 0):
            raise ValueError(f"objective.loss_beta must be >= 0 and loss_scale > 0 or null, got {self.loss_beta}, "
                             f"{self.loss_scale}")
        for key in ("ema_decay", "ema_end_decay"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"objective.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.ema_schedule not in SCHEDULES:
            raise ValueError(f"objective.ema_schedule must be one of {SCHEDULES}, got {self.ema_schedule!r}")
        if self.ema_schedule != "constant" and self.ema_updates < 1:
            raise ValueError(f"objective.ema_schedule={self.ema_schedule} needs objective.ema_updates >= 1, got "
                             f"{self.ema_updates}")


def resolve_top_k(top_k: int | None, layers: int) -> int:
    """``K`` for an encoder of ``layers`` blocks: ``top_k`` itself (at most ``layers``), or for ``None`` the paper's
    8 where the encoder has the depth for it and two thirds of the blocks otherwise (8 of 12 is two thirds):
    ``min(8, max(1, round(2·layers/3)))`` — BASE/LARGE 8, ``small`` (6) 4, ``tiny`` (2) 1."""
    if top_k is None:
        return min(PAPER_TOP_K, max(1, round(2 * layers / 3)))
    if top_k > layers:
        raise ValueError(f"objective.top_k={top_k} is more blocks than the encoder has (model.encoder_layers="
                         f"{layers}): set objective.top_k to at most {layers}, or null for the default "
                         f"({resolve_top_k(None, layers)} here)")
    return top_k


@contextlib.contextmanager
def capture_outputs(modules: Sequence[nn.Module]) -> Iterator[list[Tensor]]:
    """Within the block, every forward output of ``modules`` is appended, in call order, to the yielded list;
    the hooks are removed on exit (the modules keep no hook, so copies and checkpoints are unaffected)."""
    outputs: list[Tensor] = []

    def hook(_module: nn.Module, _args: object, output: Tensor) -> None:
        outputs.append(output)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class Data2Vec(Method):
    """data2vec on the shared encoder (see the module docstring): a masked student regresses the instance-normalised
    average of an EMA teacher's top-K blocks at the masked frames."""

    name = "data2vec"
    Config = Data2VecConfig

    def __init__(self, cfg: Wav2Vec2Config, method_cfg: Data2VecConfig) -> None:
        super().__init__(cfg, method_cfg)
        c = method_cfg
        self.top_k = resolve_top_k(c.top_k, cfg.encoder_layers)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, cfg.encoder_embed_dim)
        self.teacher: nn.Module = make_teacher(self.encoder.encoder if c.ema_transformer_only else self.encoder)
        self.teacher.eval()
        self.decay = self.decay_at(0)

    def train(self, mode: bool = True) -> Data2Vec:
        super().train(mode)
        self.teacher.eval()
        return self

    def decay_at(self, update: int) -> float:
        """The teacher's EMA decay τ for the (0-based) update ``update``."""
        c = self.method_cfg
        return ema_decay(c.ema_decay, c.ema_end_decay, update, c.ema_updates, c.ema_schedule)

    def _student_part(self) -> nn.Module:
        return self.encoder.encoder if self.method_cfg.ema_transformer_only else self.encoder

    # --- masks and targets ----------------------------------------------------------------------------------

    def draw_mask(self, wave: Tensor, padding_mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """``[B, T]`` bool span mask over the encoder frames of ``wave [B, S]`` (True = masked; padded frames never)."""
        c = self.method_cfg
        b, s = wave.shape
        frames = int(self.encoder.output_lengths(torch.tensor([s]))[0])
        lengths = None
        if padding_mask is not None:
            lengths = self.encoder.output_lengths((~padding_mask).sum(1)).clamp(min=0, max=frames)
        return compute_span_mask((b, frames), c.mask_prob, c.mask_length, lengths=lengths,
                                 min_masks=c.mask_min_masks, require_same_masks=c.require_same_masks,
                                 generator=generator, device=wave.device)

    @torch.no_grad()
    def teacher_layers(self, wave: Tensor, padding_mask: Tensor | None, projected: Tensor | None,
                       frame_padding: Tensor | None) -> list[Tensor]:
        """The teacher's top-``K`` layer outputs (each ``[B, T, D]``, ``target`` says which output) on the unmasked
        input: ``projected [B, T, D]`` (the student's features before dropout and masking) with
        ``ema_transformer_only``, else ``wave [B, S]`` / ``padding_mask [B, S]`` through the whole teacher."""
        context: ContextNetwork = self.teacher if self.method_cfg.ema_transformer_only else self.teacher.encoder
        layers = len(context.layers)
        top = list(context.layers)[layers - self.top_k:]
        block = self.method_cfg.target == "block"
        with capture_outputs([] if block else [layer.fc2 for layer in top]) as ffn:
            if self.method_cfg.ema_transformer_only:
                if projected is None:
                    raise ValueError("data2vec's transformer-only teacher needs the student's projected features")
                _, hidden = self.teacher(projected.detach(), frame_padding, return_hidden=block)
            else:
                hidden = self.teacher(wave, padding_mask, return_hidden=block).hidden_states
        outputs = hidden[layers + 1 - self.top_k:] if block else list(ffn)
        if len(outputs) != self.top_k:
            raise RuntimeError(f"data2vec's teacher gave {len(outputs)} layer outputs, expected top_k={self.top_k}")
        return outputs

    def targets(self, layers: Sequence[Tensor], frame_padding: Tensor | None) -> Tensor:
        """``[B, T, D]`` float32 targets from the teacher's ``layers`` (see :func:`data2vec_targets`)."""
        return data2vec_targets(layers, frame_padding, self.method_cfg.instance_norm)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator,
                augment: Augmenter | None = None) -> MethodOutput:
        c = self.method_cfg
        wave, padding = batch["source"], batch.get("padding_mask")
        if padding is not None and not bool(padding.any()):
            padding = None
        mask = self.draw_mask(wave, padding, generator)
        if not bool(mask.any()):
            raise ValueError("objective=data2vec: no frame was masked; the utterances are too short for "
                             f"objective.mask_length={c.mask_length} (raise data.min_sample_size)")
        capture = [self.encoder.post_extract_proj] if c.ema_transformer_only else []
        with capture_outputs(capture) as projected:
            enc = self.encoder(wave, padding, mask_indices=mask, generator=generator)
        layers = self.teacher_layers(wave, padding, projected[0] if projected else None, enc.padding_mask)
        with torch.autocast(device_type=wave.device.type, enabled=False):  # targets and loss in float32
            y = self.targets(layers, enc.padding_mask)[mask]
            x = self.final_proj(enc.x[mask].float())
            loss = regression_loss(x, y, c.loss_beta, c.loss_scale)
            zero = regression_loss(torch.zeros_like(y), y, c.loss_beta, c.loss_scale)  # predicting the mean, 0
        n = int(x.shape[0])
        target_var, pred_var = channel_std(y), channel_std(x.detach())
        ok = math.isfinite(target_var) and math.isfinite(pred_var)
        stats = {
            "loss_sum": float(loss.detach()), "zero_loss_sum": float(zero), "sample_size": float(n),
            "target_var_sum": target_var if ok else 0.0, "pred_var_sum": pred_var if ok else 0.0,
            "var_count": 1.0 if ok else 0.0, "frames": float(enc.lengths.sum()),
        }
        return MethodOutput(loss=loss, sample_size=n, stats=stats)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """``loss`` per masked frame and ``zero_loss``, what predicting 0 everywhere would lose (the targets' mean
        over an utterance's frames: learning shows as ``loss`` below it), ``target_var`` / ``pred_var`` (per
        micro-batch, averaged), ``ema_decay``, ``masked`` (masked share of the valid frames) and the masked
        ``frames``."""
        def ratio(num: str, den: str) -> float:
            d = sums.get(den, 0.0)
            return sums.get(num, 0.0) / d if d > 0 else float("nan")

        return {
            "loss": ratio("loss_sum", "sample_size"), "zero_loss": ratio("zero_loss_sum", "sample_size"),
            "target_var": ratio("target_var_sum", "var_count"),
            "pred_var": ratio("pred_var_sum", "var_count"), "ema_decay": self.decay,
            "masked": ratio("sample_size", "frames"), "frames": sums.get("sample_size", 0.0),
        }

    # --- the teacher and the guards ---------------------------------------------------------------------------

    def set_num_updates(self, num_updates: int) -> None:
        self.decay = self.decay_at(num_updates)

    def after_update(self, num_updates: int) -> None:
        self.decay = self.decay_at(num_updates - 1)
        ema_update_(self.teacher, self._student_part(), self.decay)

    def collapse(self, summary: dict[str, float], num_updates: int) -> str | None:
        c = self.method_cfg
        if num_updates <= c.guard_after:
            return None
        target_var, pred_var = summary.get("target_var", float("nan")), summary.get("pred_var", float("nan"))
        if target_var < c.min_target_var:
            return (f"the teacher's targets collapsed: target_var {target_var:.4g} < objective.min_target_var="
                    f"{c.min_target_var} (the per-channel spread of the instance-normalised targets across frames "
                    "is gone); lower optim.lr, or anneal the teacher more slowly (objective.ema_decay)")
        if pred_var < c.min_pred_var:
            return (f"the student's predictions collapsed: pred_var {pred_var:.4g} < objective.min_pred_var="
                    f"{c.min_pred_var} (target_var {target_var:.4g}): the head predicts one vector everywhere; "
                    "lower optim.lr or check the masking (objective.mask_prob)")
        return None
