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

Sides: speechcl fp32 and bf16 against transformers fp32 always; transformers under the same bf16
autocast too on a GPU (or with ``reference_bf16``), where the targets compare bf16 with bf16; and with
``compile`` a speechcl bf16 side whose transformer layers are compiled (:mod:`speechcl.models.compile`,
a separate copy of the same initial weights, so the eager sides stay eager).

Peak memory is measured per side in a fresh process (:mod:`speechcl.bench.memory`: the peak RSS of a
steady-state step above the RSS before it on CPU, ``max_memory_allocated`` on CUDA). FLOPs are counted
once on our fp32 step (:func:`step_flops`) and divided by each side's median time; the hardware's
reference rates are large matmuls timed in the same run, float32 and bfloat16 (and TF32 on a GPU).
"""

from __future__ import annotations

import contextlib
import copy
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
from speechcl.bench.timing import (
    OURS_BF16,
    OURS_COMPILED,
    OURS_FP32,
    THEIRS_BF16,
    THEIRS_FP32,
    alternate,
    side_ratios,
)
from speechcl.models.config import Wav2Vec2Config, preset
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechcl.training.pretrain import LossConfig, PretrainTask
from speechcl.training.trainer import OptimConfig, build_optimizer
from speechcl.utils.device import resolve_device

SAMPLE_RATE = 16_000
MATMUL = "matmul_fp32"
SIDES = (OURS_FP32, THEIRS_FP32, OURS_BF16, THEIRS_BF16, OURS_COMPILED)
"""Every side there is, in the order they are timed and printed."""
CPU_SIDES = (OURS_FP32, THEIRS_FP32, OURS_BF16)
"""The sides measured by default on CPU (the GPU default adds :data:`THEIRS_BF16`)."""
PRECISION = {OURS_FP32: "fp32", THEIRS_FP32: "fp32", OURS_BF16: "bf16", THEIRS_BF16: "bf16", OURS_COMPILED: "bf16"}

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
    matmul_size: int | None = None  # n of the n x n reference matmuls (None: 2048 on CPU, 8192 on GPUs)
    trajectory_config: str | None = "small"
    trajectory_steps: int = 20
    trajectory_batch: int = 2
    trajectory_seconds: float = 2.0
    reference_bf16: bool | None = None  # time transformers under bf16 autocast too (None: on GPUs)
    compile: bool = False  # add the compiled speechcl bf16 side
    compile_backend: str | None = None  # its torch.compile backend (None: speechcl.models.compile's default)

    def sides(self, device: torch.device) -> tuple[str, ...]:
        """The sides measured on ``device`` (see the module docstring)."""
        reference_bf16 = device.type == "cuda" if self.reference_bf16 is None else self.reference_bf16
        chosen = set(CPU_SIDES) | ({THEIRS_BF16} if reference_bf16 else set()) | ({OURS_COMPILED} if self.compile
                                                                                   else set())
        return tuple(name for name in SIDES if name in chosen)

    def matmul_dtypes(self, device: torch.device) -> tuple[str, ...]:
        """Reference matmul types (:data:`speechcl.bench.flops.MATMUL_DTYPES`): TF32 exists on GPUs only."""
        return ("fp32", "tf32", "bf16") if device.type == "cuda" else ("fp32", "bf16")


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


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, wav: Tensor, seed: int,
                   precision: str = "fp32") -> Step:
    """transformers' training step on ``wav [B, S]`` as its pretraining example runs it (module docstring),
    its forward under ``precision``'s autocast; the mask and distractor helpers draw from numpy's global
    RNG, seeded here with ``seed``."""
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
        with autocast(device, precision):
            out = model(wav, mask_time_indices=mask_t, sampled_negative_indices=negatives_t)
        masked = mask_t.sum()
        (out.loss / masked).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach()) / float(masked)

    return step


def build_sides(cfg: Wav2Vec2Config, wav: Tensor, sides: Sequence[str] = CPU_SIDES, seed: int = 0,
                compile_backend: str | None = None) -> dict[str, Step]:
    """Training steps for the named ``sides`` (of :data:`SIDES`) on ``wav [B, S]``, from one seeded init.

    The eager speechcl sides share one model and optimizer (precision changes only the forward's compute
    type), and so do the transformers sides, on a copy of the same initial weights; the compiled side
    gets its own copy (compiled with ``compile_backend``) and optimizer.
    """
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise ValueError(f"unknown sides {unknown}; choose from {SIDES}")
    torch.manual_seed(seed)
    ours = Wav2Vec2ForPretraining(cfg).to(wav.device).train()
    steps: dict[str, Step] = {}
    if OURS_COMPILED in sides:
        from speechcl.models.compile import compile_encoder

        compiled = copy.deepcopy(ours)
        compile_encoder(compiled, backend=compile_backend)
        steps[OURS_COMPILED] = our_step(compiled, build_optimizer(compiled, OptimConfig()), wav, "bf16", seed)
    if THEIRS_FP32 in sides or THEIRS_BF16 in sides:
        theirs = reference_pretraining(ours).train()
        optimizer = build_optimizer(theirs, OptimConfig())
        for name in (THEIRS_FP32, THEIRS_BF16):
            if name in sides:
                steps[name] = reference_step(theirs, optimizer, wav, seed, PRECISION[name])
    if OURS_FP32 in sides or OURS_BF16 in sides:
        optimizer = build_optimizer(ours, OptimConfig())
        for name in (OURS_FP32, OURS_BF16):
            if name in sides:
                steps[name] = our_step(ours, optimizer, wav, PRECISION[name], seed)
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

    - ``sides``: per side ``median_s``, ``audio_s_per_s``, ``times_s``; plus ``matmul_<dtype>`` in GFLOP/s;
    - ``ratios``: ``speed_fp32`` (ours/theirs audio s/s), ``speed_bf16_vs_reference_fp32``,
      ``speed_bf16_vs_fp32``, ``memory_fp32`` and ``memory_bf16`` (our step peak / theirs fp32),
      ``flops_vs_matmul`` (achieved GFLOP/s of our fp32 step / fp32 matmul GFLOP/s),
      ``flops_bf16_vs_matmul_bf16``; with the transformers bf16 side ``speed_bf16_vs_reference_bf16`` and
      ``memory_bf16_vs_reference_bf16``; with the compiled side ``speed_compiled_vs_reference_bf16``,
      ``speed_compiled_vs_bf16`` and ``flops_compiled_vs_matmul_bf16``;
    - ``memory`` (per side, :func:`speechcl.bench.memory.step_peak`), ``flops``, ``trajectory`` — each
      ``None`` when switched off; ``compile`` (graphs compiled) with the compiled side.
    """
    say = progress or (lambda _: None)
    device = resolve_device(opts.device)
    cfg = preset(opts.config)
    wav = random_batch(opts.batch, opts.seconds, opts.seed, device)
    audio = opts.batch * opts.seconds
    sides = opts.sides(device)
    matmul_size = opts.matmul_size or (8192 if device.type == "cuda" else 2048)
    result: dict[str, Any] = {
        "benchmark": "pretrain",
        "settings": {"config": opts.config, "batch": opts.batch, "seconds": opts.seconds, "reps": opts.reps,
                     "warmup": opts.warmup, "matmul_size": matmul_size, "sides": list(sides), **environment(device)},
    }

    flops = None
    if opts.flops:
        say(f"counting FLOPs of one {opts.config} training step ...")
        flops = step_flops(cfg, wav, opts.seed)

    say(f"timing {', '.join(sides)} on {opts.batch} x {opts.seconds:g} s ({opts.config}) "
        f"with {opts.warmup} warm-up + {opts.reps} rounds ...")
    calls: dict[str, Callable[[], object]] = dict(build_sides(cfg, wav, sides, opts.seed, opts.compile_backend))
    work = {name: audio for name in calls}
    matmuls = {f"matmul_{dtype}": dtype for dtype in opts.matmul_dtypes(device)} if opts.flops else {}
    for name, dtype in matmuls.items():
        calls[name], work[name] = matmul_call(matmul_size, device, repeats=10 if device.type == "cuda" else 4,
                                              dtype=dtype)
    series = alternate(calls, work, opts.reps, opts.warmup, device, say)
    del calls
    result["sides"] = {name: s.to_dict("gflop" if name in matmuls else "audio_s") for name, s in series.items()}
    ratios = side_ratios(series)
    if OURS_COMPILED in series:
        from speechcl.models.compile import compile_counters

        result["compile"] = compile_counters() | {"backend": opts.compile_backend or "default"}

    result["flops"] = None
    if flops is not None:
        rates = {dtype: series[name].speed for name, dtype in matmuls.items()}
        result["flops"] = {
            "per_step_gflop": flops / 1e9,
            "gflop_per_audio_s": flops / 1e9 / audio,
            **{f"{name}_gflop_per_s": flops / 1e9 / series[name].median for name in sides},
            "matmul_gflop_per_s": rates["fp32"],
            **{f"matmul_{dtype}_gflop_per_s": rate for dtype, rate in rates.items()},
            "note": "model FLOPs of a full speechcl step (every layer run), also used for the other sides",
        }
        achieved = {name: flops / 1e9 / series[name].median for name in sides}
        ratios["flops_vs_matmul"] = achieved[OURS_FP32] / rates["fp32"]
        ratios["flops_bf16_vs_matmul_bf16"] = achieved[OURS_BF16] / rates["bf16"]
        if THEIRS_BF16 in achieved:
            ratios["flops_reference_bf16_vs_matmul_bf16"] = achieved[THEIRS_BF16] / rates["bf16"]
        if OURS_COMPILED in achieved:
            ratios["flops_compiled_vs_matmul_bf16"] = achieved[OURS_COMPILED] / rates["bf16"]

    result["memory"] = None
    if opts.memory:
        memory = {}
        for name in sides:
            say(f"peak memory of one {name} step (fresh process) ...")
            spec = {"side": name, "config": opts.config, "batch": opts.batch, "seconds": opts.seconds,
                    "device": str(device), "threads": torch.get_num_threads(), "seed": opts.seed}
            if name == OURS_COMPILED:
                spec["compile_backend"] = opts.compile_backend
            memory[name] = measure_in_subprocess(spec)
        result["memory"] = memory

        def peak_ratio(ours: str, theirs: str) -> float | None:
            base = memory[theirs]["step_peak_mb"]
            return memory[ours]["step_peak_mb"] / base if base > 0 else None

        ratios["memory_fp32"] = peak_ratio(OURS_FP32, THEIRS_FP32)
        ratios["memory_bf16"] = peak_ratio(OURS_BF16, THEIRS_FP32)
        if THEIRS_BF16 in memory:
            ratios["memory_bf16_vs_reference_bf16"] = peak_ratio(OURS_BF16, THEIRS_BF16)
            if OURS_COMPILED in memory:
                ratios["memory_compiled_vs_reference_bf16"] = peak_ratio(OURS_COMPILED, THEIRS_BF16)
    result["ratios"] = ratios

    result["trajectory"] = None
    if opts.trajectory_config:
        say(f"bf16 vs fp32 loss trajectory: {opts.trajectory_config}, {opts.trajectory_steps} steps ...")
        result["trajectory"] = {"config": opts.trajectory_config, **loss_trajectory(
            preset(opts.trajectory_config), opts.trajectory_steps, opts.trajectory_batch, opts.trajectory_seconds,
            device, opts.seed)}
    return result


def _measured_sides(result: dict[str, Any]) -> list[str]:
    return [name for name in SIDES if name in result["sides"]]


def format_pretrain(result: dict[str, Any]) -> str:
    """Human-readable lines for a :func:`run_pretrain_bench` result."""
    s, r = result["sides"], result["ratios"]
    st = result["settings"]
    sides = _measured_sides(result)
    lines = [f"pretraining step, {st['config']}, {st['batch']} x {st['seconds']:g} s, {st['device']}, "
             f"{st['threads']} threads (medians of {st['reps']} alternated rounds after {st['warmup']} warm-up)"]
    for name in sides:
        lines.append(f"  {name:<22} {s[name]['median_s']:8.3f} s/step  {s[name]['audio_s_per_s']:8.2f} audio s/s")
    lines.append(f"  speed  ours/theirs fp32 {r['speed_fp32']:.2f}x   ours bf16/theirs fp32 "
                 f"{r['speed_bf16_vs_reference_fp32']:.2f}x   ours bf16/fp32 {r['speed_bf16_vs_fp32']:.2f}x")
    extra = [(key, label) for key, label in (("speed_bf16_vs_reference_bf16", "ours bf16/theirs bf16"),
                                             ("speed_compiled_vs_reference_bf16", "compiled/theirs bf16"),
                                             ("speed_compiled_vs_bf16", "compiled/eager bf16")) if key in r]
    if extra:
        lines.append("  speed  " + "   ".join(f"{label} {r[key]:.2f}x" for key, label in extra))
    if result.get("compile"):
        lines.append(f"  compiled: {result['compile']['graphs']} graph(s), {result['compile']['graph_breaks']} "
                     "graph break(s)")
    mem = result.get("memory")
    if mem:
        parts = [f"{name} {mem[name]['step_peak_mb']:.0f} MiB (process {mem[name]['process_peak_mb']:.0f})"
                 for name in sides]
        lines.append(f"  step peak memory ({mem[OURS_FP32]['method']}): " + ", ".join(parts))
        line = (f"  memory ours/theirs fp32 {_times(r['memory_fp32'])}   ours bf16/theirs fp32 "
                f"{_times(r['memory_bf16'])}")
        if "memory_bf16_vs_reference_bf16" in r:
            line += f"   ours bf16/theirs bf16 {_times(r['memory_bf16_vs_reference_bf16'])}"
        lines.append(line)
    fl = result.get("flops")
    if fl:
        achieved = ", ".join(f"{name} {fl[name + '_gflop_per_s']:.1f}" for name in sides)
        matmuls = ", ".join(f"{key.removeprefix('matmul_').removesuffix('_gflop_per_s')} {value:.1f}"
                            for key, value in fl.items() if key.startswith("matmul_") and key != "matmul_gflop_per_s")
        lines.append(f"  FLOPs {fl['per_step_gflop']:.1f} GFLOP/step ({fl['gflop_per_audio_s']:.1f} per audio s); "
                     f"achieved GFLOP/s: {achieved}")
        lines.append(f"  matmul GFLOP/s: {matmuls} -> ours fp32 {r['flops_vs_matmul']:.0%} of fp32, ours bf16 "
                     f"{r['flops_bf16_vs_matmul_bf16']:.0%} of bf16")
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
