"""Benchmark inference: speechcl's ``extract_features`` against transformers' ``Wav2Vec2Model``.

Both sides return every hidden state (ours always; transformers with ``output_hidden_states=True``), run
without gradients in eval mode, on the same weights (:mod:`speechcl.bench.reference`) and the same
batch of equal-length utterances ``[batch, seconds · 16000]`` (random noise standing in for speech; no
padding). speechcl also runs under ``torch.autocast(device, bfloat16)``; its accuracy is the cosine
similarity of the bf16 final output to the float32 one, per frame, averaged over frames and utterances.
On a GPU (or with ``reference_bf16``) transformers runs under the same autocast too, and the peak memory
of one call per side is read from ``torch.cuda.max_memory_allocated``. With ``compile`` a copy of our
encoder with compiled transformer layers (:mod:`speechcl.models.compile`) is timed in bf16 as well.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from speechcl.bench.memory import call_peak_mb
from speechcl.bench.pretrain import random_batch
from speechcl.bench.reference import autocast, environment, reference_encoder
from speechcl.bench.timing import (
    OURS_BF16,
    OURS_COMPILED,
    OURS_FP32,
    THEIRS_BF16,
    THEIRS_FP32,
    alternate,
    side_ratios,
)
from speechcl.models.config import preset
from speechcl.models.wav2vec2 import Wav2Vec2Encoder
from speechcl.utils.device import resolve_device

SIDES = (OURS_FP32, THEIRS_FP32, OURS_BF16, THEIRS_BF16, OURS_COMPILED)


@dataclass
class InferenceBenchConfig:
    """What :func:`run_inference_bench` measures (``config``: a preset name)."""

    config: str = "base"
    seconds: float = 10.0
    batch_sizes: Sequence[int] = field(default_factory=lambda: (1, 4))
    reps: int = 5
    warmup: int = 1
    device: str = "cpu"
    seed: int = 0
    reference_bf16: bool | None = None  # time transformers under bf16 autocast too (None: on GPUs)
    compile: bool = False  # add the compiled speechcl bf16 side
    compile_backend: str | None = None  # its torch.compile backend (None: speechcl.models.compile's default)

    def sides(self, device: torch.device) -> tuple[str, ...]:
        reference_bf16 = device.type == "cuda" if self.reference_bf16 is None else self.reference_bf16
        return tuple(name for name in SIDES if name in (OURS_FP32, THEIRS_FP32, OURS_BF16)
                     or (name == THEIRS_BF16 and reference_bf16) or (name == OURS_COMPILED and self.compile))


def bf16_cosine(encoder: Wav2Vec2Encoder, wav: torch.Tensor) -> float:
    """Mean over frames of the cosine similarity between the final output ``[B, T, D]`` computed under
    bf16 autocast and in float32, for ``wav [B, S]``."""
    device = wav.device
    reference = encoder.extract_features(wav).last_hidden_state.float()
    with autocast(device, "bf16"):
        low = encoder.extract_features(wav).last_hidden_state.float()
    return float(F.cosine_similarity(low, reference, dim=-1).mean())


def run_inference_bench(opts: InferenceBenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time the three sides per batch size (alternated, medians). Returns a JSON-able dict with, under
    ``batches[<size>]``: ``sides`` (``median_s``, ``audio_s_per_s``, ``times_s``), ``ratios``
    (``speed_fp32`` ours/theirs, ``speed_bf16_vs_fp32`` ours bf16/ours fp32, ``speed_bf16_vs_reference_fp32``),
    ``bf16_cosine`` and ``max_abs_diff_vs_reference`` (ours fp32 vs transformers, final output: a check
    that both compute the same function)."""
    say = progress or (lambda _: None)
    if not opts.batch_sizes or min(opts.batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(opts.batch_sizes)}")
    device = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    ours = Wav2Vec2Encoder(preset(opts.config)).to(device).eval()
    theirs = reference_encoder(ours).eval()

    sides = opts.sides(device)
    compiled = None
    if OURS_COMPILED in sides:
        from speechcl.models.compile import compile_encoder

        compiled = copy.deepcopy(ours)
        compile_encoder(compiled, backend=opts.compile_backend)

    def run_theirs(wav: torch.Tensor, precision: str = "fp32") -> Any:
        with torch.no_grad(), autocast(device, precision):
            return theirs(wav, output_hidden_states=True)

    def run_ours(wav: torch.Tensor, precision: str, model: Wav2Vec2Encoder = ours) -> Any:
        with autocast(device, precision):
            return model.extract_features(wav)

    result: dict[str, Any] = {
        "benchmark": "inference",
        "settings": {"config": opts.config, "seconds": opts.seconds, "batch_sizes": list(opts.batch_sizes),
                     "reps": opts.reps, "warmup": opts.warmup, "sides": list(sides), **environment(device),
                     "transformers_attention": theirs.config._attn_implementation},
        "batches": {},
    }
    for batch in opts.batch_sizes:
        wav = random_batch(batch, opts.seconds, opts.seed, device)
        every: dict[str, Callable[[], object]] = {
            OURS_FP32: lambda wav=wav: run_ours(wav, "fp32"),
            THEIRS_FP32: lambda wav=wav: run_theirs(wav),
            OURS_BF16: lambda wav=wav: run_ours(wav, "bf16"),
            THEIRS_BF16: lambda wav=wav: run_theirs(wav, "bf16"),
            OURS_COMPILED: lambda wav=wav: run_ours(wav, "bf16", compiled),
        }
        calls = {name: every[name] for name in sides}
        say(f"timing inference, batch {batch} x {opts.seconds:g} s ({opts.config}) with {opts.warmup} warm-up + "
            f"{opts.reps} rounds ...")
        series = alternate(calls, {name: batch * opts.seconds for name in calls}, opts.reps, opts.warmup, device,
                           say)
        diff = float((ours.extract_features(wav).last_hidden_state - run_theirs(wav).last_hidden_state).abs().max())
        ratios = side_ratios(series)
        entry: dict[str, Any] = {
            "sides": {name: s.to_dict("audio_s") for name, s in series.items()},
            "ratios": ratios,
            "bf16_cosine": bf16_cosine(ours, wav),
            "max_abs_diff_vs_reference": diff,
            "peak_mb": None,
        }
        if compiled is not None:
            entry["compiled_max_abs_diff_vs_eager"] = float(
                (run_ours(wav, "fp32", compiled).last_hidden_state - ours.extract_features(wav).last_hidden_state)
                .abs().max())
        if device.type == "cuda":  # peak memory of one call per side (the CPU's RSS cannot tell one call apart)
            entry["peak_mb"] = {name: call_peak_mb(call, device) for name, call in calls.items()}
            if THEIRS_BF16 in calls and entry["peak_mb"][THEIRS_BF16] > 0:
                ratios["memory_bf16_vs_reference_bf16"] = entry["peak_mb"][OURS_BF16] / entry["peak_mb"][THEIRS_BF16]
            if entry["peak_mb"][THEIRS_FP32] > 0:
                ratios["memory_fp32"] = entry["peak_mb"][OURS_FP32] / entry["peak_mb"][THEIRS_FP32]
        result["batches"][str(batch)] = entry
    if compiled is not None:
        from speechcl.models.compile import compile_counters

        result["compile"] = compile_counters() | {"backend": opts.compile_backend or "default"}
    return result


def format_inference(result: dict[str, Any]) -> str:
    """Human-readable lines for a :func:`run_inference_bench` result."""
    st = result["settings"]
    lines = [f"inference (all hidden states), {st['config']}, {st['seconds']:g} s utterances, {st['device']}, "
             f"{st['threads']} threads, transformers attention {st['transformers_attention']} "
             f"(medians of {st['reps']} alternated rounds after {st['warmup']} warm-up)"]
    labels = {"speed_fp32": "ours/theirs fp32", "speed_bf16_vs_fp32": "ours bf16/fp32",
              "speed_bf16_vs_reference_bf16": "ours bf16/theirs bf16",
              "speed_compiled_vs_reference_bf16": "compiled/theirs bf16", "speed_compiled_vs_bf16": "compiled/eager bf16",
              "memory_fp32": "peak ours/theirs fp32", "memory_bf16_vs_reference_bf16": "peak ours/theirs bf16"}
    for batch, entry in result["batches"].items():
        s, r = entry["sides"], entry["ratios"]
        lines.append(f"  batch {batch}: " + ", ".join(
            f"{name} {s[name]['median_s']:.3f} s ({s[name]['audio_s_per_s']:.1f} audio s/s)" for name in SIDES
            if name in s))
        lines.append("    " + "   ".join(f"{label} {r[key]:.2f}x" for key, label in labels.items() if key in r)
                     + f"   bf16 cosine {entry['bf16_cosine']:.5f}   max |ours-theirs| fp32 "
                     f"{entry['max_abs_diff_vs_reference']:.1e}")
        if entry.get("peak_mb"):
            lines.append("    peak memory: " + ", ".join(f"{name} {mb:.0f} MiB" for name, mb in entry["peak_mb"].items()))
    return "\n".join(lines)
