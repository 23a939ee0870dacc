"""The benchmark targets and the summary table that checks benchmark results against them.

A target reads one ratio from the results (``{"pretrain": ..., "inference": ..., "extract": ...}``, each
as returned by its ``run_*_bench``) and says PASS or MISS; a missing figure (a part switched off or not
run) is ``n/a``. A miss is a finding to report, not an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechcl.utils.io import atomic_write_json


@dataclass(frozen=True)
class Target:
    """``value(results[path...]) >= goal`` (or ``<=`` when ``at_most``)."""

    label: str
    path: tuple[str, ...]
    goal: float
    at_most: bool = False
    unit: str = "x"

    def lookup(self, results: dict[str, Any]) -> float | None:
        node: Any = results
        for key in self.path:
            if not isinstance(node, dict) or node.get(key) is None:
                return None
            node = node[key]
        return float(node)

    def met(self, value: float) -> bool:
        return value <= self.goal if self.at_most else value >= self.goal


def targets(batch_sizes: list[str] | tuple[str, ...] = ("1",), device: str = "cpu") -> list[Target]:
    """The speed, memory and accuracy targets on ``device`` (``cpu``, or a GPU: ``cuda``/``cuda:N``); the
    inference ones once per measured batch size.

    On CPU the references run in float32; on a GPU both sides run under the same bf16 autocast (and
    float32 against float32), as the GPU issue asks: pretraining step >= 1.5x transformers at >= 40% of the
    measured bf16 matmul rate and <= 0.8x its peak memory; inference >= 1.3x; extraction >= 3x.
    """
    if device.startswith("cuda"):
        return _gpu_targets(batch_sizes)
    out = [
        Target("pretrain fp32: speed vs transformers fp32", ("pretrain", "ratios", "speed_fp32"), 1.5),
        Target("pretrain fp32: step peak memory vs transformers", ("pretrain", "ratios", "memory_fp32"), 0.8,
               at_most=True),
        Target("pretrain bf16: speed vs transformers fp32", ("pretrain", "ratios", "speed_bf16_vs_reference_fp32"),
               2.0),
        Target("pretrain fp32: GFLOP/s vs fp32 matmul", ("pretrain", "ratios", "flops_vs_matmul"), 0.6, unit="%"),
    ]
    for b in batch_sizes:
        base = ("inference", "batches", b)
        out += [
            Target(f"inference fp32 (batch {b}): speed vs transformers", (*base, "ratios", "speed_fp32"), 1.0),
            Target(f"inference bf16 (batch {b}): speed vs ours fp32", (*base, "ratios", "speed_bf16_vs_fp32"), 1.6),
            Target(f"inference bf16 (batch {b}): cosine to fp32", (*base, "bf16_cosine"), 0.99, unit=""),
        ]
    out.append(Target("extraction: files/s vs transformers loop", ("extract", "ratios", "speed"), 2.0))
    return out


def _gpu_targets(batch_sizes: list[str] | tuple[str, ...]) -> list[Target]:
    ratios = ("pretrain", "ratios")
    out = [
        Target("pretrain bf16: speed vs transformers bf16", (*ratios, "speed_bf16_vs_reference_bf16"), 1.5),
        Target("pretrain bf16 compiled: speed vs transformers bf16", (*ratios, "speed_compiled_vs_reference_bf16"),
               1.5),
        Target("pretrain bf16: GFLOP/s vs bf16 matmul", (*ratios, "flops_bf16_vs_matmul_bf16"), 0.4, unit="%"),
        Target("pretrain bf16 compiled: GFLOP/s vs bf16 matmul", (*ratios, "flops_compiled_vs_matmul_bf16"), 0.4,
               unit="%"),
        Target("pretrain bf16: step peak memory vs transformers bf16", (*ratios, "memory_bf16_vs_reference_bf16"),
               0.8, at_most=True),
        Target("pretrain fp32: step peak memory vs transformers fp32", (*ratios, "memory_fp32"), 0.8, at_most=True),
        Target("pretrain fp32: speed vs transformers fp32", (*ratios, "speed_fp32"), 1.5),
    ]
    for b in batch_sizes:
        base = ("inference", "batches", b)
        out += [
            Target(f"inference bf16 (batch {b}): speed vs transformers bf16",
                   (*base, "ratios", "speed_bf16_vs_reference_bf16"), 1.3),
            Target(f"inference fp32 (batch {b}): speed vs transformers fp32", (*base, "ratios", "speed_fp32"), 1.3),
            Target(f"inference bf16 (batch {b}): cosine to fp32", (*base, "bf16_cosine"), 0.99, unit=""),
        ]
    out.append(Target("extraction: files/s vs transformers loop", ("extract", "ratios", "speed"), 3.0))
    return out


def results_device(results: dict[str, Any]) -> str:
    """The device the results were measured on (``settings.device`` of the first benchmark that has one)."""
    for entry in results.values():
        if isinstance(entry, dict) and isinstance(entry.get("settings"), dict) and "device" in entry["settings"]:
            return str(entry["settings"]["device"])
    return "cpu"


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of the results' device: ``{"target", "value", "goal", "status"}`` (status PASS,
    MISS or n/a)."""
    sizes = tuple((results.get("inference") or {}).get("batches", {}).keys()) or ("1",)
    rows = []
    for t in targets(sizes, results_device(results)):
        value = t.lookup(results)
        status = "n/a" if value is None or not math.isfinite(value) else ("PASS" if t.met(value) else "MISS")
        rows.append({"target": t.label, "value": value, "goal": f"{'<=' if t.at_most else '>='} "
                     f"{_fmt(t.goal, t.unit)}", "status": status, "unit": t.unit})
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.0%}"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.4f}"


def format_summary(rows: list[dict[str, Any]], only_measured: bool = False) -> str:
    """A fixed-width table of :func:`summarize` rows (``only_measured`` drops the ``n/a`` ones)."""
    shown = [r for r in rows if not (only_measured and r["status"] == "n/a")]
    if not shown:
        return ""
    width = max(len(r["target"]) for r in shown)
    lines = [f"{'target':<{width}}  {'measured':>9}  {'goal':>9}  status", "-" * (width + 32)]
    for r in shown:
        lines.append(f"{r['target']:<{width}}  {_fmt(r['value'], r['unit']):>9}  {r['goal']:>9}  {r['status']}")
    return "\n".join(lines)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (:func:`speechcl.utils.io.atomic_write_json`)."""
    atomic_write_json(path, data)
