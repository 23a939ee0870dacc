"""CTC fine-tuning of a pretrained (or randomly initialised) wav2vec 2.0 encoder.

fairseq's recipe: a linear head over the letter dictionary (index 0 = blank, ``|`` = word boundary),
the feature encoder frozen throughout (``feature_grad_mult = 0``), the whole transformer frozen for the
first ``freeze_finetune_updates`` (only the head trains), time and channel masking, layerdrop, the
tri-stage LR schedule and CTC with ``zero_infinity``. Validation decodes greedily and reports WER/CER;
the ``best`` checkpoint is kept by WER.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from speechcl.asr.decode import greedy_decode
from speechcl.asr.score import score
from speechcl.audio.augment import AugmentConfig, Augmenter
from speechcl.data.dataset import AudioDataset
from speechcl.data.labels import Dictionary, letters_to_words
from speechcl.data.loader import ResumableLoader, build_dataloader
from speechcl.data.sampler import BucketBatchSampler
from speechcl.data.shard_stream import ShardStreamLoader, build_shard_loader, check_format
from speechcl.interop.loading import load_model
from speechcl.models.config import Wav2Vec2Config, preset
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForCTC, encoder_of
from speechcl.training.distributed import cleanup, init_distributed
from speechcl.training.schedules import ScheduleConfig
from speechcl.training.trainer import OptimConfig, Task, TaskOutput, TrainerConfig, train
from speechcl.utils.device import resolve_device


@dataclass
class FinetuneModelConfig:
    """Which encoder to start from and the fine-tuning settings applied on top of its architecture.

    ``init``: a pretrained model (speechcl checkpoint dir, transformers dir or fairseq ``.pt``); empty
    means training from scratch with ``preset``'s architecture. The other fields override the encoder's
    config (fairseq's ``w2v_args`` overrides in its fine-tuning configs).
    """

    init: str = ""
    preset: str = "base"
    freeze_finetune_updates: int = 10_000
    feature_grad_mult: float = 0.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.1
    dropout_input: float = 0.0
    layerdrop: float = 0.1
    final_dropout: float = 0.0
    mask_prob: float = 0.65
    mask_length: int = 10
    mask_min_masks: int = 2
    mask_channel_prob: float = 0.25
    mask_channel_length: int = 64


@dataclass
class FinetuneDataConfig:
    """Labeled manifests: ``<manifest_dir>/<subset>.tsv`` with ``<subset>.<labels>`` and ``dict.<labels>.txt``."""

    manifest_dir: str = ""
    train_subset: str = "train-10m"
    valid_subset: str = "dev-other"
    labels: str = "ltr"
    max_sample_size: int = 480_000  # drop longer utterances (30 s)
    min_sample_size: int = 0
    max_tokens: int = 3_200_000
    max_batch_size: int = 0
    normalize: bool = False
    num_workers: int = 2
    seed: int = 1
    best_metric: str = "wer"  # wer | cer | loss: what picks the `best` checkpoint (cer while WER is ~100%)
    # "manifest" (<manifest_dir>/<subset>.tsv + labels) or "shards" (<shards_dir> of `speechcl prepare shards`,
    # with the labels and dict.<labels>.txt it copies there; streamed, speechcl.data.shard_stream)
    format: str = "manifest"
    shards_dir: str = ""
    shuffle_buffer: int = 1000  # format=shards: items each loader worker's stream buckets and shuffles together


class CTCTask(Task):
    """CTC loss for training; greedy decoding with word/character error counts for validation.

    ``augment`` (optional) transforms training batches in ``forward`` while the model is in training mode,
    deterministically from ``batch["id"]`` and ``batch["epoch"]``; an identity chain is dropped.
    """

    def __init__(self, dictionary: Dictionary, freeze_finetune_updates: int, best_metric: str = "wer",
                 augment: Augmenter | None = None) -> None:
        if best_metric not in ("wer", "cer", "loss"):
            raise ValueError(f"best_metric must be wer, cer or loss, got {best_metric!r}")
        self.dictionary = dictionary
        self.augment = augment if augment is not None and not augment.identity else None
        self.freeze_finetune_updates = freeze_finetune_updates
        self.best_metric = best_metric
        self.frozen = freeze_finetune_updates > 0

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput:
        source, padding = batch["source"], batch["padding_mask"]
        if self.augment is not None and model.training:  # training batches only, seeded per item and epoch
            if "epoch" not in batch:
                raise ValueError("augmentation needs batch['epoch'] (AudioDataset.collater provides it)")
            source, padding = self.augment(source, padding, batch["id"], batch["epoch"])
        padding = padding if padding is not None and bool(padding.any()) else None
        logits, lengths = model(source, padding, generator=generator, freeze_encoder=self.frozen)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        targets, target_lengths = batch["target"], batch["target_lengths"]
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets.clamp(min=0), lengths, target_lengths,
                          blank=Dictionary.blank_index, reduction="sum", zero_infinity=True)
        ntokens = int(target_lengths.sum())
        stats: dict[str, float] = {"loss_sum": float(loss.detach()), "ntokens": float(ntokens),
                                   "nsentences": float(targets.shape[0])}
        if not model.training:
            stats |= self._errors(logits.detach(), lengths, targets, target_lengths)
        return TaskOutput(loss=loss, sample_size=ntokens, stats=stats)

    def _errors(self, logits: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> dict[str, float]:
        # Scored as `evaluate` scores: CER over the characters of the word strings, spaces included
        # (counting the letter units instead would add each utterance's final `|` to the reference length).
        hyps = [letters_to_words(self.dictionary.decode(h))
                for h in greedy_decode(logits.float(), lengths, blank=Dictionary.blank_index)]
        refs = [letters_to_words(self.dictionary.decode(target[:n]))
                for target, n in zip(targets.tolist(), target_lengths.tolist())]
        result = score(refs, hyps)
        return {"c_errors": float(result.chars.errors), "c_total": float(result.chars.reference_length),
                "w_errors": float(result.words.errors), "w_total": float(result.words.reference_length),
                "empty_hyps": float(sum(not h.split() for h in hyps))}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        out = {"loss": sums.get("loss_sum", 0.0) / max(sums.get("ntokens", 0.0), 1.0) / math.log(2),
               "nsentences": sums.get("nsentences", 0.0)}
        if "w_total" in sums:
            out |= {"wer": sums["w_errors"] / max(sums["w_total"], 1.0),
                    "cer": sums["c_errors"] / max(sums["c_total"], 1.0),
                    "empty_hyps": sums.get("empty_hyps", 0.0)}
        return out

    def valid_score(self, summary: dict[str, float]) -> float:
        return summary.get(self.best_metric, summary["loss"])

    def before_update(self, model: nn.Module, num_updates: int) -> None:
        self.frozen = num_updates < self.freeze_finetune_updates


def build_ctc_model(cfg: FinetuneModelConfig, vocab_size: int) -> Wav2Vec2ForCTC:
    """A CTC model whose encoder comes from ``cfg.init`` (or a fresh ``cfg.preset``), with the
    fine-tuning overrides applied to its config."""
    overrides = {f.name: getattr(cfg, f.name) for f in fields(cfg)
                 if f.name not in ("init", "preset", "freeze_finetune_updates")}
    source_encoder: Wav2Vec2Encoder | None = None
    if cfg.init:
        try:
            source_encoder = encoder_of(load_model(cfg.init))
        except ValueError as err:
            raise ValueError(f"{cfg.init}: {err}") from None
        base_cfg = source_encoder.cfg
    else:
        base_cfg = preset(cfg.preset)
    model_cfg: Wav2Vec2Config = base_cfg.replace(**overrides)
    model = Wav2Vec2ForCTC(model_cfg, vocab_size)
    if source_encoder is not None:
        model.encoder.load_state_dict(source_encoder.state_dict())
    if model_cfg.feature_grad_mult == 0:
        model.encoder.feature_extractor.requires_grad_(False)
    return model


def build_labeled_loader(data: FinetuneDataConfig, subset: str, dictionary: Dictionary, train_split: bool
                         ) -> ResumableLoader | ShardStreamLoader:
    if data.format == "shards":
        return build_shard_loader(data.shards_dir, subset, data.max_tokens, data.max_batch_size or None,
                                  shuffle=train_split, seed=data.seed, shuffle_buffer=data.shuffle_buffer,
                                  num_workers=data.num_workers, label_ext=data.labels, dictionary=dictionary,
                                  max_sample_size=data.max_sample_size, min_sample_size=data.min_sample_size,
                                  pad=True, normalize=data.normalize, random_crop=False)
    root = Path(data.manifest_dir)
    manifest, labels = root / f"{subset}.tsv", root / f"{subset}.{data.labels}"
    for path in (manifest, labels):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `speechcl prepare librispeech` (with --subset for "
                                    "labeled subsets) or set data.manifest_dir / data.*_subset")
    dataset = AudioDataset.from_files(manifest, labels, dictionary, max_sample_size=data.max_sample_size,
                                      min_sample_size=data.min_sample_size, pad=True, normalize=data.normalize,
                                      random_crop=False, seed=data.seed)
    if len(dataset) == 0:
        raise ValueError(f"{manifest}: no usable utterance (check data.min_sample_size / data.max_sample_size)")
    sampler = BucketBatchSampler(dataset.sizes, data.max_tokens, data.max_batch_size or None,
                                 shuffle=train_split, seed=data.seed)
    return build_dataloader(dataset, sampler, num_workers=data.num_workers)


def run_finetuning(model_cfg: FinetuneModelConfig, data: FinetuneDataConfig, optim: OptimConfig,
                   schedule: ScheduleConfig, trainer: TrainerConfig, exp_dir: str | Path,
                   run_config: dict[str, Any] | None = None, augment: AugmentConfig | None = None
                   ) -> dict[str, Any]:
    """Fine-tune with CTC into ``exp_dir`` (resumes automatically); ``best`` is kept by validation WER.
    ``augment`` transforms the training batches (not validation); None or an empty chain leaves them as they are."""
    augmenter = Augmenter(augment) if augment is not None else None  # a bad chain fails before any loading
    if data.format == "manifest" and not data.manifest_dir:
        raise ValueError("data.manifest_dir is required: the folder with <subset>.tsv/.ltr and dict.ltr.txt")
    check_format(data.format, data.manifest_dir, data.shards_dir)
    dict_path = Path(data.shards_dir if data.format == "shards" else data.manifest_dir) / f"dict.{data.labels}.txt"
    if not dict_path.exists():
        raise FileNotFoundError(f"{dict_path} not found: run `speechcl prepare librispeech` first"
                                + (" (and then `speechcl prepare shards`, which copies it)" if data.format == "shards"
                                   else ""))
    dictionary = Dictionary.load(dict_path)
    device = resolve_device(trainer.device, "trainer.device")
    info = init_distributed(device)  # before the samplers: they shard by rank
    try:
        torch.manual_seed(trainer.seed)
        model = build_ctc_model(model_cfg, len(dictionary))
        train_loader = build_labeled_loader(data, data.train_subset, dictionary, True)
        valid_loader = (build_labeled_loader(data, data.valid_subset, dictionary, False)
                        if data.valid_subset else None)
        task = CTCTask(dictionary, model_cfg.freeze_finetune_updates, data.best_metric, augment=augmenter)
        extra = {"labels": dictionary.symbols, "normalize": data.normalize}
        return train(model, task, train_loader, valid_loader, exp_dir, trainer, optim, schedule, run_config,
                     checkpoint_extra=extra)
    finally:
        cleanup(info)  # a process exiting with a live gloo group may abort ("terminate called ...")
