"""Raw-audio datasets over a manifest, for pretraining (unlabeled) and fine-tuning (letter targets).

:class:`AudioDataset` loads items with :func:`speechcl.audio.load_audio` (mixdown and resampling to
16 kHz happen there) and batches them with :meth:`AudioDataset.collater`, which returns::

    {"id":             int64 [B]     dataset indices (see AudioDataset.path), stable across epochs and runs,
     "epoch":          int64 [B]     the epoch each item was drawn for (seeds per-item augmentation),
     "source":         float32 [B, S]
     "padding_mask":   bool [B, S]   True where source is padding,
     "target":         int64 [B, L]  labeled only; Dictionary indices padded with TARGET_PAD (-1),
     "target_lengths": int64 [B]     labeled only,
     "labels":         int64 [B, T]  with frame labels only: one label per encoder frame of each item's
                                     (cropped) audio, padded with FRAME_LABEL_PAD (-100),
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
- ``frame_labels`` (HuBERT's cluster labels, :mod:`speechcl.data.frame_labels`): one label per encoder frame
  (``conv_layers`` gives the frame formula). Every crop offset is then a multiple of the frame stride (320
  samples), so a crop of ``size`` samples starting at ``j · 320`` keeps labels ``j … j + frames(size) − 1``:
  its frame ``t`` sees samples ``[(j + t) · 320, (j + t) · 320 + 400)`` as frame ``j + t`` of the whole
  utterance did. Without frame labels the offsets are drawn exactly as before (any sample).

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
from speechcl.data.frame_labels import frame_geometry, num_label_frames, read_frame_labels
from speechcl.data.labels import Dictionary, read_lines
from speechcl.data.manifest import Manifest, read_manifest

TARGET_PAD = -1
"""Value padding ``target`` beyond ``target_lengths`` (never a Dictionary index)."""

FRAME_LABEL_PAD = -100
"""Value of ``labels`` at padded frames (``ignore_index`` of ``torch.nn.functional.cross_entropy``)."""

_CROP_ITEM, _CROP_BATCH = 0, 1


def crop_offset(length: int, size: int, seed: int, epoch: int, index: int, stream: int = _CROP_ITEM,
                step: int = 1) -> int:
    """Start of a random window of ``size`` samples in ``length``, fixed by ``(seed, epoch, index, stream)``;
    a multiple of ``step`` (the frame stride when frame labels must stay aligned)."""
    if size >= length:
        return 0
    rng = np.random.default_rng([seed, epoch, index, stream])
    if step == 1:
        return int(rng.integers(0, length - size + 1))
    if step < 1:
        raise ValueError(f"crop step must be >= 1, got {step}")
    return step * int(rng.integers(0, (length - size) // step + 1))


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
        frame_labels: optional labels per encoder frame of each manifest item (``[frames]`` each, e.g. from
            :func:`~speechcl.data.frame_labels.read_frame_labels`), aligned with ``manifest``; they give the
            batch ``labels`` and make crop offsets multiples of the frame stride.
        conv_layers: the encoder's conv stack (``(dim, kernel, stride)`` per layer, the model config's
            ``conv_layers``): the frame formula of ``frame_labels`` (required with them).
    """

    def __init__(self, manifest: Manifest, labels: Sequence[Sequence[int]] | None = None,
                 max_sample_size: int | None = None, min_sample_size: int = 0, pad: bool | None = None,
                 normalize: bool = False, random_crop: bool = True, seed: int = 0,
                 frame_labels: Sequence[np.ndarray] | None = None,
                 conv_layers: Sequence[Sequence[int]] | None = None) -> None:
        if labels is not None and len(labels) != len(manifest):
            raise ValueError(f"{len(labels)} label lines for {len(manifest)} manifest items; "
                             "they must line up (re-run speechcl prepare)")
        self.frame_labels: list[np.ndarray] | None = None
        self.crop_step = 1
        if frame_labels is not None:
            self._set_frame_labels(manifest, frame_labels, conv_layers)
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

    def _set_frame_labels(self, manifest: Manifest, frame_labels: Sequence[np.ndarray],
                          conv_layers: Sequence[Sequence[int]] | None) -> None:
        if conv_layers is None:
            raise ValueError("frame labels need conv_layers (the model config's) to know the frame formula")
        if len(frame_labels) != len(manifest):
            raise ValueError(f"{len(frame_labels)} frame-label lines for {len(manifest)} manifest items; they "
                             "must line up (re-run speechcl cluster)")
        expected = num_label_frames(manifest.sizes, conv_layers)
        for i, labels in enumerate(frame_labels):
            if len(labels) != expected[i]:
                raise ValueError(f"frame labels of item {i} ({manifest.paths[i]}, {manifest.sizes[i]} samples): "
                                 f"{len(labels)} labels but the encoder makes {int(expected[i])} frames of it")
        self.frame_labels = [np.asarray(t, dtype=np.int64) for t in frame_labels]
        self.conv_layers = [tuple(int(v) for v in s) for s in conv_layers]
        self.crop_step = int(frame_geometry(conv_layers)["frame_stride"])

    def _frames(self, num_samples: int) -> int:
        return int(num_label_frames([num_samples], self.conv_layers)[0])

    @classmethod
    def from_files(cls, manifest_path: str | os.PathLike, label_path: str | os.PathLike | None = None,
                   dictionary: Dictionary | None = None, frame_label_path: str | os.PathLike | None = None,
                   **kwargs: Any) -> AudioDataset:
        """Build from a ``.tsv`` manifest and optionally an ``.ltr`` file encoded with ``dictionary`` and a
        frame-label file (``<split>.<ext>`` of ``speechcl cluster``; needs ``conv_layers``), whose every line is
        checked against its item's frame count."""
        manifest = read_manifest(manifest_path)
        if frame_label_path is not None:
            if kwargs.get("conv_layers") is None:
                raise ValueError(f"frame labels {frame_label_path} need conv_layers (the model config's)")
            kwargs["frame_labels"] = read_frame_labels(frame_label_path, manifest, kwargs["conv_layers"])
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
        wave = self.load_wave(item)
        if isinstance(wave, str):
            return {"id": index, "epoch": epoch, "bad": wave}
        if self.normalize:
            wave = normalize_wave(wave)
        start = 0
        if self.max_sample_size is not None and wave.numel() > self.max_sample_size:
            size = self.max_sample_size
            start = (crop_offset(wave.numel(), size, self.seed, epoch, index, step=self.crop_step)
                     if self.random_crop else 0)
            wave = wave[start: start + size]
        sample: dict[str, Any] = {"id": index, "epoch": epoch, "source": wave}
        if self.labels is not None:
            sample["target"] = torch.tensor(self.labels[item], dtype=torch.long)
        if self.frame_labels is not None:
            first = start // self.crop_step
            frames = self.frame_labels[item][first: first + self._frames(wave.numel())]
            sample["frame_labels"] = torch.from_numpy(frames)
        return sample

    def load_wave(self, item: int) -> torch.Tensor | str:
        """Manifest item ``item``'s waveform ``[S]`` at 16 kHz, or the reason it cannot be used (where the
        audio comes from: a subclass reading another store overrides only this)."""
        try:
            wave, _ = load_audio(self.manifest.full_path(item), SAMPLE_RATE)
        except AudioError as err:
            return err.reason
        expected = self.manifest.sizes[item]
        if wave.numel() != expected:
            return (f"decoded {wave.numel()} samples but the manifest says {expected}; the file changed "
                    "since preparation: re-run speechcl prepare")
        return wave

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
        waves, frame_labels = [], []
        for sample, length in zip(samples, lengths):
            wave = sample["source"]
            start = 0
            if length > size:  # crop to the shortest item (pad=False)
                start = (crop_offset(length, size, self.seed, sample["epoch"], sample["id"], _CROP_BATCH,
                                     step=self.crop_step)
                         if self.random_crop else 0)
                wave = wave[start: start + size]
            waves.append(wave)
            if self.frame_labels is not None:
                first = start // self.crop_step
                frame_labels.append(sample["frame_labels"][first: first + self._frames(wave.numel())])
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
        if self.frame_labels is not None:
            frames = self._frames(source.shape[1]) if samples else 0
            out = torch.full((len(frame_labels), frames), FRAME_LABEL_PAD, dtype=torch.long)
            for row, labels in enumerate(frame_labels):
                out[row, : labels.numel()] = labels
            batch["labels"] = out
        return batch
