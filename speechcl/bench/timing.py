"""Wall-clock timing of competing implementations, interleaved so that they share the machine's conditions.

Benchmarks compare ``speechcl`` with a reference measured in the same run. Running all repetitions of one
side and then all of the other lets a change in background load (another job, thermal throttling) favour
one of them; :func:`alternate` instead runs the sides in turn, ``A B A B ...``, after unrecorded warm-up
rounds, and the figures are medians over the recorded rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on CPU), so that a timer around a call measures the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Series:
    """Seconds per call of one side over the recorded rounds, and the work a call does.

    ``work`` is what one call processes in the unit that a speed is quoted in (seconds of audio, files,
    GFLOP); ``speed`` is ``work / median``.
    """

    name: str
    seconds: list[float] = field(default_factory=list)
    work: float = 1.0

    @property
    def median(self) -> float:
        if not self.seconds:
            raise ValueError(f"{self.name}: no recorded rounds")
        return statistics.median(self.seconds)

    @property
    def speed(self) -> float:
        return self.work / self.median

    def to_dict(self, unit: str) -> dict[str, object]:
        """``{"median_s", "<unit>_per_s", "times_s"}`` for reports and JSON."""
        return {"median_s": self.median, f"{unit}_per_s": self.speed, "times_s": list(self.seconds)}


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, queued GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(
    sides: Mapping[str, Callable[[], object]],
    work: Mapping[str, float],
    reps: int,
    warmup: int,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Series]:
    """Time every side ``reps`` times, in turn (``A B A B ...``), after ``warmup`` unrecorded rounds.

    Args:
        sides: name → a call to time (one training step, one forward pass, one CLI run).
        work: name → what one call processes (see :class:`Series`); every side must have an entry.
        reps: recorded rounds (at least 1).
        warmup: unrecorded rounds first (allocator caches, kernel selection, page cache, lazy state).
        device: where the work runs (GPU work is synchronised around each call).
        progress: called with a short line after each call (e.g. ``print``).
    Returns:
        name → :class:`Series`, in the order of ``sides``.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    missing = sorted(set(sides) - set(work))
    if missing:
        raise ValueError(f"no work given for sides {missing}")
    series = {name: Series(name, work=float(work[name])) for name in sides}
    for round_ in range(warmup + reps):
        recorded = round_ >= warmup
        for name, fn in sides.items():
            seconds = time_call(fn, device)
            if recorded:
                series[name].seconds.append(seconds)
            if progress is not None:
                tag = f"rep {round_ - warmup + 1}/{reps}" if recorded else f"warm-up {round_ + 1}/{warmup}"
                progress(f"  {tag} {name}: {seconds:.3f} s")
    return series


def speed_ratio(ours: Series, theirs: Series) -> float:
    """How many times faster ``ours`` is: ``ours.speed / theirs.speed`` (> 1 means ours is faster)."""
    return ours.speed / theirs.speed


OURS_FP32, OURS_BF16, THEIRS_FP32 = "speechcl_fp32", "speechcl_bf16", "transformers_fp32"
THEIRS_BF16, OURS_COMPILED = "transformers_bf16", "speechcl_bf16_compiled"
"""The sides of the pretraining and inference benchmarks (the last two only where they ran)."""


def side_ratios(series: dict[str, Series]) -> dict[str, float]:
    """The speed ratios of the benchmark sides in ``series`` (keys as above): fp32 vs transformers fp32, bf16
    vs our fp32 and vs transformers fp32, and where those sides ran, vs transformers bf16 and compiled vs bf16."""
    ratios = {
        "speed_fp32": speed_ratio(series[OURS_FP32], series[THEIRS_FP32]),
        "speed_bf16_vs_fp32": speed_ratio(series[OURS_BF16], series[OURS_FP32]),
        "speed_bf16_vs_reference_fp32": speed_ratio(series[OURS_BF16], series[THEIRS_FP32]),
    }
    if THEIRS_BF16 in series:
        ratios["speed_bf16_vs_reference_bf16"] = speed_ratio(series[OURS_BF16], series[THEIRS_BF16])
    if OURS_COMPILED in series:
        ratios["speed_compiled_vs_bf16"] = speed_ratio(series[OURS_COMPILED], series[OURS_BF16])
        if THEIRS_BF16 in series:
            ratios["speed_compiled_vs_reference_bf16"] = speed_ratio(series[OURS_COMPILED], series[THEIRS_BF16])
    return ratios

