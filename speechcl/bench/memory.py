"""Peak memory of one training step, measured in a fresh process per side.

What is measured, and why this way:

- **CPU.** The process's resident set is read from ``/proc/self/status``. In a fresh Python process the
  side is built (model, optimizer, batch) and one step is run first, so that the optimizer's state and
  every lazily created buffer exist; then freed heap memory is handed back to the kernel (``gc`` and
  glibc's ``malloc_trim``), the kernel's peak-RSS mark is reset to the current RSS (writing ``5`` to
  ``/proc/self/clear_refs``, Linux ≥ 4.0), and a second step runs. ``step_peak_mb`` is the peak RSS
  during that step minus the RSS just before it: activations, gradients and temporaries of a
  steady-state step, without the weights and optimizer state both implementations hold alike, and
  without another side's leftovers (hence one process per side; ``ru_maxrss`` of a long-lived process
  would only ever grow). ``process_peak_mb`` is the absolute peak RSS of that step, imports included.
  Where ``clear_refs`` cannot be written the peak is the process's whole-life peak and the result says
  ``"method": "process high-water mark"``.
- **CUDA.** ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``memory_allocated`` before the step (same meaning; the caching allocator's reserve is not counted).
"""

from __future__ import annotations

import ctypes
import gc
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch

_MB = float(1 << 20)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        match = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(match.group(1))


def resident_bytes() -> int:
    """Current resident set size of this process."""
    return _status_kib("VmRSS") * 1024


def peak_resident_bytes() -> int:
    """Peak resident set size of this process since start or the last :func:`reset_peak_resident`."""
    return _status_kib("VmHWM") * 1024


def reset_peak_resident() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def release_free_memory() -> None:
    """Collect garbage and return free heap pages to the kernel (glibc ``malloc_trim``; elsewhere a no-op)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def step_peak(step: Callable[[], object], device: torch.device) -> dict[str, Any]:
    """Peak memory of one call of ``step`` in this process (see the module docstring), in MiB.

    Call it after a warm-up call. Returns ``{"method", "resident_before_mb", "step_peak_mb",
    "process_peak_mb"}``.
    """
    release_free_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        method = "torch.cuda.max_memory_allocated"
    else:
        method = "peak RSS during the step" if reset_peak_resident() else "process high-water mark"
        before = resident_bytes()
        step()
        peak = peak_resident_bytes()
    return {"method": method, "resident_before_mb": before / _MB, "step_peak_mb": max(peak - before, 0) / _MB,
            "process_peak_mb": peak / _MB}


def call_peak_mb(call: Callable[[], object], device: torch.device) -> float:
    """Peak GPU memory one ``call`` allocates beyond what was allocated before it, in MiB
    (``max_memory_allocated`` after ``reset_peak_memory_stats``); for GPUs only."""
    if device.type != "cuda":
        raise ValueError(f"call_peak_mb reads CUDA's allocator; got device {device}")
    release_free_memory()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    torch.cuda.synchronize(device)
    return max(torch.cuda.max_memory_allocated(device) - before, 0) / _MB


def measure_in_subprocess(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run :func:`pretrain_side_peak` with ``spec`` in a fresh ``python -m speechcl.bench.memory`` process.

    ``spec`` holds the keyword arguments of :func:`pretrain_side_peak` (JSON values).
    """
    proc = subprocess.run([sys.executable, "-m", "speechcl.bench.memory", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)  # (a hung side raises TimeoutExpired)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement {spec} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def pretrain_side_peak(side: str, config: str, batch: int, seconds: float, device: str, threads: int,
                       seed: int = 0, compile_backend: str | None = None) -> dict[str, Any]:
    """Build one pretraining side (see :func:`speechcl.bench.pretrain.build_sides`), run a warm-up step,
    then measure one step with :func:`step_peak`."""
    from speechcl.bench.pretrain import build_sides, random_batch
    from speechcl.models.config import preset

    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    wav = random_batch(batch, seconds, seed, dev)
    step = build_sides(preset(config), wav, (side,), seed, compile_backend)[side]
    step()
    return step_peak(step, dev)


if __name__ == "__main__":
    print(json.dumps(pretrain_side_peak(**json.loads(sys.argv[1]))))
