"""In-memory feature extraction: waveforms in, selected hidden states out.

:class:`FeatureExtractor` wraps a loaded model (any of :func:`speechcl.load_model`'s results) and turns
16 kHz waveforms into ``[frames, dim]`` (one layer) or ``[layers, frames, dim]`` (several) float32 arrays:

- layers follow the hidden-state order of ``extract_features`` and of transformers'
  ``output_hidden_states``: index ``i`` is ``hidden_states[i]`` (0 = input to the first transformer
  layer, ``i`` = output of layer ``i``; negative indices count from the end), ``last`` is
  ``last_hidden_state``, the model's final output (after the final LayerNorm in pre-LN models, where it
  differs from ``hidden_states[-1]``), ``all`` is every entry of ``hidden_states``;
- only the transformer layers the selection needs are run (``--layers 6`` of a 12-layer model runs 6);
- long audio is cut into overlapping chunks and stitched (:mod:`speechcl.features.chunking`); the frame
  count always equals the whole-file formula;
- several waveforms are batched longest-first under a sample budget; the padding mask makes batched output
  equal one-by-one output (to float rounding), for group-norm feature encoders (BASE) too, whose
  statistics over time skip each row's padding (:mod:`speechcl.models.feature_encoder`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechcl.audio.io import SAMPLE_RATE, load_audio, normalize_wave, pad_batch, resample
from speechcl.data.batching import length_sorted_batches
from speechcl.features.chunking import Chunk, plan_chunks
from speechcl.models.feature_encoder import conv_geometry
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, encoder_of

LAST = None
"""Marker in a layer selection for ``last_hidden_state``."""

DEFAULT_MAX_TOKENS = 960_000  # 60 s of 16 kHz audio per batch


def parse_layers(spec: str | int | Sequence[int | str], num_layers: int) -> tuple[int | None, ...]:
    """Resolve a layer selection for a model with ``num_layers`` transformer layers.

    ``spec``: ``"last"`` (default of the CLI), ``"all"``, an index (``6``, ``-1``) or a comma-separated
    list / sequence mixing indices and ``last`` (``"0,6,12"``). Returns hidden-state indices in ``[0,
    num_layers]`` and :data:`LAST` (``None``) for ``last_hidden_state``, in the order given.

    Raises:
        ValueError: an index outside ``[-(num_layers + 1), num_layers]``, a repeated layer or junk.
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return tuple(range(num_layers + 1))
        tokens: list[int | str] = [t.strip() for t in text.split(",")]
    elif isinstance(spec, int):
        tokens = [spec]
    else:
        tokens = list(spec)
    out: list[int | None] = []
    for token in tokens:
        if token == "last":
            out.append(LAST)
            continue
        try:
            index = int(token)
        except (TypeError, ValueError):
            raise ValueError(f"layer {token!r} in {spec!r} is not an index, 'last' or 'all'") from None
        if not -(num_layers + 1) <= index <= num_layers:
            raise ValueError(f"layer {index} is out of range: the model has hidden states 0..{num_layers} "
                             f"({num_layers} transformer layers)")
        out.append(index % (num_layers + 1))
    if not out:
        raise ValueError("empty layer selection")
    if len(set(out)) != len(out):
        raise ValueError(f"layer selection {spec!r} repeats a layer")
    return tuple(out)


@contextlib.contextmanager
def _first_layers(encoder: Wav2Vec2Encoder, count: int) -> Iterator[None]:
    """Temporarily keep only the first ``count`` transformer layers (restored on exit)."""
    context = encoder.encoder
    full = context.layers
    if count >= len(full):
        yield
        return
    context.layers = nn.ModuleList(list(full)[:count])
    try:
        yield
    finally:
        context.layers = full


@dataclass(frozen=True)
class _Piece:
    item: int  # which input waveform
    chunk: Chunk


class FeatureExtractor:
    """Selected hidden states for 16 kHz waveforms (see the module docstring).

    Args:
        model: a speechcl model (pretraining, CTC or bare encoder); put in eval mode and moved to ``device``.
        layers: layer selection (:func:`parse_layers`); default ``"last"``.
        device: where the model runs.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (autocast; outputs are float32 either way).
        chunk_seconds: audio longer than this is cut into overlapping chunks; ``None`` never chunks.
        overlap_seconds: overlap of consecutive chunks.
        max_tokens: sample budget of one padded batch.
        normalize: zero-mean, unit-variance per utterance before the model (fairseq ``normalize=True``,
            LARGE LV-60 models); applied to the whole file before chunking.
        compile: ``torch.compile`` the encoder's transformer layers (in place, on ``model`` itself; dynamic
            shapes, so batches of any length reuse one graph: :mod:`speechcl.models.compile`). Outputs
            equal the eager ones to float rounding; worth it when the corpus outlasts the compilation.
    """

    def __init__(self, model: nn.Module, layers: str | int | Sequence[int | str] = "last", *,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 chunk_seconds: float | None = None, overlap_seconds: float = 0.0,
                 max_tokens: int = DEFAULT_MAX_TOKENS, normalize: bool = False, compile: bool = False) -> None:
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        if chunk_seconds is not None and chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be positive (or None to disable chunking), got {chunk_seconds}")
        if overlap_seconds < 0:
            raise ValueError(f"overlap_seconds must be >= 0, got {overlap_seconds}")
        self.encoder = encoder_of(model).to(device).eval()
        if compile:
            from speechcl.models.compile import compile_encoder

            compile_encoder(self.encoder)
        self.device = torch.device(device)
        self.dtype = dtype
        self.cfg = self.encoder.cfg
        self.layers = parse_layers(layers, self.cfg.encoder_layers)
        self.chunk_samples = None if chunk_seconds is None else int(round(chunk_seconds * SAMPLE_RATE))
        self.overlap_samples = int(round(overlap_seconds * SAMPLE_RATE))
        self.max_tokens = int(max_tokens)
        self.normalize = normalize
        self.hop, self.receptive_field = conv_geometry(self.cfg.conv_layers)
        if self.chunk_samples is not None:  # fail early on an impossible chunk / overlap pair
            plan_chunks(3 * self.chunk_samples, self.cfg.conv_layers, self.chunk_samples, self.overlap_samples)

    @property
    def dim(self) -> int:
        return self.cfg.encoder_embed_dim

    @property
    def output_shape_suffix(self) -> tuple[int, ...]:
        """``(dim,)`` for one layer, ``(layers, dim)`` for several (frames go in between)."""
        return (self.dim,) if len(self.layers) == 1 else (len(self.layers), self.dim)

    def plan(self, num_samples: int) -> list[Chunk]:
        """Chunks of a waveform of ``num_samples`` samples (raises ``ValueError`` when too short)."""
        return plan_chunks(num_samples, self.cfg.conv_layers, self.chunk_samples, self.overlap_samples)

    def __call__(self, wave: Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """Features of one waveform ``[samples]`` (any rate; resampled to 16 kHz): see :meth:`extract`."""
        if sample_rate != SAMPLE_RATE:
            wave = resample(wave.float(), sample_rate, SAMPLE_RATE)
        return self.extract([wave])[0]

    def extract_file(self, path: str | os.PathLike) -> Tensor:
        """Features of an audio file (any rate / channels: mixed down and resampled by ``load_audio``)."""
        wave, _ = load_audio(path, SAMPLE_RATE)
        return self.extract([wave])[0]

    def extract(self, waves: Sequence[Tensor]) -> list[Tensor]:
        """Features of 16 kHz waveforms ``[samples]`` each, batched under the sample budget.

        Returns, per waveform, a float32 CPU tensor ``[frames, dim]`` (one layer) or ``[layers, frames,
        dim]`` with ``frames == conv_output_lengths(samples)``.

        Raises:
            ValueError: a waveform is not 1-D or is shorter than the receptive field (400 samples for BASE).
        """
        waves = [self._prepare(w, i) for i, w in enumerate(waves)]
        pieces = [_Piece(i, c) for i, w in enumerate(waves) for c in self.plan(w.shape[0])]
        outputs = [self._empty(sum(c.keep_to - c.keep_from for c in self.plan(w.shape[0]))) for w in waves]
        lengths = [p.chunk.num_samples for p in pieces]
        for batch in length_sorted_batches(lengths, self.max_tokens, longest_first=True):
            chosen = [pieces[j] for j in batch]
            feats = self._forward([waves[p.item][p.chunk.start:p.chunk.end] for p in chosen])
            for p, f in zip(chosen, feats, strict=True):
                c = p.chunk
                span = slice(c.frame_offset, c.frame_offset + c.keep_to - c.keep_from)
                outputs[p.item][:, span] = f[:, c.keep_from:c.keep_to]
        return [o[0] if len(self.layers) == 1 else o for o in outputs]

    # --- internals ------------------------------------------------------------------------------------
    def _prepare(self, wave: Tensor, index: int) -> Tensor:
        if not isinstance(wave, Tensor):
            wave = torch.as_tensor(wave)
        if wave.dim() != 1:
            raise ValueError(f"waveform {index} must be 1-D [samples] at 16 kHz, got shape {tuple(wave.shape)}")
        wave = wave.float()
        return normalize_wave(wave) if self.normalize else wave

    def _empty(self, frames: int) -> Tensor:
        return torch.empty(len(self.layers), frames, self.dim, dtype=torch.float32)

    def _forward(self, segments: list[Tensor]) -> list[Tensor]:
        """One padded batch → per segment ``[layers, valid frames, dim]`` float32 on the CPU."""
        batch, padding = pad_batch(segments)
        batch = batch.to(self.device)
        mask = padding.to(self.device) if bool(padding.any()) else None
        keep = self.cfg.encoder_layers if LAST in self.layers else max(i for i in self.layers if i is not LAST)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.dtype == torch.bfloat16 \
            else contextlib.nullcontext()
        with torch.inference_mode(), autocast, _first_layers(self.encoder, keep):
            out = self.encoder.extract_features(batch, mask)
            stacked = torch.stack([out.last_hidden_state if i is LAST else out.hidden_states[i]
                                   for i in self.layers], dim=1)  # [B, layers, T, D]
            stacked = stacked.float().cpu()
        lengths = out.lengths.tolist()
        return [stacked[b, :, : lengths[b]] for b in range(len(segments))]
