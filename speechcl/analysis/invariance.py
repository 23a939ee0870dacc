"""How invariant each layer of a model is to each transformation of its input: ``h(t(x))`` against ``h(x)``.

For every input waveform ``x``, every :class:`Transformation` ``t`` (one augmentation of
:mod:`speechcl.audio.augment` at a fixed strength) and every hidden state ``l`` (0 = input to the first
transformer layer, ... L = output of the last; :meth:`Wav2Vec2Encoder.extract_features` order), two
similarities between ``h_l(x)`` and ``h_l(t(x))`` are measured:

- **frame-aligned cosine**: frame ``k`` of ``t(x)`` is compared with ``x`` at the same moment of the original
  audio, found through the transformation's known time map (output sample = ``scale * input sample +
  offset``: speed scales time by ``1 / factor``, a time shift offsets it; every other transformation keeps
  time). A frame is placed at the centre of its receptive field (``k * hop + (field - 1) / 2``, 320 and 400
  samples for wav2vec 2.0), so frame ``k`` of ``t(x)`` sits at the fractional frame position
  ``p = ((k * hop + c - offset) / scale - c) / hop`` of ``x`` (``c = (field - 1) / 2``). With ``alignment=
  "linear"`` (default) ``h(x)`` is read at ``p`` by linear interpolation between frames ``floor(p)`` and
  ``floor(p) + 1`` (exactly frame ``p`` when ``p`` is a whole number, e.g. a shift by a whole number of hops);
  ``"nearest"`` takes frame ``floor(p + 0.5)``. Only frames of ``t(x)`` whose position falls inside ``x``
  (``0 <= p <= T_x - 1``; nearest: ``-0.5 <= p < T_x - 0.5``) are compared, so content a shift pushed out or
  padded in is left out. The cosine is averaged over a file's aligned frames, then over the files;
- **linear CKA** (:mod:`speechcl.analysis.cka`) between the aligned frames of ``x`` (interpolated as above)
  and those of ``t(x)``, pooled over all files.

Strengths are fixed (the ``DEFAULT_TRANSFORMATIONS`` catalogue, or ``name:key=value,...``); the random
signal of a transformation (noise, room response) comes from the augmentation chain's generator seeded by
``(seed, file index)``, so results are deterministic given ``seed``. Built-in sanity: ``identity`` (and any
transformation that leaves a waveform unchanged) reuses ``h(x)`` and gives exactly 1 for both measures; a
model fed per-utterance normalised audio (``normalize=True``, as LARGE LV-60 models are) is gain-invariant
(1 up to float rounding). Babble mixes the next ``speakers`` input files (cyclically) into each file and
needs at least two files.

Where labels exist, how much each probe's score drops under ``t`` (``InvarianceConfig.probes``, ``--probe
TASK``): the heads ``speechcl probe`` trains on the clean training split are scored on the test split and on
its transformed copies, frame labels carried through the same time map
(:mod:`speechcl.analysis.probe_invariance`); ``identity`` drops exactly 0. Without an ``input``, cosine and CKA
are measured on the probes' test utterances, from the same cached clean and transformed features.

Outputs (:func:`write_outputs`, each atomic): ``results.json``, ``results.md`` (one table per measure:
layers × transformations, and one per probe: heads × transformations) and ``invariance_heatmap.png``.
"""

from __future__ import annotations

import inspect
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm import tqdm

from speechcl.analysis.cka import LinearCKA
from speechcl.audio.augment.chain import TRANSFORMS, Augmenter, time_map
from speechcl.audio.io import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, load_audio, pad_batch
from speechcl.utils.io import write_report

if TYPE_CHECKING:
    from speechcl.analysis.probe import ProbeConfig

IDENTITY = "identity"
ALIGNMENTS = ("linear", "nearest")
DEFAULT_CACHE_BYTES = 2 << 30


# --- transformations at fixed strengths ----------------------------------------------------------------------

@dataclass(frozen=True)
class Transformation:
    """One transformation at a fixed strength: a ``label`` (column of the tables), the augmentation ``name``
    (a key of :data:`speechcl.audio.augment.chain.TRANSFORMS`, or ``"identity"``) and its scalar ``params``
    (missing ones take the transform's default, which must then be a fixed value)."""

    label: str
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.name != IDENTITY and self.name not in TRANSFORMS:
            raise ValueError(f"transformation {self.label!r}: unknown name {self.name!r}; valid names are "
                             f"{[IDENTITY, *sorted(TRANSFORMS)]}")
        if self.name == IDENTITY and self.params:
            raise ValueError(f"transformation {self.label!r}: identity takes no parameters, got {dict(self.params)}")
        try:  # checks the parameters: unknown keys, ranges, defaults that are not one fixed value
            self.time_map()
        except ValueError as err:
            raise ValueError(f"transformation {self.label!r}: {err} (write it as {self.name}:KEY=VALUE,...)") from None

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    def config(self) -> dict[str, Any]:
        """The augmentation-chain entry applying it always (``p = 1``)."""
        return {"name": self.name, "p": 1.0, **self.kwargs}

    def time_map(self, sample_rate: int = SAMPLE_RATE) -> tuple[float, float]:
        """``(scale, offset)``: output sample = ``scale * input sample + offset`` (offset in samples)."""
        if self.name == IDENTITY:
            return 1.0, 0.0
        return time_map(self.name, sample_rate, **self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        scale, offset = self.time_map()
        return {"label": self.label, "name": self.name, "params": self.kwargs,
                "time_map": {"scale": scale, "offset_samples": offset}}


def transformation(label: str, name: str, **params: Any) -> Transformation:
    """:class:`Transformation` ``label`` applying augmentation ``name`` with ``params``."""
    return Transformation(label, name, tuple(params.items()))


DEFAULT_TRANSFORMATIONS: tuple[Transformation, ...] = (
    transformation(IDENTITY, IDENTITY),
    transformation("noise_white_20dB", "noise", snr_db=20.0, color="white"),
    transformation("noise_white_10dB", "noise", snr_db=10.0, color="white"),
    transformation("noise_white_0dB", "noise", snr_db=0.0, color="white"),
    transformation("noise_pink_10dB", "noise", snr_db=10.0, color="pink"),
    transformation("babble_10dB", "babble", snr_db=10.0, speakers=3),
    transformation("speed_0.9", "speed", factor=0.9),
    transformation("speed_1.1", "speed", factor=1.1),
    transformation("pitch_-2st", "pitch", semitones=-2.0),
    transformation("pitch_+2st", "pitch", semitones=2.0),
    transformation("reverb_0.5s", "reverb", rt60=0.5, drr_db=0.0),
    transformation("telephone", "band_limit", low_hz=300.0, high_hz=3400.0),
    transformation("gain_-6dB", "gain", db=-6.0),
    transformation("gain_+6dB", "gain", db=6.0),
    transformation("polarity", "polarity"),
    transformation("clip_0.5", "clip", level=0.5),
    transformation("mu_law_8bit", "mu_law", bits=8),
    transformation("shift_20ms", "time_shift", shift_ms=20.0),  # one hop: frame k of t(x) is frame k-1 of x
    transformation("shift_10ms", "time_shift", shift_ms=10.0),  # half a hop: the worst case for frames
    transformation("shift_3ms", "time_shift", shift_ms=3.0),
)
"""The default set (``--transforms default``): noise at 20/10/0 dB (white) and 10 dB (pink), babble, speed
0.9/1.1, pitch ±2 semitones, reverberation, the telephone band, gain ±6 dB, polarity, clipping at half the
peak, 8-bit μ-law and time shifts of one hop, half a hop and 3 ms, with ``identity`` as the reference column."""

CATALOGUE: dict[str, Transformation] = {t.label: t for t in DEFAULT_TRANSFORMATIONS}


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_transformation(token: str) -> Transformation:
    """A catalogue label (``speed_0.9``) or ``NAME[:KEY=VALUE[,KEY=VALUE...]]`` (``noise:snr_db=5,color=brown``;
    the token is the label).

    Raises:
        ValueError: an unknown name or key, a value out of range, or a malformed token.
    """
    token = token.strip()
    if token in CATALOGUE:
        return CATALOGUE[token]
    name, _, rest = token.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"transformation {token!r}: expected NAME:KEY=VALUE,KEY=VALUE, got {item!r}")
        params[key.strip()] = _value(value.strip())
    if name not in TRANSFORMS and name != IDENTITY:
        raise ValueError(f"transformation {token!r} is neither a label of the default set ({', '.join(CATALOGUE)}) "
                         f"nor NAME[:KEY=VALUE,...] with NAME one of {[IDENTITY, *sorted(TRANSFORMS)]}")
    return transformation(token, name, **params)


def resolve_transformations(tokens: Sequence[str] | None) -> list[Transformation]:
    """The transformations named by ``tokens`` (``None`` or ``["default"]``: :data:`DEFAULT_TRANSFORMATIONS`;
    ``default`` may be mixed with other tokens), in order.

    Raises:
        ValueError: a bad token (:func:`parse_transformation`) or a label given twice.
    """
    chosen: list[Transformation] = []
    for token in tokens or ["default"]:
        chosen += DEFAULT_TRANSFORMATIONS if token.strip() == "default" else [parse_transformation(token)]
    labels = [t.label for t in chosen]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"transformations {repeated} are given more than once")
    if not chosen:
        raise ValueError("no transformations selected")
    return chosen


def apply_transformation(t: Transformation, wave: Tensor, *, seed: int = 0, item: int = 0,
                         others: Sequence[Tensor] = ()) -> tuple[Tensor, float, float]:
    """``t(wave)`` for one waveform ``[S]`` at 16 kHz: ``(wave' [S'], scale, offset)`` with the time map
    output sample = ``scale * input sample + offset``. ``identity`` returns ``wave`` itself.

    The augmentation chain (``Augmenter``, seed ``seed``) draws the random signal from ``(seed, item)``;
    ``others`` (waveforms ``[S_j]``) are batched after ``wave`` for babble, whose talkers they are.
    """
    if wave.dim() != 1:
        raise ValueError(f"apply_transformation expects one waveform [samples], got shape {tuple(wave.shape)}")
    if t.name == IDENTITY:
        return wave, 1.0, 0.0
    augmenter = Augmenter({"transforms": [t.config()], "seed": int(seed)})
    batch, padding = pad_batch([wave, *others])
    ids = torch.full((batch.shape[0],), int(item), dtype=torch.long)
    out, mask = augmenter(batch.to(wave.device), padding.to(wave.device) if bool(padding.any()) else None, ids, 0)
    length = out.shape[1] if mask is None else int((~mask[0]).sum())
    scale, offset = augmenter.time_maps(ids[:1], 0)
    return out[0, :length], float(scale[0]), float(offset[0])


# --- frame alignment and similarity --------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameAlignment:
    """Which frames of ``t(x)`` are compared with which point of ``x``: frame ``target[i]`` of ``t(x)`` with
    ``(1 - weight[i]) * h_x[lower[i]] + weight[i] * h_x[upper[i]]`` (all ``[N]``; weight float64 in [0, 1))."""

    target: Tensor
    lower: Tensor
    upper: Tensor
    weight: Tensor

    def __len__(self) -> int:
        return int(self.target.numel())

    def reference(self, hidden: Tensor) -> Tensor:
        """``hidden`` ``[..., T_x, D]`` (frames of ``x``) read at the aligned positions: ``[..., N, D]`` float64."""
        h = hidden.double()
        w = self.weight.to(h.device)[:, None]
        return (1.0 - w) * h[..., self.lower, :] + w * h[..., self.upper, :]

    def targets(self, hidden: Tensor) -> Tensor:
        """``hidden`` ``[..., T_t, D]`` (frames of ``t(x)``) at the compared frames: ``[..., N, D]`` float64."""
        return hidden[..., self.target, :].double()


def align_frames(frames_t: int, frames_x: int, scale: float, offset: float, hop: int, receptive_field: int,
                 alignment: str = "linear") -> FrameAlignment:
    """Align the ``frames_t`` frames of ``t(x)`` with the ``frames_x`` frames of ``x`` through the time map
    (output sample = ``scale * input sample + offset``), as the module docstring describes.

    A shift by ``hop`` samples (``scale = 1``, ``offset = hop``) pairs frame ``k`` of ``t(x)`` with frame
    ``k - 1`` of ``x`` (weight 0) and leaves frame 0 out.
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if not scale > 0 or hop <= 0 or receptive_field <= 0:
        raise ValueError(f"need scale > 0, hop > 0 and receptive_field > 0, got {scale}, {hop}, {receptive_field}")
    centre = (receptive_field - 1) / 2.0
    k = torch.arange(frames_t, dtype=torch.float64)
    pos = ((k * hop + centre - offset) / scale - centre) / hop
    whole = pos.round()
    pos = torch.where((pos - whole).abs() < 1e-9, whole, pos)  # whole-frame positions stay whole
    if alignment == "nearest":
        nearest = torch.floor(pos + 0.5)
        keep = (nearest >= 0) & (nearest <= frames_x - 1)
        index = nearest[keep].long()
        return FrameAlignment(k[keep].long(), index, index, torch.zeros(index.shape[0], dtype=torch.float64))
    keep = (pos >= 0) & (pos <= frames_x - 1)
    pos = pos[keep]
    lower = pos.floor()
    weight = pos - lower
    lower = lower.long()
    upper = torch.clamp(lower + 1, max=max(frames_x - 1, 0))
    return FrameAlignment(k[keep].long(), lower, upper, weight)


def frame_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of paired frames ``a``, ``b`` ``[..., N, D]`` in float64: ``[..., N]``.

    Computed as ``a·b / sqrt(|a|² |b|²)``, which is exactly 1 for ``b == a``; two zero vectors give 1, one zero
    vector 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"frame_cosine needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    dot = (a * b).sum(dim=-1)
    den = (a * a).sum(dim=-1) * (b * b).sum(dim=-1)
    both_zero = (a == 0).all(dim=-1) & (b == 0).all(dim=-1)
    cos = dot / den.sqrt().clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(both_zero, torch.ones_like(cos), cos)


# --- the per-layer, per-transformation tables ----------------------------------------------------------------

Encode = Callable[[Tensor], Tensor]
"""A model as the analysis sees it: one 16 kHz waveform ``[S]`` → hidden states ``[layers, T, D]`` (float, CPU);
raises ``ValueError`` for a waveform it cannot encode (shorter than the receptive field)."""


@dataclass
class InvarianceTables:
    """Per transformation label: ``cosine[label][l]`` and ``cka[label][l]`` for hidden state ``layers[l]``
    (NaN where nothing was compared), the compared ``frames`` and ``files``, and what was ``skipped``
    (``{"file", "transform", "reason"}``; transform ``"*"``: the file itself)."""

    layers: list[int]
    cosine: dict[str, list[float]] = field(default_factory=dict)
    cka: dict[str, list[float]] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, label: str, similarity: SimilarityAccumulator) -> None:
        """Record transformation ``label``'s accumulated measures."""
        layers = len(self.layers)
        self.cosine[label], self.cka[label] = similarity.cosine(layers), similarity.cka(layers)
        self.files[label], self.frames[label] = similarity.files, similarity.frames


NO_COMMON_FRAMES = "no frames in common after the time map"


class SimilarityAccumulator:
    """Frame-aligned cosine and linear CKA of one transformation, accumulated file by file (module docstring).

    Args:
        hop, receptive_field: the frame geometry in samples (wav2vec 2.0: 320, 400).
        alignment: ``"linear"`` or ``"nearest"``.
    """

    def __init__(self, hop: int, receptive_field: int, alignment: str = "linear") -> None:
        self.hop, self.receptive_field, self.alignment = hop, receptive_field, alignment
        self.files = self.frames = 0
        self._cka: list[LinearCKA] = []
        self._cosine: Tensor | None = None

    def add(self, hx: Tensor, ht: Tensor, scale: float, offset: float) -> bool:
        """Compare ``h(x)`` ``[layers, T_x, D]`` with ``h(t(x))`` ``[layers, T_t, D]`` (time map ``scale``,
        ``offset``); ``False`` (nothing added) when no frame of ``t(x)`` falls inside ``x``."""
        aligned = align_frames(ht.shape[-2], hx.shape[-2], scale, offset, self.hop, self.receptive_field,
                               self.alignment)
        if len(aligned) == 0:
            return False
        x, y = aligned.reference(hx), aligned.targets(ht)  # [layers, N, D] each
        if self._cosine is None:
            self._cka = [LinearCKA(x.shape[-1], y.shape[-1]) for _ in range(x.shape[0])]
            self._cosine = torch.zeros(x.shape[0], dtype=torch.float64)
        self._cosine += frame_cosine(x, y).mean(dim=-1)
        for layer, acc in enumerate(self._cka):
            acc.update(x[layer], y[layer])
        self.files += 1
        self.frames += len(aligned)
        return True

    def cosine(self, layers: int) -> list[float]:
        """Mean over files of the mean cosine over aligned frames, per hidden state (NaN before any file)."""
        return (self._cosine / self.files).tolist() if self._cosine is not None else [math.nan] * layers

    def cka(self, layers: int) -> list[float]:
        """Linear CKA over the aligned frames of all files, per hidden state (NaN before any file)."""
        return [acc.value() for acc in self._cka] if self._cka else [math.nan] * layers


def _babble_others(t: Transformation, waves: Sequence[Tensor], index: int) -> list[Tensor]:
    if t.name != "babble":
        return []
    speakers = int(t.kwargs.get("speakers", TRANSFORMS["babble"].params["speakers"].default))
    count = min(speakers, len(waves) - 1)
    return [waves[(index + j) % len(waves)] for j in range(1, count + 1)]


def measure_invariance(encode: Encode, waves: Sequence[Tensor], transformations: Sequence[Transformation], *,
                       hop: int, receptive_field: int, keys: Sequence[str] | None = None, seed: int = 0,
                       alignment: str = "linear", cache_bytes: int = DEFAULT_CACHE_BYTES,
                       progress: bool = False) -> InvarianceTables:
    """Cosine and CKA per hidden state and transformation (see the module docstring).

    Args:
        encode: hidden states of one waveform (:data:`Encode`).
        waves: the inputs, 16 kHz ``[S_i]`` each; ``keys`` name them in ``skipped`` (default their index).
        transformations: what to apply; the file index is the item id of the augmentation's random draws.
        hop, receptive_field: the frame geometry in samples (wav2vec 2.0: 320, 400).
        seed: the augmentation seed.
        alignment: ``"linear"`` or ``"nearest"`` (module docstring).
        cache_bytes: ``h(x)`` of the first files is kept in memory up to this size and reused by every
            transformation; the rest is recomputed for each.
        progress: show a progress bar over transformations × files.
    """
    keys = [str(i) for i in range(len(waves))] if keys is None else list(keys)
    if len(keys) != len(waves):
        raise ValueError(f"got {len(keys)} keys for {len(waves)} waveforms")
    if not waves:
        raise ValueError("no input waveforms to analyse")
    tables = InvarianceTables(layers=[])
    cache: dict[int, Tensor] = {}
    cached = 0
    unusable: set[int] = set()

    def reference(i: int) -> Tensor | None:
        nonlocal cached
        if i in cache:
            return cache[i]
        if i in unusable:
            return None
        try:
            hidden = encode(waves[i])
        except ValueError as err:
            unusable.add(i)
            tables.skipped.append({"file": keys[i], "transform": "*", "reason": str(err)})
            return None
        size = hidden.element_size() * hidden.numel()
        if cached + size <= cache_bytes:
            cache[i], cached = hidden, cached + size
        return hidden

    with tqdm(total=len(transformations) * len(waves), desc="invariance", unit="file", disable=not progress,
              dynamic_ncols=True) as bar:
        for t in transformations:
            bar.set_description(f"invariance {t.label}")
            similarity = SimilarityAccumulator(hop, receptive_field, alignment)
            if t.name == "babble" and len(waves) < 2:
                tables.skipped.append({"file": "*", "transform": t.label,
                                       "reason": "babble needs at least 2 input files (the others are its talkers)"})
                bar.update(len(waves))
            else:
                for i, wave in enumerate(waves):
                    bar.update(1)
                    hx = reference(i)
                    if hx is None:
                        continue
                    if not tables.layers:
                        tables.layers = list(range(hx.shape[0]))
                    wave_t, scale, offset = apply_transformation(t, wave, seed=seed, item=i,
                                                                 others=_babble_others(t, waves, i))
                    if wave_t is wave or (wave_t.shape == wave.shape and torch.equal(wave_t, wave)):
                        ht = hx  # unchanged audio: the same features, so identity is exactly 1
                    else:
                        try:
                            ht = encode(wave_t)
                        except ValueError as err:
                            tables.skipped.append({"file": keys[i], "transform": t.label, "reason": str(err)})
                            continue
                    if not similarity.add(hx, ht, scale, offset):
                        tables.skipped.append({"file": keys[i], "transform": t.label, "reason": NO_COMMON_FRAMES})
            tables.add(t.label, similarity)
    if not tables.layers:  # every transformation was skipped: still say which hidden states there are
        first = next((h for i in range(len(waves)) if (h := reference(i)) is not None), None)
        tables.layers = [] if first is None else list(range(first.shape[0]))
    if not tables.layers:
        raise ValueError(f"none of the {len(waves)} inputs could be analysed: "
                         + "; ".join(f"{s['file']}: {s['reason']}" for s in tables.skipped[:3]))
    for label, values in list(tables.cosine.items()):  # transformations before the first usable file
        if len(values) != len(tables.layers):
            tables.cosine[label] = [math.nan] * len(tables.layers)
            tables.cka[label] = [math.nan] * len(tables.layers)
    return tables


# --- end to end ----------------------------------------------------------------------------------------------

@dataclass
class InvarianceConfig:
    """Settings of :func:`run_invariance` (the ``speechcl analyze invariance`` options).

    Args:
        model: a path :func:`speechcl.load_model` accepts (any pretraining objective, CTC, transformers, fairseq).
        input: an audio file, a folder (recursively), a ``.tsv`` manifest or a ``wav.scp``
            (:func:`speechcl.features.inputs.discover_inputs`); ``None`` with ``probes``: the similarity is
            measured on the probes' test utterances, from the probes' own cached features.
        output: the output directory.
        probes: probes whose score drop under each transformation is measured
            (:mod:`speechcl.analysis.probe_invariance`); they share ``model``, ``output``, the manifest
            directory and the test split. Each trains its heads with its own settings and seed.
        transforms: tokens for :func:`resolve_transformations` (``None``: the default set).
        max_files: analyse at most this many inputs, a seeded random subset kept in listing order.
        device: where the model runs.
        seed: augmentation draws and the ``max_files`` subset.
        alignment: ``"linear"`` or ``"nearest"`` frame alignment.
        normalize: per-utterance normalisation before the model (``None``: what the checkpoint records).
        chunk_seconds, overlap_seconds: longer audio is encoded in overlapping chunks (``None``: never).
        extensions: audio extensions searched in folders.
        cache_bytes: memory for reusing ``h(x)`` across transformations.
        progress: progress bar.
    """

    model: str
    input: str | None
    output: str
    transforms: Sequence[str] | None = None
    probes: Sequence[ProbeConfig] = ()
    max_files: int | None = None
    device: str | torch.device = "cpu"
    seed: int = 0
    alignment: str = "linear"
    normalize: bool | None = None
    chunk_seconds: float | None = 60.0
    overlap_seconds: float = 4.0
    extensions: Sequence[str] = AUDIO_EXTENSIONS
    cache_bytes: int = DEFAULT_CACHE_BYTES
    progress: bool = True


@dataclass
class InvarianceResult:
    """What ``results.json`` holds: ``cosine[l][label]`` and ``cka[l][label]`` for hidden state ``layers[l]``
    (``None`` where nothing could be compared), and per probe its clean score, its score under each
    transformation and the drop (:class:`~speechcl.analysis.probe_invariance.ProbeDrop`)."""

    model: str
    inputs: dict[str, Any]
    transforms: list[dict[str, Any]]
    layers: list[int]
    cosine: list[dict[str, float | None]]
    cka: list[dict[str, float | None]]
    frames: dict[str, int]
    files: dict[str, int]
    skipped: list[dict[str, str]]
    settings: dict[str, Any]
    probes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def select_files(count: int, max_files: int | None, seed: int) -> list[int]:
    """Indices of at most ``max_files`` of ``count`` inputs: a random subset drawn with ``seed``, in order."""
    if max_files is None or max_files >= count:
        return list(range(count))
    if max_files < 1:
        raise ValueError(f"max_files must be >= 1, got {max_files}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))
    return sorted(order[:max_files].tolist())


def run_invariance(cfg: InvarianceConfig) -> InvarianceResult:
    """Load the model and the inputs, measure every transformation (and the probes' drops) and write the outputs
    to ``cfg.output``.

    Raises:
        FileNotFoundError: a missing model, input, manifest or label file.
        ValueError: bad settings, an input list without usable audio, or a model that fits no reader.
        Preempted: a signal stopped the probes' feature extraction (rerun to continue).
    """
    from speechcl.analysis.probe_invariance import run_probe_drops
    from speechcl.features.extract import extract_to_directory
    from speechcl.interop.loading import load_model_with_metadata

    started = time.perf_counter()
    if cfg.alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {cfg.alignment!r}")
    if cfg.input is None and not cfg.probes:
        raise ValueError("nothing to analyse: give an input (--input PATH) or probes (--probe TASK with "
                         "--manifest-dir, --train and --test)")
    transformations = resolve_transformations(cfg.transforms)
    for probe in cfg.probes:
        if probe.model != cfg.model or probe.output != cfg.output:
            raise ValueError(f"probe {probe.task}: its model and output must be the analysis's ({cfg.model!r}, "
                             f"{cfg.output!r}), got {probe.model!r}, {probe.output!r}")
    loaded = load_model_with_metadata(cfg.model)
    normalize = loaded[1].normalize if cfg.normalize is None else bool(cfg.normalize)
    settings: dict[str, Any] = {"seed": cfg.seed, "alignment": cfg.alignment, "normalize": normalize}
    if cfg.input is not None:
        tables, inputs, skipped, geometry = _measure_inputs(cfg, loaded[0], normalize, transformations)
        settings.update(geometry)
    drops: list[dict[str, Any]] = []
    if cfg.probes:
        run = run_probe_drops(cfg.probes, transformations, loaded, seed=cfg.seed, alignment=cfg.alignment)
        drops = [d.to_dict() for d in run.drops]
        if cfg.input is None:
            tables, inputs, skipped = run.tables, run.inputs, []
            chunking = inspect.signature(extract_to_directory).parameters  # the probes' cache extracts so
            settings.update(normalize=run.normalize, hop=run.hop, receptive_field=run.receptive_field,
                            chunk_seconds=chunking["chunk_seconds"].default,
                            overlap_seconds=chunking["overlap_seconds"].default)
        skipped = skipped + run.skipped
    del loaded
    labels = [t.label for t in transformations]
    settings.update(max_files=cfg.max_files, device=str(cfg.device),
                    elapsed_seconds=round(time.perf_counter() - started, 2))
    result = InvarianceResult(
        model=str(cfg.model), inputs=inputs, transforms=[t.to_dict() for t in transformations], layers=tables.layers,
        cosine=[{label: _finite(tables.cosine[label][i]) for label in labels} for i in range(len(tables.layers))],
        cka=[{label: _finite(tables.cka[label][i]) for label in labels} for i in range(len(tables.layers))],
        frames=tables.frames, files=tables.files, skipped=skipped + tables.skipped, settings=settings, probes=drops,
    )
    write_outputs(result, cfg.output)
    return result


def _measure_inputs(cfg: InvarianceConfig, model: torch.nn.Module, normalize: bool,
                    transformations: Sequence[Transformation]
                    ) -> tuple[InvarianceTables, dict[str, Any], list[dict[str, str]], dict[str, Any]]:
    """Cosine and CKA over ``cfg.input``: ``(tables, inputs, skipped files, frame geometry and chunking)``."""
    from speechcl.features.extractor import FeatureExtractor
    from speechcl.features.inputs import discover_inputs

    assert cfg.input is not None
    items = discover_inputs(cfg.input, cfg.extensions)
    if not items:
        raise ValueError(f"{cfg.input}: no audio files found (extensions {', '.join(cfg.extensions)})")
    items = [items[i] for i in select_files(len(items), cfg.max_files, cfg.seed)]
    extractor = FeatureExtractor(model, "all", device=cfg.device, chunk_seconds=cfg.chunk_seconds,
                                 overlap_seconds=cfg.overlap_seconds, normalize=normalize)

    def encode(wave: Tensor) -> Tensor:
        hidden = extractor.extract([wave])[0]
        return hidden[None] if hidden.dim() == 2 else hidden

    waves, keys, skipped = [], [], []
    for item in items:
        try:
            wave, _ = load_audio(item.path, SAMPLE_RATE)
        except AudioError as err:
            skipped.append({"file": item.key, "transform": "*", "reason": err.reason})
            continue
        waves.append(wave)
        keys.append(item.key)
    if not waves:
        raise ValueError(f"{cfg.input}: none of the {len(items)} audio files could be read: "
                         + "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3]))
    tables = measure_invariance(encode, waves, transformations, hop=extractor.hop,
                                receptive_field=extractor.receptive_field, keys=keys, seed=cfg.seed,
                                alignment=cfg.alignment, cache_bytes=cfg.cache_bytes, progress=cfg.progress)
    inputs = {"path": str(cfg.input), "count": len(waves), "files": keys,
              "seconds": round(sum(w.shape[0] for w in waves) / SAMPLE_RATE, 3)}
    geometry = {"hop": extractor.hop, "receptive_field": extractor.receptive_field,
                "chunk_seconds": cfg.chunk_seconds, "overlap_seconds": cfg.overlap_seconds}
    return tables, inputs, skipped, geometry


# --- outputs -------------------------------------------------------------------------------------------------

def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown_table(result: InvarianceResult) -> str:
    """``results.md``: the settings, then one table per measure (rows: hidden states, columns: transformations)."""
    labels = [t["label"] for t in result.transforms]
    settings = result.settings
    lines = [
        "# Invariance per layer and transformation",
        "",
        f"- model: `{result.model}`",
        f"- inputs: `{result.inputs['path']}` ({result.inputs['count']} files, {result.inputs['seconds']} s)",
        f"- frame alignment: {settings['alignment']} (hop {settings['hop']}, receptive field "
        f"{settings['receptive_field']} samples); normalize: {settings['normalize']}; seed: {settings['seed']}",
        "- hidden state 0 is the input to the first transformer layer, L the output of the last",
        "",
    ]
    for title, table in (("Frame-aligned cosine (mean over files)", result.cosine),
                         ("Linear CKA (aligned frames pooled over files)", result.cka)):
        lines += [f"## {title}", "", "| layer | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for layer, row in zip(result.layers, table):
            lines.append(f"| {layer} | " + " | ".join(_cell(row[label]) for label in labels) + " |")
        lines.append("")
    for probe in result.probes:
        lines += _probe_table(probe, labels)
    lines += ["## Transformations", "", "| label | transform | parameters | time map (scale, offset) | files | frames |",
              "|---|---|---|---|---|---|"]
    for t in result.transforms:
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items()) or "–"
        tm = t["time_map"]
        lines.append(f"| {t['label']} | {t['name']} | {params} | {tm['scale']:.4g}, {tm['offset_samples']:g} | "
                     f"{result.files.get(t['label'], 0)} | {result.frames.get(t['label'], 0)} |")
    if result.skipped:
        lines += ["", f"Skipped ({len(result.skipped)}):", ""]
        lines += [f"- {s['file']} / {s['transform']}: {s['reason']}" for s in result.skipped[:50]]
    lines.append("")
    return "\n".join(lines)


def _probe_table(probe: dict[str, Any], labels: list[str]) -> list[str]:
    """Markdown lines of one probe's drops: rows = heads, cells = score under t and the drop."""
    metric, settings = probe["metric"], probe["probe"]["settings"]
    worse = "clean − t(x)" if probe["higher_is_better"] else "t(x) − clean"
    unit = probe["probe"]["counts"]["unit"]
    lines = [f"## {probe['task']} probe: {metric} under each transformation, and the drop", "",
             f"Heads trained on clean `{probe['probe']['train']}`, scored on `{probe['probe']['test']}` and on its "
             f"transformed copies; a cell is `{metric} (drop)`, drop = {worse} (positive = worse). Chance "
             f"{probe['chance']:.4f}; {settings['head']} heads, {settings['epochs']} epochs, seed {settings['seed']}.",
             "", "| layer | clean | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for name, clean, values, drops in zip(probe["rows"], probe["clean"], probe["transformed"], probe["drop"]):
        cells = ["–" if values[label] is None else f"{values[label]:.4f} ({drops[label]:+.4f})" for label in labels]
        lines.append(f"| {name.replace('_', ' ')} | {clean:.4f} | " + " | ".join(cells) + " |")
    lines += ["", f"Scored {unit}: clean {probe['units']['clean']}; "
              + ", ".join(f"{label} {probe['units'].get(label, 0)}" for label in labels), ""]
    return lines


def heatmap_png(result: InvarianceResult) -> bytes:
    """Two heatmaps (cosine, CKA), hidden states × transformations, colour range [0, 1], then one per probe of
    its drop (heads × transformations, a diverging scale centred on 0: red = worse under t), as PNG bytes."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [t["label"] for t in result.transforms]
    layers = result.layers
    width = max(6.0, 0.5 * len(labels) + 2.5)
    height = max(2.5, 0.32 * len(layers) + 1.8)
    panels: list[tuple[str, list[str], list[dict[str, float | None]], str]] = [
        (f"frame-aligned cosine of h(x) and h(t(x)) — {Path(result.model).name}", [str(k) for k in layers],
         result.cosine, "unit"),
        (f"linear CKA of h(x) and h(t(x)) — {Path(result.model).name}", [str(k) for k in layers], result.cka, "unit"),
    ]
    for probe in result.probes:
        worse = "clean − t(x)" if probe["higher_is_better"] else "t(x) − clean"
        rows = ["ws" if name == "weighted_sum" else name for name in probe["rows"]]
        panels.append((f"{probe['task']} probe: {probe['metric']} drop under t ({worse}; red = worse)", rows,
                       probe["drop"], "drop"))
    fig = Figure(figsize=(width, len(panels) * height), dpi=100)
    FigureCanvasAgg(fig)
    for panel, (title, rows, table, scale) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, panel + 1)
        grid = np.array([[np.nan if row[label] is None else row[label] for label in labels] for row in table],
                        dtype=float).reshape(len(rows), len(labels))
        if scale == "unit":
            options = {"vmin": 0.0, "vmax": 1.0, "cmap": "viridis"}
        else:
            finite = np.abs(grid[np.isfinite(grid)])
            bound = max(float(finite.max()) if finite.size else 0.0, 1e-3)
            options = {"vmin": -bound, "vmax": bound, "cmap": "RdBu_r"}
        image = ax.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", **options)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels if panel == len(panels) - 1 else [], rotation=60, ha="right", fontsize="small")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize="small")
        ax.set_ylabel("hidden state" if scale == "unit" else "head")
        ax.set_title(title, fontsize="medium")
        if len(labels) * len(rows) <= 600:
            for (row, col), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    dark = value <= 0.6 if scale == "unit" else abs(value) > 0.6 * options["vmax"]
                    ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(result: InvarianceResult, output: str | os.PathLike) -> None:
    """``results.json``, ``results.md`` and ``invariance_heatmap.png`` in ``output`` (each atomically)."""
    write_report(output, result.to_dict(), markdown_table(result), "invariance_heatmap.png", heatmap_png(result))
