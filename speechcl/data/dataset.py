"""Raw-audio datasets over a manifest, for pretraining (unlabeled) and fine-tuning (letter targets).

:class:`AudioDataset` loads items with :func:`speechcl.audio.load_audio` (mixdown and resampling to
16 kHz happen there) and batches them with :meth:`AudioDataset.collater`, which returns::

    {"id":             int64 [B]     dataset indices (see AudioDataset.path), stable across epochs and runs,
     "epoch":          int64 [B]     the epoch each item was drawn for (seeds per-item augmentation),
     "source":         float32 [B, S]
     "padding_mask":   bool [B, S]   True where source is padding,
     "target":         int64 [B, L]  labeled only; Dictionary indices padded with TARGET_PAD (-1),
     "target_lengths": int64 [B]     labeled only,
     "bad":            [(id, path, reason)]  only when some items could not be read (left out of B)}

Behaviour (fairseq's ``RawAudioDataset`` / ``AddTargetDataset`` defaults in brackets):

- ``min_sample_size``: items shorter are dropped when the dataset is built [0].
- ``max_sample_size``: unlabeled items longer are cropped to it at a random offset [no limit; the
  BASE recipe uses 250k = 15.6 s]; labeled items longer are dropped (cropping would cut audio away
  from its transcript).
- ``pad``: pad a batch to its longest item with a padding mask, or crop every item to the shortest
  item in the batch (no padding) [False = crop]; labeled data always pads.
- ``normalize``: scale each utterance (before cropping) to zero mean and unit variance [False;
  True for LARGE LV-60 models].

Randomness: crop offsets come from ``(seed, epoch, index)`` only, so a batch is the same whatever the
worker, process or resume point. The epoch reaches worker processes through the index itself: the
data loader (:mod:`speechcl.data.loader`) asks for ``dataset[(index, epoch)]``; a plain
``dataset[index]`` uses :attr:`AudioDataset.epoch`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from speechcl.audio.io import SAMPLE_RATE, AudioError, load_audio, normalize_wave, pad_batch
from speechcl.data.labels import Dictionary, read_lines
from speechcl.data.manifest import Manifest, read_manifest

TARGET_PAD = -1
"""Value padding ``target`` beyond ``target_lengths`` (never a Dictionary index)."""

_CROP_ITEM, _CROP_BATCH = 0, 1


def crop_offset(length: int, size: int, seed: int, epoch: int, index: int, stream: int = _CROP_ITEM) -> int:
    """Start of a random window of ``size`` samples in ``length``, fixed by ``(seed, epoch, index, stream)``."""
    if size >= length:
        return 0
    return int(np.random.default_rng([seed, epoch, index, stream]).integers(0, length - size + 1))


class AudioDataset(torch.utils.data.Dataset):
    """Items of a manifest as 16 kHz mono waveforms, optionally with letter targets.

    Args:
        manifest: the audio files (:class:`~speechcl.data.manifest.Manifest`).
        labels: optional token ids per manifest item (e.g. ``Dictionary.encode`` of ``.ltr`` lines),
            aligned with ``manifest``.
        max_sample_size: crop (unlabeled) or drop (labeled) items longer than this, in samples.
        min_sample_size: drop items shorter than this, in samples.
        pad: pad batches (True) or crop them to their shortest item (False); default: True when
            labeled, False otherwise.
        normalize: per-utterance zero mean / unit variance.
        random_crop: crop at a random offset (True) or at the start.
        seed: seed of the crop offsets.
    """

    def __init__(self, manifest: Manifest, labels: Sequence[Sequence[int]] | None = None,
                 max_sample_size: int | None = None, min_sample_size: int = 0, pad: bool | None = None,
                 normalize: bool = False, random_crop: bool = True, seed: int = 0) -> None:
        if labels is not None and len(labels) != len(manifest):
            raise ValueError(f"{len(labels)} label lines for {len(manifest)} manifest items; "
                             "they must line up (re-run speechcl prepare)")
        if pad is None:
            pad = labels is not None
        if labels is not None and not pad:
            raise ValueError("labeled data needs pad=True: cropping would cut audio away from its transcript")
        if max_sample_size is not None and max_sample_size < max(1, min_sample_size):
            raise ValueError(f"max_sample_size={max_sample_size} must be >= max(1, min_sample_size={min_sample_size})")
        self.manifest = manifest
        self.labels = None if labels is None else [list(map(int, t)) for t in labels]
        self.max_sample_size = max_sample_size
        self.min_sample_size = min_sample_size
        self.pad = pad
        self.normalize = normalize
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0
        raw = np.asarray(manifest.sizes, dtype=np.int64)
        keep = raw >= min_sample_size
        if labels is not None and max_sample_size is not None:
            keep &= raw <= max_sample_size
        self.indices = np.nonzero(keep)[0]
        self.num_dropped = int(len(raw) - len(self.indices))
        cropped = raw[self.indices]
        self.sizes: np.ndarray = cropped if max_sample_size is None else np.minimum(cropped, max_sample_size)
        """``[len(self)]`` item lengths as batched (after cropping), for the batch sampler."""

    @classmethod
    def from_files(cls, manifest_path: str | os.PathLike, label_path: str | os.PathLike | None = None,
                   dictionary: Dictionary | None = None, **kwargs: Any) -> AudioDataset:
        """Build from a ``.tsv`` manifest and optionally an ``.ltr`` file encoded with ``dictionary``."""
        manifest = read_manifest(manifest_path)
        labels = None
        if label_path is not None:
            if dictionary is None:
                raise ValueError(f"labels {label_path} need a dictionary (Dictionary.load('dict.ltr.txt'))")
            lines = read_lines(label_path)
            if len(lines) != len(manifest):
                raise ValueError(f"{label_path} has {len(lines)} lines but {manifest_path} has {len(manifest)} "
                                 "items; they must line up (re-run speechcl prepare)")
            labels = [dictionary.encode(line) for line in lines]
        return cls(manifest, labels=labels, **kwargs)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by plain ``dataset[index]`` (the loader passes it explicitly instead)."""
        self.epoch = epoch

    def path(self, index: int) -> str:
        """File of dataset item ``index``."""
        return self.manifest.full_path(int(self.indices[index]))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``index`` (of ``epoch``); a file that cannot be used gives ``{"id", "epoch", "bad"}`` with
        ``bad`` the reason (its path is :meth:`path`), so one bad file costs its item, not the run (the collater leaves it out)."""
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        item = int(self.indices[index])
        path = self.manifest.full_path(item)
        try:
            wave, _ = load_audio(path, SAMPLE_RATE)
        except AudioError as err:
            return {"id": index, "epoch": epoch, "bad": err.reason}
        expected = self.manifest.sizes[item]
        if wave.numel() != expected:
            return {"id": index, "epoch": epoch,
                    "bad": f"decoded {wave.numel()} samples but the manifest says {expected}; the file changed "
                           "since preparation: re-run speechcl prepare"}
        if self.normalize:
            wave = normalize_wave(wave)
        if self.max_sample_size is not None and wave.numel() > self.max_sample_size:
            size = self.max_sample_size
            start = crop_offset(wave.numel(), size, self.seed, epoch, index) if self.random_crop else 0
            wave = wave[start: start + size]
        sample: dict[str, Any] = {"id": index, "epoch": epoch, "source": wave}
        if self.labels is not None:
            sample["target"] = torch.tensor(self.labels[item], dtype=torch.long)
        return sample

    def collater(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Batch samples from ``__getitem__`` (see the module docstring for the keys and shapes).

        Bad items are left out of the tensors and listed under ``"bad"`` as ``(id, path, reason)``; a batch
        of bad items only has ``B = 0``."""
        bad = [(int(s["id"]), self.path(int(s["id"])), s["bad"]) for s in samples if "bad" in s]
        samples = [s for s in samples if "bad" not in s]
        if not samples and not bad:
            raise ValueError("cannot collate an empty batch")
        lengths = [s["source"].numel() for s in samples]
        size = (max(lengths) if self.pad else min(lengths)) if lengths else 0
        waves = []
        for sample, length in zip(samples, lengths):
            wave = sample["source"]
            if length > size:  # crop to the shortest item (pad=False)
                start = (crop_offset(length, size, self.seed, sample["epoch"], sample["id"], _CROP_BATCH)
                         if self.random_crop else 0)
                wave = wave[start: start + size]
            waves.append(wave)
        source, padding_mask = pad_batch(waves)
        batch: dict[str, Any] = {"id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
                                 "epoch": torch.tensor([s["epoch"] for s in samples], dtype=torch.long),
                                 "source": source, "padding_mask": padding_mask}
        if bad:
            batch["bad"] = bad
        if self.labels is not None:
            targets = [s["target"] for s in samples]
            batch["target_lengths"] = torch.tensor([t.numel() for t in targets], dtype=torch.long)
            batch["target"] = (torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=TARGET_PAD)
                               if targets else torch.zeros(0, 0, dtype=torch.long))
        return batch
