"""Extract features for a whole corpus into a directory: resumable, sharded, batched by length.

:func:`extract_to_directory` is what ``speechcl extract`` runs:

1. inputs are discovered (:mod:`speechcl.features.inputs`) and split by ``shard=(I, N)``;
2. ``extract_config.json`` in the output directory records the settings, and a rerun with different
   settings is refused unless ``overwrite``;
3. lengths come from the manifest or the file headers; all inputs of the shard, whether their output exists
   or not (outputs are written atomically, so existing means complete), are grouped longest-first into
   batches under ``max_tokens`` samples, so a rerun plans the same batches as an uninterrupted run. Batches
   whose outputs all exist are skipped; any other batch is run whole (padding and neighbours as planned, so
   its features are bit for bit those of an uninterrupted run) and only its missing outputs are written.
   Files are decoded, mixed down and resampled to 16 kHz by DataLoader workers while the model runs;
4. features (:class:`~speechcl.features.extractor.FeatureExtractor`) go to the writer as soon as a batch is
   done. Bad inputs are skipped and listed (``path<TAB>reason``) in ``failed<tag>.tsv``, and nothing is
   written for them: files that cannot be decoded or hold NaN/Inf samples
   (:func:`~speechcl.audio.io.load_audio`), files shorter than the model's receptive field, and files whose
   features come out non-finite ("model produced non-finite features"). A rerun tries them again;
5. SIGTERM or SIGINT (:func:`~speechcl.utils.signals.preemptible`) stops the run after the current batch:
   the writer saves what it buffered, ``failed<tag>.tsv`` is written and :class:`~speechcl.utils.signals.
   Preempted` is raised; rerunning the same command continues.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from speechcl.audio.io import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, audio_info, error_reason, load_audio
from speechcl.data.batching import length_sorted_batches
from speechcl.features.extractor import DEFAULT_MAX_TOKENS, LAST, FeatureExtractor
from speechcl.features.inputs import InputItem, discover_inputs, select_shard
from speechcl.features.writers import FeatureWriter, Hdf5Writer, NpyWriter, ShardWriter
from speechcl.models.feature_encoder import num_frames
from speechcl.utils.io import atomic_write_json, atomic_write_text, remove_stale_temporaries
from speechcl.utils.signals import Preempted, Preemption, preemptible

FORMATS = ("npy", "shards", "hdf5")
SETTINGS_NAME = "extract_config.json"


@dataclass
class ExtractionSummary:
    """What one run did (over its shard of the inputs)."""

    inputs: int = 0  # inputs in this shard
    extracted: int = 0
    skipped: int = 0  # already done by an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    audio_seconds: float = 0.0  # of the extracted inputs
    wall_seconds: float = 0.0
    stopped_by: str = ""  # the signal that stopped the run early ("" when it ran to the end)

    @property
    def speed(self) -> float:
        """Audio seconds processed per wall-clock second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def line(self) -> str:
        return (f"extracted {self.extracted}, skipped {self.skipped} already done, failed {len(self.failed)} "
                f"of {self.inputs} inputs; {self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s "
                f"({self.speed:.1f} audio s/s)")


class _AudioFiles(torch.utils.data.Dataset):
    """Index → ``(index, wave [samples] at 16 kHz or None, error or None)``."""

    def __init__(self, items: Sequence[InputItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        path = self.items[index].path
        try:
            wave, _ = load_audio(path, SAMPLE_RATE)
        except (AudioError, OSError, RuntimeError, ValueError) as err:
            return index, None, error_reason(err)
        return index, wave, None


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def _shard_tag(shard: tuple[int, int]) -> str:
    return "" if shard[1] == 1 else f".shard{shard[0]}of{shard[1]}"


def make_writer(fmt: str, directory: Path, shard: tuple[int, int] = (0, 1), shard_bytes: int = 1 << 30
                ) -> FeatureWriter:
    """The writer for ``fmt`` (``npy``, ``shards`` or ``hdf5``); see :mod:`speechcl.features.writers`."""
    if fmt == "npy":
        return NpyWriter(directory)
    if fmt == "shards":
        return ShardWriter(directory, _shard_tag(shard), shard_bytes)
    if fmt == "hdf5":
        return Hdf5Writer(directory, _shard_tag(shard), shard_bytes)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _check_settings(directory: Path, settings: dict[str, Any], overwrite: bool) -> None:
    path = directory / SETTINGS_NAME
    if path.exists() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != settings:
            changed = sorted(k for k in set(settings) | set(previous or {})
                             if (previous or {}).get(k) != settings.get(k))
            raise ValueError(f"{directory} holds features extracted with other settings ({', '.join(changed)} "
                             f"differ; see {path}); choose another output directory or pass --overwrite")
    atomic_write_json(path, settings)


@dataclass
class _Plan:
    """The batches of one shard, planned over every input whether its output exists or not, so that they are
    the same in a fresh run and in any rerun: a missing output is computed in the batch (same padding, same
    neighbours) an uninterrupted run computes it in, bit for bit."""

    items: list[InputItem]  # the inputs the model can take (readable header, long enough), done or not
    sizes: list[int]  # their lengths in samples at 16 kHz
    missing: list[bool]  # whether an input's output is still to write
    batches: list[list[int]]  # the planned batches holding at least one missing output (fully done ones dropped)

    @property
    def pending(self) -> list[int]:
        return [i for batch in self.batches for i in batch if self.missing[i]]


def _plan(extractor: FeatureExtractor, writer: FeatureWriter, items: Sequence[InputItem], overwrite: bool,
          summary: ExtractionSummary) -> _Plan:
    """Plan the batches of ``items`` (see :class:`_Plan`); the done inputs are counted, the missing ones too
    short for the model (or without a readable header) are reported in ``summary``."""
    missing = [overwrite or not writer.is_done(it.key) for it in items]
    summary.skipped = missing.count(False)
    failed: list[tuple[int, str]] = []
    usable, sizes = [], []
    for index, size in _lengths(items, failed):
        if num_frames(size, extractor.cfg.conv_layers) <= 0:
            failed.append((index, f"too short: {size} samples at 16 kHz, the model needs at least "
                                  f"{extractor.receptive_field}"))
        else:
            usable.append(index)
            sizes.append(size)
    summary.failed.extend((items[index].path, reason) for index, reason in failed if missing[index])
    flags = [missing[i] for i in usable]
    batches = [batch for batch in _file_batches(extractor, sizes) if any(flags[j] for j in batch)]
    return _Plan([items[i] for i in usable], sizes, flags, batches)


def _lengths(items: Sequence[InputItem], failed: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """``(index, samples at 16 kHz)`` of the inputs whose length is known; the others go to ``failed``."""
    out = []
    for index, item in enumerate(items):
        if item.num_samples is not None:
            out.append((index, item.num_samples))
            continue
        try:
            out.append((index, audio_info(item.path).num_samples(SAMPLE_RATE)))
        except AudioError as err:
            failed.append((index, error_reason(err)))
    return out


def extract_to_directory(
    model: nn.Module | str | os.PathLike,
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    layers: str | int | Sequence[int | str] = "last",
    fmt: str = "npy",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    chunk_seconds: float | None = 60.0,
    overlap_seconds: float = 4.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    shard: tuple[int, int] = (0, 1),
    num_workers: int | None = None,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    normalize: bool | None = None,
    overwrite: bool = False,
    shard_bytes: int = 1 << 30,
    progress: bool = True,
    compile: bool = False,
) -> ExtractionSummary:
    """Extract features of every input in ``source`` into ``output_dir`` (see the module docstring).

    Args:
        model: a loaded speechcl model or a path :func:`speechcl.load_model` accepts.
        source: an audio file, a directory, a ``.tsv`` manifest or a Kaldi ``wav.scp``.
        output_dir: where outputs go (layout per ``fmt``: :mod:`speechcl.features.writers`).
        layers, max_tokens, chunk_seconds, overlap_seconds, device, dtype: as
            :class:`~speechcl.features.extractor.FeatureExtractor` (``chunk_seconds=None`` never chunks).
        normalize: per-utterance normalisation; ``None``: what the checkpoint records (``normalize`` in a
            speechcl config, ``do_normalize`` of transformers, the fairseq task's ``normalize``), else off.
        fmt: ``npy`` (default), ``shards`` or ``hdf5``.
        shard: ``(I, N)``: handle inputs ``I, I + N, ...`` only.
        num_workers: audio-decoding processes (default 1, or 0 for a single input).
        overwrite: recompute outputs that exist (and accept changed settings).
        shard_bytes: target size of a shard (``fmt="shards"``) or HDF5 part file (``fmt="hdf5"``): what is
            buffered in memory, and the most work a killed run loses.
        progress: show a progress bar (audio seconds per second) on stderr.
        compile: ``torch.compile`` the transformer layers (:class:`~speechcl.features.extractor.FeatureExtractor`);
            recorded in the settings, since its outputs differ from eager ones by float rounding.

    Returns:
        an :class:`ExtractionSummary`; inputs that failed are listed in ``failed`` and in
        ``output_dir/failed<tag>.tsv``.

    Raises:
        Preempted: SIGTERM/SIGINT stopped the run after a batch (outputs consistent; a rerun continues).
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    model_name = str(Path(model).resolve()) if isinstance(model, str | os.PathLike) else f"<{type(model).__name__}>"
    if isinstance(model, str | os.PathLike):
        from speechcl.interop.loading import load_model_with_metadata

        model, meta = load_model_with_metadata(model)
        normalize = meta.normalize if normalize is None else normalize
    normalize = bool(normalize)
    extractor = FeatureExtractor(model, layers, device=device, dtype=dtype, chunk_seconds=chunk_seconds,
                                 overlap_seconds=overlap_seconds, max_tokens=max_tokens, normalize=normalize,
                                 compile=compile)
    items = select_shard(discover_inputs(source, extensions), *shard)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)  # what writers killed mid-write (kill -9) left behind
    _check_settings(output_dir, {
        "model": model_name, "format": fmt, "dim": extractor.dim,
        "layers": ["last" if i is LAST else i for i in extractor.layers],
        "dtype": str(dtype).removeprefix("torch."), "chunk_seconds": chunk_seconds,
        "overlap_seconds": overlap_seconds if chunk_seconds is not None else None, "normalize": normalize,
        **({"compile": True} if compile else {}),  # (absent when off: earlier output folders stay valid)
    }, overwrite)
    writer = make_writer(fmt, output_dir, shard, shard_bytes)
    summary = ExtractionSummary(inputs=len(items))
    with preemptible() as preemption:
        try:
            plan = _plan(extractor, writer, items, overwrite, summary)
            _run(extractor, writer, plan, summary, num_workers, progress, preemption)
        finally:
            writer.close()
        _write_report(output_dir / f"failed{_shard_tag(shard)}.tsv", summary.failed)
    summary.wall_seconds = time.perf_counter() - start
    if summary.stopped_by:
        done = summary.skipped + summary.extracted
        raise Preempted(f"stopped by {summary.stopped_by} with {done} of {summary.inputs} inputs done and "
                        "saved; rerun the same command to continue", preemption.signum)
    return summary


def _write_report(path: Path, failed: Sequence[tuple[str, str]]) -> None:
    """``path<TAB>reason`` per failed input, atomically; no file when nothing failed."""
    if failed:
        atomic_write_text(path, "".join(f"{item}\t{reason}\n" for item, reason in failed))
    else:
        path.unlink(missing_ok=True)


def _file_batches(extractor: FeatureExtractor, sizes: Sequence[int]) -> list[list[int]]:
    """Longest-first batches of whole files; a file that will be chunked is a batch of its own."""
    limit = extractor.chunk_samples
    chunked = [i for i, n in enumerate(sizes) if limit is not None and n > limit]
    whole = [i for i, n in enumerate(sizes) if limit is None or n <= limit]
    batches = [[i] for i in sorted(chunked, key=lambda i: -sizes[i])]
    grouped = length_sorted_batches([sizes[i] for i in whole], extractor.max_tokens, longest_first=True)
    return batches + [[whole[j] for j in batch] for batch in grouped]


def _run(extractor: FeatureExtractor, writer: FeatureWriter, plan: _Plan, summary: ExtractionSummary,
         num_workers: int | None, progress: bool, preemption: Preemption) -> None:
    """Decode and extract the batches of ``plan`` whole, and write their missing outputs; stop after a batch
    when ``preemption`` is set (``summary.stopped_by`` names the signal)."""
    if preemption.requested():
        summary.stopped_by = preemption.name
    if not plan.batches or summary.stopped_by:
        return
    items, sizes, missing = plan.items, plan.sizes, plan.missing
    planned = sum(len(batch) for batch in plan.batches)
    if num_workers is None:
        num_workers = 1 if planned > 1 else 0
    loader = torch.utils.data.DataLoader(
        _AudioFiles(items), batch_sampler=plan.batches, num_workers=num_workers,
        collate_fn=_collate, worker_init_fn=_one_thread if num_workers else None,
        prefetch_factor=2 if num_workers else None,
    )
    bar = tqdm(total=round(sum(sizes[i] for i in plan.pending) / SAMPLE_RATE, 1), unit="s", unit_scale=False,
               disable=not progress, desc="extract (audio s)", dynamic_ncols=True)
    try:
        handled = 0
        for batch in loader:
            handled += len(batch)
            good = []
            for index, wave, error in batch:
                if error is None:
                    good.append((index, wave))
                elif missing[index]:
                    summary.failed.append((items[index].path, error))
                    bar.update(round(sizes[index] / SAMPLE_RATE, 3))
            for index, feats in _extract_batch(extractor, good, items, summary):
                if not missing[index]:  # done already: in the batch only so that the others see their padding
                    continue
                if not bool(torch.isfinite(feats).all()):  # the audio was finite: the model is at fault
                    summary.failed.append((items[index].path, "model produced non-finite features (NaN/Inf) "
                                           "for finite audio; check the checkpoint or use --dtype float32"))
                else:
                    writer.write(items[index].key, feats.numpy())
                    summary.extracted += 1
                    summary.audio_seconds += sizes[index] / SAMPLE_RATE
                bar.update(round(sizes[index] / SAMPLE_RATE, 3))
            bar.set_postfix(files=summary.extracted, failed=len(summary.failed), refresh=False)
            if preemption.requested() and handled < planned:
                summary.stopped_by = preemption.name
                break
    finally:
        bar.close()


def _extract_batch(extractor: FeatureExtractor, good: list[tuple[int, torch.Tensor]], items: Sequence[InputItem],
                   summary: ExtractionSummary) -> list[tuple[int, torch.Tensor]]:
    """Features for a batch; if the batch fails (a decoded file shorter than its header said...), retry
    its files one by one so that only the bad ones are reported."""
    if not good:
        return []
    try:
        return list(zip([i for i, _ in good], extractor.extract([w for _, w in good]), strict=True))
    except ValueError as err:
        if len(good) == 1:
            summary.failed.append((items[good[0][0]].path, str(err)))
            return []
    return [pair for single in good for pair in _extract_batch(extractor, [single], items, summary)]
