"""Benchmark a wav2vec 2.0 pretraining step: speechcl against transformers' ``Wav2Vec2ForPreTraining``.

A *step* is what an update costs on each side, data loading aside:

- **speechcl**: :meth:`speechcl.training.pretrain.PretrainTask.forward` (the trainer's call: masks,
  distractors and Gumbel noise drawn inside the model from a per-step generator; loss with diversity and
  feature penalties), backward of the loss per masked step, optimizer step, ``zero_grad``. In ``bf16``
  the forward runs under ``torch.autocast(device, bfloat16)`` as the trainer's ``precision=bf16`` does.
- **transformers**, as its pretraining example (``run_wav2vec2_pretraining_no_trainer.py``) does it: the
  frame count from ``_get_feat_extract_output_lengths``, masks from ``_compute_mask_indices`` (the
  config's ``mask_time_prob``/``mask_time_length``/``mask_time_min_masks``) and distractors from
  ``_sample_negative_indices``, computed per step with numpy and moved to the device; Gumbel temperature
  set; forward with ``mask_time_indices`` and ``sampled_negative_indices``; backward of ``loss`` per
  masked step; optimizer step; ``zero_grad``.

Both start from the same weights (:mod:`speechcl.bench.reference`) and use the trainer's AdamW
(:func:`speechcl.training.trainer.build_optimizer`: lr 5e-4, betas (0.9, 0.98), eps 1e-6, weight decay
0.01), on the same random batch ``[batch, seconds · 16000]``. Loop bookkeeping (logging, gradient-norm,
LR schedule) is outside the step on both sides.

Peak memory is measured per side in a fresh process (:mod:`speechcl.bench.memory`: the peak RSS of a
steady-state step above the RSS before it on CPU, ``max_memory_allocated`` on CUDA). FLOPs are counted
once on our fp32 step (:func:`step_flops`) and divided by each side's median time.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from speechcl.bench.flops import count_flops, matmul_call
from speechcl.bench.memory import measure_in_subprocess
from speechcl.bench.reference import autocast, environment, reference_pretraining
from speechcl.bench.timing import alternate, speed_ratio
from speechcl.models.config import Wav2Vec2Config, preset
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechcl.training.pretrain import LossConfig, PretrainTask
from speechcl.training.trainer import OptimConfig, build_optimizer
from speechcl.utils.device import resolve_device

SAMPLE_RATE = 16_000
OURS_FP32, OURS_BF16, THEIRS_FP32, MATMUL = "speechcl_fp32", "speechcl_bf16", "transformers_fp32", "matmul_fp32"
SIDES = (OURS_FP32, THEIRS_FP32, OURS_BF16)

Step = Callable[[], float]
"""One training step; returns the loss per masked step it back-propagated."""


@dataclass
class PretrainBenchConfig:
    """What :func:`run_pretrain_bench` measures.

    ``config`` is a preset name (``base`` for the target figures; ``small``/``tiny`` for quick runs);
    ``trajectory_config`` the preset of the bf16-vs-fp32 loss check (``None`` skips it).
    """

    config: str = "base"
    batch: int = 4
    seconds: float = 5.0
    reps: int = 3
    warmup: int = 1
    device: str = "cpu"
    seed: int = 0
    memory: bool = True
    flops: bool = True
    matmul_size: int = 2048
    trajectory_config: str | None = "small"
    trajectory_steps: int = 20
    trajectory_batch: int = 2
    trajectory_seconds: float = 2.0


def random_batch(batch: int, seconds: float, seed: int, device: torch.device) -> Tensor:
    """``[batch, seconds · 16000]`` float32 noise (std 0.1) standing in for 16 kHz speech."""
    if batch < 1 or seconds <= 0:
        raise ValueError(f"need batch >= 1 and seconds > 0, got batch={batch}, seconds={seconds}")
    g = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(batch, int(round(seconds * SAMPLE_RATE)), generator=g)).to(device)


def our_step(model: Wav2Vec2ForPretraining, optimizer: torch.optim.Optimizer, wav: Tensor, precision: str,
             seed: int) -> Step:
    """speechcl's training step on ``wav [B, S]`` (see the module docstring); step ``n`` draws its masks,
    distractors and Gumbel noise from a generator seeded ``seed + n``."""
    task = PretrainTask(model.cfg, LossConfig())
    counter = itertools.count()
    device = wav.device

    def step() -> float:
        n = next(counter)
        model.set_num_updates(n)
        generator = torch.Generator(device).manual_seed(seed + n)
        with autocast(device, precision):
            out = task.forward(model, {"source": wav}, generator)
        (out.loss / out.sample_size).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.stats["loss_sum"] / out.sample_size

    return step


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, wav: Tensor, seed: int) -> Step:
    """transformers' training step on ``wav [B, S]`` as its pretraining example runs it (module docstring);
    the mask and distractor helpers draw from numpy's global RNG, seeded here with ``seed``."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    cfg = model.config
    t_start, t_end, t_decay = 2.0, 0.5, 0.999995  # the example's gumbel temperature defaults
    counter = itertools.count()
    device = wav.device
    np.random.seed(seed)

    def step() -> float:
        n = next(counter)
        model.set_gumbel_temperature(max(t_start * t_decay**n, t_end))
        shape = (wav.shape[0], int(model._get_feat_extract_output_lengths(wav.shape[1])))
        mask = _compute_mask_indices(shape, cfg.mask_time_prob, cfg.mask_time_length,
                                     min_masks=cfg.mask_time_min_masks)
        negatives = _sample_negative_indices(shape, cfg.num_negatives, mask_time_indices=mask)
        mask_t = torch.tensor(mask, dtype=torch.long, device=device)
        negatives_t = torch.tensor(negatives, dtype=torch.long, device=device)
        out = model(wav, mask_time_indices=mask_t, sampled_negative_indices=negatives_t)
        masked = mask_t.sum()
        (out.loss / masked).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach()) / float(masked)

    return step


def build_sides(cfg: Wav2Vec2Config, wav: Tensor, sides: Sequence[str] = SIDES, seed: int = 0) -> dict[str, Step]:
    """Training steps for the named ``sides`` (of :data:`SIDES`) on ``wav [B, S]``, from one seeded init.

    The two speechcl sides share one model and optimizer (precision changes only the forward's compute
    type); the transformers side gets a copy of the same initial weights and its own optimizer.
    """
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise ValueError(f"unknown sides {unknown}; choose from {SIDES}")
    torch.manual_seed(seed)
    ours = Wav2Vec2ForPretraining(cfg).to(wav.device).train()
    steps: dict[str, Step] = {}
    if THEIRS_FP32 in sides:
        theirs = reference_pretraining(ours).train()
        steps[THEIRS_FP32] = reference_step(theirs, build_optimizer(theirs, OptimConfig()), wav, seed)
    if OURS_FP32 in sides or OURS_BF16 in sides:
        optimizer = build_optimizer(ours, OptimConfig())
        for name, precision in ((OURS_FP32, "fp32"), (OURS_BF16, "bf16")):
            if name in sides:
                steps[name] = our_step(ours, optimizer, wav, precision, seed)
    return {name: steps[name] for name in sides}


@contextlib.contextmanager
def no_layerdrop(model: Wav2Vec2ForPretraining) -> Iterator[None]:
    """Run every transformer layer (layerdrop off) inside the block; restored afterwards."""
    context = model.encoder.encoder
    saved = context.layerdrop
    context.layerdrop = 0.0
    try:
        yield
    finally:
        context.layerdrop = saved


def step_flops(cfg: Wav2Vec2Config, wav: Tensor, seed: int = 0) -> int:
    """FLOPs of one speechcl fp32 training step on ``wav [B, S]`` with every layer run (the typical step:
    at BASE's layerdrop 0.05 most steps drop no layer), forward and backward (:func:`count_flops`)."""
    torch.manual_seed(seed)
    model = Wav2Vec2ForPretraining(cfg).to(wav.device).train()
    step = our_step(model, build_optimizer(model, OptimConfig()), wav, "fp32", seed)
    with no_layerdrop(model):
        return count_flops(step)


def loss_trajectory(cfg: Wav2Vec2Config, steps: int, batch: int, seconds: float, device: torch.device,
                    seed: int = 0) -> dict[str, Any]:
    """Train ``cfg`` for ``steps`` updates in fp32 and in bf16 from the same initial weights, batch and
    per-step seeds (masks, distractors, Gumbel noise); dropout and layerdrop are off so that precision is
    the only difference. Returns both loss sequences (loss per masked step, nats, before each update) and
    their largest absolute difference.
    """
    cfg = cfg.replace(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                      dropout_features=0.0, layerdrop=0.0)
    wav = random_batch(batch, seconds, seed + 1, device)
    torch.manual_seed(seed)
    init = {k: v.clone() for k, v in Wav2Vec2ForPretraining(cfg).state_dict().items()}
    losses: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16"):
        model = Wav2Vec2ForPretraining(cfg).to(device).train()
        model.load_state_dict(init)
        step = our_step(model, build_optimizer(model, OptimConfig()), wav, precision, seed)
        losses[precision] = [step() for _ in range(steps)]
    diffs = [abs(a - b) for a, b in zip(losses["fp32"], losses["bf16"])]
    return {"steps": steps, "batch": batch, "seconds": seconds, "fp32": losses["fp32"], "bf16": losses["bf16"],
            "max_abs_diff": max(diffs), "final_abs_diff": diffs[-1]}


def run_pretrain_bench(opts: PretrainBenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time, measure and count the pretraining step (see the module docstring). Returns a JSON-able dict:

    - ``sides``: per side ``median_s``, ``audio_s_per_s``, ``times_s``; plus ``matmul_fp32`` in GFLOP/s;
    - ``ratios``: ``speed_fp32`` (ours/theirs audio s/s), ``speed_bf16_vs_reference_fp32``,
      ``speed_bf16_vs_fp32``, ``memory_fp32`` and ``memory_bf16`` (our step peak / theirs), ``flops_vs_matmul``
      (achieved GFLOP/s of our fp32 step / matmul GFLOP/s);
    - ``memory`` (per side, :func:`speechcl.bench.memory.step_peak`), ``flops``, ``trajectory`` — each
      ``None`` when switched off.
    """
    say = progress or (lambda _: None)
    device = resolve_device(opts.device)
    cfg = preset(opts.config)
    wav = random_batch(opts.batch, opts.seconds, opts.seed, device)
    audio = opts.batch * opts.seconds
    result: dict[str, Any] = {
        "benchmark": "pretrain",
        "settings": {"config": opts.config, "batch": opts.batch, "seconds": opts.seconds, "reps": opts.reps,
                     "warmup": opts.warmup, "matmul_size": opts.matmul_size, **environment(device)},
    }

    flops = None
    if opts.flops:
        say(f"counting FLOPs of one {opts.config} training step ...")
        flops = step_flops(cfg, wav, opts.seed)

    say(f"timing {', '.join(SIDES)} on {opts.batch} x {opts.seconds:g} s ({opts.config}) "
        f"with {opts.warmup} warm-up + {opts.reps} rounds ...")
    calls: dict[str, Callable[[], object]] = dict(build_sides(cfg, wav, SIDES, opts.seed))
    work = {name: audio for name in calls}
    if opts.flops:
        calls[MATMUL], work[MATMUL] = matmul_call(opts.matmul_size, device)
    series = alternate(calls, work, opts.reps, opts.warmup, device, say)
    del calls
    sides = {name: s.to_dict("audio_s" if name != MATMUL else "gflop") for name, s in series.items()}
    result["sides"] = sides
    ratios = {
        "speed_fp32": speed_ratio(series[OURS_FP32], series[THEIRS_FP32]),
        "speed_bf16_vs_reference_fp32": speed_ratio(series[OURS_BF16], series[THEIRS_FP32]),
        "speed_bf16_vs_fp32": speed_ratio(series[OURS_BF16], series[OURS_FP32]),
    }

    result["flops"] = None
    if flops is not None:
        matmul = series[MATMUL].speed
        result["flops"] = {
            "per_step_gflop": flops / 1e9,
            "gflop_per_audio_s": flops / 1e9 / audio,
            **{f"{name}_gflop_per_s": flops / 1e9 / series[name].median for name in SIDES},
            "matmul_gflop_per_s": matmul,
            "note": "model FLOPs of a full speechcl step (every layer run), also used for the other sides",
        }
        ratios["flops_vs_matmul"] = result["flops"][f"{OURS_FP32}_gflop_per_s"] / matmul

    result["memory"] = None
    if opts.memory:
        memory = {}
        for name in SIDES:
            say(f"peak memory of one {name} step (fresh process) ...")
            memory[name] = measure_in_subprocess({
                "side": name, "config": opts.config, "batch": opts.batch, "seconds": opts.seconds,
                "device": str(device), "threads": torch.get_num_threads(), "seed": opts.seed,
            })
        result["memory"] = memory
        theirs_peak = memory[THEIRS_FP32]["step_peak_mb"]
        for key, name in (("memory_fp32", OURS_FP32), ("memory_bf16", OURS_BF16)):
            ratios[key] = memory[name]["step_peak_mb"] / theirs_peak if theirs_peak > 0 else None
    result["ratios"] = ratios

    result["trajectory"] = None
    if opts.trajectory_config:
        say(f"bf16 vs fp32 loss trajectory: {opts.trajectory_config}, {opts.trajectory_steps} steps ...")
        result["trajectory"] = {"config": opts.trajectory_config, **loss_trajectory(
            preset(opts.trajectory_config), opts.trajectory_steps, opts.trajectory_batch, opts.trajectory_seconds,
            device, opts.seed)}
    return result


def format_pretrain(result: dict[str, Any]) -> str:
    """Human-readable lines for a :func:`run_pretrain_bench` result."""
    s, r = result["sides"], result["ratios"]
    st = result["settings"]
    lines = [f"pretraining step, {st['config']}, {st['batch']} x {st['seconds']:g} s, {st['device']}, "
             f"{st['threads']} threads (medians of {st['reps']} alternated rounds after {st['warmup']} warm-up)"]
    for name in SIDES:
        lines.append(f"  {name:<18} {s[name]['median_s']:8.3f} s/step  {s[name]['audio_s_per_s']:8.2f} audio s/s")
    lines.append(f"  speed  ours/theirs fp32 {r['speed_fp32']:.2f}x   ours bf16/theirs fp32 "
                 f"{r['speed_bf16_vs_reference_fp32']:.2f}x   ours bf16/fp32 {r['speed_bf16_vs_fp32']:.2f}x")
    mem = result.get("memory")
    if mem:
        parts = [f"{name} {mem[name]['step_peak_mb']:.0f} MiB (process {mem[name]['process_peak_mb']:.0f})"
                 for name in SIDES]
        lines.append(f"  step peak memory ({mem[OURS_FP32]['method']}): " + ", ".join(parts))
        lines.append(f"  memory ours/theirs fp32 {_times(r['memory_fp32'])}   ours bf16/theirs fp32 "
                     f"{_times(r['memory_bf16'])}")
    fl = result.get("flops")
    if fl:
        lines.append(f"  FLOPs {fl['per_step_gflop']:.1f} GFLOP/step ({fl['gflop_per_audio_s']:.1f} per audio s); "
                     f"achieved: ours fp32 {fl[OURS_FP32 + '_gflop_per_s']:.1f}, theirs fp32 "
                     f"{fl[THEIRS_FP32 + '_gflop_per_s']:.1f}, ours bf16 {fl[OURS_BF16 + '_gflop_per_s']:.1f} GFLOP/s; "
                     f"fp32 matmul {fl['matmul_gflop_per_s']:.1f} GFLOP/s -> {r['flops_vs_matmul']:.0%} of matmul")
    tr = result.get("trajectory")
    if tr:
        lines.append(f"  bf16 vs fp32 training loss ({tr['config']}, {tr['steps']} steps from one init; objective "
                     "per masked step, nats): "
                     f"max |diff| {tr['max_abs_diff']:.4f}, last {tr['final_abs_diff']:.4f}")
        lines.append("    fp32 " + " ".join(f"{v:.3f}" for v in tr["fp32"]))
        lines.append("    bf16 " + " ".join(f"{v:.3f}" for v in tr["bf16"]))
    return "\n".join(lines)


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"
