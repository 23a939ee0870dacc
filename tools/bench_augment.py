"""Cost of the shipped augmentation chains (conf/augment/views.yaml, finetune.yaml) on one CPU core.

1. Throughput of each chain alone, in seconds of audio per second, on a padded batch of speech-like signals.
2. Its share of a CPU training step of the small preset, measured side by side in one run (A B A B ...):
   a wav2vec 2.0 pretraining step with and without the views chain applied to its batch (one view), and a
   CTC fine-tuning step (CTCTask) with and without the finetune chain. The chain's own time is measured
   inside the augmented step; target: <= 10% of the plain step. The whole step may grow more than that
   when speed perturbation lengthens the batch (the model then sees more audio: that is the augmentation,
   not its overhead).

Usage::

    python tools/bench_augment.py [--threads 1] [--reps 3] [--warmup 1] [--batch 4] [--seconds 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from speechcl.audio.augment import AugmentConfig, Augmenter
from speechcl.bench.timing import alternate, time_call
from speechcl.data.labels import Dictionary
from speechcl.models.config import preset
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechcl.training.finetune import CTCTask, FinetuneModelConfig, build_ctc_model
from speechcl.training.pretrain import LossConfig, PretrainTask
from speechcl.training.trainer import OptimConfig, build_optimizer
from speechcl.utils.config import conf_dir
from speechcl.utils.io import atomic_write_json

SR = 16000
CPU = torch.device("cpu")


def chain(name: str) -> Augmenter:
    """The shipped ``conf/augment/<name>.yaml`` chain."""
    data = yaml.safe_load((conf_dir() / "augment" / f"{name}.yaml").read_text())
    return Augmenter(AugmentConfig(tuple(data["transforms"]), int(data.get("seed", 0))))


def speech_batch(batch: int, seconds: float, padded: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, S]`` harmonic signals with a syllable-rate envelope (rows 75-100% long when ``padded``) and the
    padding mask."""
    g = torch.Generator().manual_seed(seed)
    S = int(seconds * SR)
    t = torch.arange(S) / SR
    wave = torch.zeros(batch, S)
    lengths = [S - (S // 4) * b // max(batch - 1, 1) if padded else S for b in range(batch)]
    for b, n in enumerate(lengths):
        f0 = 90 + 30 * b
        row = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 8)) * (0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t))
        wave[b, :n] = (0.2 * row + 0.01 * torch.randn(S, generator=g))[:n]
    return wave, torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]


class TimedAugmenter:
    """An Augmenter that adds the seconds its calls take to ``seconds`` (to split a step's time)."""

    def __init__(self, augment: Augmenter) -> None:
        self.augment, self.seconds, self.calls, self.widths = augment, 0.0, 0, 0.0

    @property
    def identity(self) -> bool:
        return self.augment.identity

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.augment(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.widths += out[0].shape[1] / args[0].shape[1]  # batch width after / before (speed perturbation)
        return out


def pretrain_step(augment: TimedAugmenter | None, wave: torch.Tensor, mask: torch.Tensor) -> Callable[[], object]:
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(preset("small")).train()
    optimizer = build_optimizer(model, OptimConfig())
    task = PretrainTask(model.cfg, LossConfig())
    counter = itertools.count()

    def step() -> None:
        n = next(counter)
        source, padding = wave, mask
        if augment is not None:
            source, padding = augment(wave, mask, torch.arange(wave.shape[0]), n)
        out = task.forward(model, {"source": source, "padding_mask": padding}, torch.Generator().manual_seed(n))
        (out.loss / out.sample_size).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ctc_step(augment: TimedAugmenter | None, wave: torch.Tensor, mask: torch.Tensor) -> Callable[[], object]:
    dictionary = Dictionary(list("|ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
    torch.manual_seed(0)
    model = build_ctc_model(FinetuneModelConfig(preset="small", freeze_finetune_updates=0, feature_grad_mult=1.0),
                            len(dictionary)).train()
    optimizer = build_optimizer(model, OptimConfig())
    task = CTCTask(dictionary, 0, augment=augment)
    g = torch.Generator().manual_seed(1)
    lengths = torch.full((wave.shape[0],), 40)
    counter = itertools.count()

    def step() -> None:
        n = next(counter)
        batch = {"id": torch.arange(wave.shape[0]), "epoch": torch.full((wave.shape[0],), n), "source": wave,
                 "padding_mask": mask, "target": torch.randint(1, len(dictionary), (wave.shape[0], 40), generator=g),
                 "target_lengths": lengths}
        out = task.forward(model, batch, torch.Generator().manual_seed(n))
        (out.loss / out.sample_size).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="recorded rounds of each training step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="longest item of the batch")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, object] = {"threads": args.threads, "batch": args.batch, "seconds": args.seconds}

    padded_wave, padded_mask = speech_batch(args.batch, args.seconds, padded=True)
    audio_s = float((~padded_mask).sum()) / SR
    for name in ("views", "finetune"):
        aug = chain(name)
        times = sorted(time_call(lambda aug=aug, e=e: aug(padded_wave, padded_mask, torch.arange(args.batch), e), CPU)
                       for e in range(10))
        median = times[len(times) // 2]
        result[f"{name}_chain"] = {"audio_s_per_s": audio_s / median, "median_s": median, "audio_s": audio_s}
        print(f"{name} chain: {audio_s / median:8.1f} audio s/s ({median * 1000:.1f} ms for {audio_s:.1f} s of audio, "
              f"{args.threads} thread)")

    full_wave, full_mask = speech_batch(args.batch, args.seconds, padded=False)
    pairs = {"pretrain": (pretrain_step, "views", full_wave, full_mask),
             "finetune": (ctc_step, "finetune", padded_wave, padded_mask)}
    for label, (build, name, wave, mask) in pairs.items():
        timed = TimedAugmenter(chain(name))
        sides = {"plain": build(None, wave, mask), "augmented": build(timed, wave, mask)}
        series = alternate(sides, {"plain": 1.0, "augmented": 1.0}, args.reps, args.warmup, CPU)
        plain, augmented = series["plain"].median, series["augmented"].median
        chain_s = timed.seconds / max(timed.calls, 1)
        result[f"{label}_step"] = {"chain": name, "plain_s": plain, "augmented_s": augmented, "chain_s": chain_s,
                                   "chain_share": chain_s / plain, "step_ratio": augmented / plain}
        print(f"{label} step, small preset, {args.batch} x {args.seconds:g} s, {args.threads} thread: plain "
              f"{plain:.3f} s, with the {name} chain {augmented:.3f} s (ratio {augmented / plain:.3f}); the chain "
              f"itself {chain_s * 1000:.1f} ms = {chain_s / plain:.1%} of the plain step (target <= 10%)")
        width = timed.widths / max(timed.calls, 1)
        result[f"{label}_step"]["width_ratio"] = width
        if width > 1:
            print(f"  the batch is {width:.3f} times as wide on average after the chain (speed perturbation slows "
                  "some items down): the model's share of the difference")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
