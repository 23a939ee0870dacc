"""Pretraining: the tasks the training loop runs (wav2vec 2.0's, and one for every other objective's
:class:`~speechcl.methods.Method`), and the end-to-end entry point."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speechcl.audio.augment import AugmentConfig, Augmenter
from speechcl.data.dataset import AudioDataset
from speechcl.data.frame_labels import (
    check_label_geometry,
    check_label_split,
    info_path,
    labels_path,
    read_label_info,
)
from speechcl.data.loader import ResumableLoader, build_dataloader
from speechcl.data.sampler import BucketBatchSampler
from speechcl.data.shard_stream import ShardStreamLoader, build_shard_loader, check_format
from speechcl.methods import Method, build_method
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechcl.objectives import wav2vec2_loss
from speechcl.training.distributed import cleanup, init_distributed
from speechcl.training.schedules import ScheduleConfig
from speechcl.training.trainer import CollapseError, OptimConfig, Task, TaskOutput, TrainerConfig, train
from speechcl.utils.device import resolve_device


@dataclass
class LossConfig:
    """Weights of the extra terms (fairseq ``loss_weights``: diversity 0.1, feature penalty 10)."""

    diversity_weight: float = 0.1
    feature_pen_weight: float = 10.0


@dataclass
class DataConfig:
    """Where the manifests are and how batches are formed (fairseq ``task`` settings)."""

    manifest_dir: str = ""
    train_subset: str = "train"
    valid_subset: str = "valid"  # "" disables validation
    max_sample_size: int = 250_000  # crop (15.6 s)
    min_sample_size: int = 32_000  # drop shorter (2 s)
    max_tokens: int = 1_400_000  # samples per batch and rank (87.5 s)
    max_batch_size: int = 0  # 0: unbounded
    normalize: bool = False  # per-utterance zero mean / unit variance (True for LV-60 models)
    pad: bool = False  # pad batches instead of cropping every item to the batch's shortest
    num_workers: int = 2
    seed: int = 1
    # frame labels <manifest_dir>/<subset>.<frame_labels> of `speechcl cluster` in each batch's "labels"
    # (objective=hubert); None: none. Crop offsets are then multiples of the 320-sample frame stride
    frame_labels: str | None = None
    # where the audio comes from: "manifest" (<manifest_dir>/<subset>.tsv) or "shards" (tar shards of
    # `speechcl prepare shards` in <shards_dir>, streamed; speechcl.data.shard_stream)
    format: str = "manifest"
    shards_dir: str = ""
    shuffle_buffer: int = 1000  # format=shards: items each loader worker's stream buckets and shuffles together


class PretrainTask(Task):
    """Contrastive pretraining for :class:`~speechcl.training.trainer.train`."""

    def __init__(self, model_cfg: Wav2Vec2Config, loss_cfg: LossConfig, stuck_after: int = 1000) -> None:
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg
        self.stuck_after = stuck_after
        self.chance_bits = math.log2(model_cfg.num_negatives + model_cfg.cross_sample_negatives + 1)
        self.temperature = model_cfg.latent_temp[0]

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput:
        padding = batch.get("padding_mask")
        if padding is not None and not bool(padding.any()):
            padding = None
        out = model(batch["source"], padding, generator=generator)
        loss = wav2vec2_loss(out, self.loss_cfg.diversity_weight, self.loss_cfg.feature_pen_weight)
        stats = {
            "loss_sum": float(loss.loss.detach()), "contrastive_sum": float(loss.contrastive.detach()),
            "sample_size": float(loss.sample_size), "correct": float(loss.correct), "count": float(loss.count),
            "code_ppl_sum": loss.code_perplexity, "prob_ppl_sum": loss.prob_perplexity,
            "features_pen_sum": float(loss.features_pen.detach()), "batches": 1.0,
        }
        return TaskOutput(loss=loss.loss, sample_size=loss.sample_size, stats=stats)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("sample_size", 0.0), 1.0)
        batches = max(sums.get("batches", 0.0), 1.0)
        return {
            "loss": sums.get("contrastive_sum", 0.0) / n / math.log(2),  # bits per masked step
            "total_loss": sums.get("loss_sum", 0.0) / n / math.log(2),
            "accuracy": sums.get("correct", 0.0) / max(sums.get("count", 0.0), 1.0),
            "code_perplexity": sums.get("code_ppl_sum", 0.0) / batches,
            "prob_perplexity": sums.get("prob_ppl_sum", 0.0) / batches,
            "features_pen": sums.get("features_pen_sum", 0.0) / batches,
            "temperature": self.temperature,
            "masked_steps": n,
        }

    def valid_score(self, summary: dict[str, float]) -> float:
        return summary["loss"]

    def before_update(self, model: nn.Module, num_updates: int) -> None:
        model.set_num_updates(num_updates)  # the Gumbel temperature of this update
        self.temperature = model.quantizer.temperature

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        warnings = []
        if num_updates >= self.stuck_after and summary["loss"] > 0.97 * self.chance_bits:
            warnings.append(
                f"contrastive loss {summary['loss']:.3f} bits is still at chance ({self.chance_bits:.3f}) after "
                f"{num_updates} updates: lower optim.lr, raise data.max_tokens or trainer.update_freq"
            )
        collapse = max(2.0 * self.model_cfg.latent_groups, 0.02 * self.model_cfg.latent_groups * self.model_cfg.latent_vars)
        if num_updates >= 50 and summary["code_perplexity"] < collapse:
            warnings.append(
                f"codebook collapse: code perplexity {summary['code_perplexity']:.1f} of "
                f"{self.model_cfg.latent_groups * self.model_cfg.latent_vars} entries; check the diversity "
                "weight (loss.diversity_weight) and the Gumbel temperature"
            )
        return warnings


class MethodTask(Task):
    """The training loop's side of a :class:`~speechcl.methods.Method`: forward, summaries, schedules, the
    after-step update (EMA, queue, bank) and its collapse guard, with the ``augment`` chain for its views.

    ``method`` is the bare model (the loop may hand :meth:`forward` its DDP wrapper)."""

    def __init__(self, method: Method, augment: Augmenter | None = None) -> None:
        self.method = method
        self.augment = augment if augment is not None and not augment.identity else None

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput:
        out = model(batch, generator, self.augment)
        return TaskOutput(loss=out.loss, sample_size=out.sample_size, stats=out.stats)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return self.method.summarize(sums)

    def valid_score(self, summary: dict[str, float]) -> float:
        return self.method.valid_score(summary)

    def before_update(self, model: nn.Module, num_updates: int) -> None:
        self.method.set_num_updates(num_updates)

    def after_update(self, model: nn.Module, num_updates: int) -> None:
        self.method.after_update(num_updates)

    def check(self, summary: dict[str, float], num_updates: int) -> list[str]:
        message = self.method.collapse(summary, num_updates)
        if message:
            raise CollapseError(f"{self.method.name}: {message} (update {num_updates}); the run stops here, "
                                "checkpoints/last holds the last saved state")
        return self.method.check(summary, num_updates)


def build_loader(data: DataConfig, subset: str, train_split: bool, *, labels: Any = None,
                 shuffle: bool = True, conv_layers: Any = None) -> ResumableLoader | ShardStreamLoader:
    """A resumable loader over ``<manifest_dir>/<subset>.tsv`` (pretraining: no labels, crops), with the frame
    labels ``<subset>.<data.frame_labels>`` when set (``conv_layers``: the model config's, their frame formula).
    With ``data.format=shards``: a streaming loader over ``<shards_dir>/<subset>.index.json`` instead (frame
    labels still come from ``<manifest_dir>``, matched to the shards' items by their manifest lines)."""
    manifest = Path(data.manifest_dir or ".") / f"{subset}.tsv"
    frame_labels: dict[str, Any] = {}
    if data.frame_labels:
        if data.format == "shards" and not data.manifest_dir:
            raise ValueError("data.frame_labels with data.format=shards needs data.manifest_dir: the folder of the "
                             "manifests the shards were written from, where speechcl cluster wrote the labels")
        if not manifest.exists():
            raise FileNotFoundError(f"manifest {manifest} not found: the frame labels {data.frame_labels} are "
                                    "matched to its items; set data.manifest_dir")
        if conv_layers is None:
            raise ValueError("data.frame_labels needs the model's conv_layers (their frame formula)")
        info = read_label_info(data.manifest_dir, data.frame_labels)
        source = str(info_path(data.manifest_dir, data.frame_labels))
        check_label_geometry(info, conv_layers, source)
        check_label_split(info, manifest, data.frame_labels, source)
        frame_labels = {"frame_label_path": labels_path(data.manifest_dir, subset, data.frame_labels),
                        "conv_layers": conv_layers}
    if data.format == "shards":  # frame labels: the manifest's lines, matched to the items by the index
        labels_of = {"label_manifest": manifest, **frame_labels} if frame_labels else {}
        return build_shard_loader(data.shards_dir, subset, data.max_tokens, data.max_batch_size or None,
                                  shuffle=shuffle and train_split, seed=data.seed, shuffle_buffer=data.shuffle_buffer,
                                  num_workers=data.num_workers, max_sample_size=data.max_sample_size,
                                  min_sample_size=data.min_sample_size, pad=data.pad, normalize=data.normalize,
                                  random_crop=train_split, **labels_of)
    if not manifest.exists():
        raise FileNotFoundError(
            f"manifest {manifest} not found: run `speechcl prepare` first or set data.manifest_dir / "
            f"data.{'train' if train_split else 'valid'}_subset"
        )
    dataset = AudioDataset.from_files(
        manifest, max_sample_size=data.max_sample_size, min_sample_size=data.min_sample_size, pad=data.pad,
        normalize=data.normalize, random_crop=train_split, seed=data.seed, **frame_labels,
    )
    if len(dataset) == 0:
        raise ValueError(f"{manifest}: no utterance is at least data.min_sample_size={data.min_sample_size} samples")
    sampler = BucketBatchSampler(dataset.sizes, data.max_tokens, data.max_batch_size or None,
                                 shuffle=shuffle and train_split, seed=data.seed)
    return build_dataloader(dataset, sampler, num_workers=data.num_workers)


def run_pretraining(model_cfg: Wav2Vec2Config, data: DataConfig, optim: OptimConfig, schedule: ScheduleConfig,
                    trainer: TrainerConfig, loss: LossConfig, exp_dir: str | Path,
                    run_config: dict[str, Any] | None = None, objective: dict[str, Any] | None = None,
                    augment: AugmentConfig | None = None) -> dict[str, Any]:
    """Pretrain on ``data`` into ``exp_dir`` (resumes automatically).

    ``objective`` (``{"name": ..., **settings}``, default wav2vec 2.0) picks the method: ``wav2vec2`` trains a
    :class:`Wav2Vec2ForPretraining` with ``loss``; any other name a :class:`~speechcl.methods.Method` with its
    settings, its views drawn through the ``augment`` chain."""
    objective = dict(objective or {"name": "wav2vec2"})
    if objective.get("name") == "wav2vec2" and len(objective) > 1:
        raise ValueError(f"objective=wav2vec2 takes no settings of its own (got {sorted(set(objective) - {'name'})}): "
                         "its hyperparameters are in model: (masking, quantizer, negatives) and loss:")
    check_format(data.format, data.manifest_dir, data.shards_dir)
    device = resolve_device(trainer.device, "trainer.device")
    info = init_distributed(device)  # before the samplers: they shard by rank
    try:
        conv = model_cfg.conv_layers
        train_loader = build_loader(data, data.train_subset, True, conv_layers=conv)
        valid_loader = build_loader(data, data.valid_subset, False, conv_layers=conv) if data.valid_subset else None
        torch.manual_seed(trainer.seed)
        model: nn.Module
        task: Task
        if objective["name"] == "wav2vec2":
            model = Wav2Vec2ForPretraining(model_cfg)
            task = PretrainTask(model_cfg, loss)
        else:
            if objective.get("bank_size") == 0:  # a memory bank with one row per training item (PIRL)
                objective["bank_size"] = len(train_loader.dataset)
            if objective.get("num_classes") == 0 and data.frame_labels:  # k-means labels (HuBERT): their K
                objective["num_classes"] = read_label_info(data.manifest_dir, data.frame_labels)["num_clusters"]
            model = build_method(model_cfg, objective)
            task = MethodTask(model, Augmenter(augment) if augment is not None and model.uses_augment else None)
        if model_cfg.feature_grad_mult == 0:
            model.encoder.feature_extractor.requires_grad_(False)
        return train(model, task, train_loader, valid_loader, exp_dir, trainer, optim, schedule, run_config)
    finally:
        cleanup(info)  # a process exiting with a live gloo group may abort ("terminate called ...")
