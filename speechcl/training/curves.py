"""Training curves from ``<exp_dir>/log.jsonl`` (written by :class:`~speechcl.training.metrics.MetricLogger`).

Each line of the log is one JSON object ``{"split": "train" | "valid", "step": N, <metric>: value, ...}``;
``{"split": "warning", "message": ...}`` lines carry no step and are not curves. :func:`read_log` turns a log
into ``split -> metric -> (steps, values)`` and :func:`curves_png` draws several runs' curves, one panel per
``(split, key)`` metric. The ``speechcl curves`` verb (:mod:`speechcl.training.commands`) drives both.

A resumed run logs again from the update of the checkpoint it resumed: a line whose step is not above the
last one logged for its split replaces that split's later entries (the resumed run rewrote that history)
and its values replace those already logged at that step. A line that is not a JSON object (a torn write
of a run that was killed) is skipped with a warning naming the file and the line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from speechcl.utils.io import atomic_save

log = logging.getLogger("speechcl.curves")

Curves = dict[str, dict[str, tuple[list[int], list[float]]]]
"""split -> metric -> (steps, values), steps ascending."""


def read_log(exp_dir: str | os.PathLike) -> Curves:
    """The curves logged by a training run: ``split -> metric -> (steps, values)`` sorted by step.

    Only numeric values are kept (not booleans); NaN and infinite values are kept as logged.

    Raises:
        FileNotFoundError: ``exp_dir/log.jsonl`` does not exist.
    """
    path = Path(exp_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {exp_dir} is not a speechcl training experiment folder "
                                "(`speechcl pretrain` and `speechcl finetune` write log.jsonl into their exp_dir)")
    points: dict[str, dict[int, dict[str, float]]] = {}  # split -> step -> metric -> value
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s line %d is not a JSON object (a torn write?); skipped", path, number)
                continue
            if not isinstance(record, dict) or record.get("split") == "warning":
                continue
            split, step = record.get("split"), record.get("step")
            if not isinstance(split, str) or not isinstance(step, int) or isinstance(step, bool):
                log.warning("%s line %d has no split name and integer step; skipped", path, number)
                continue
            steps = points.setdefault(split, {})  # kept ascending, so the last key is the latest step
            if steps and step < next(reversed(steps)):  # a resumed run: it logs these updates again
                for later in [s for s in steps if s > step]:
                    del steps[later]
            values = steps.setdefault(step, {})
            for key, value in record.items():
                if key not in ("split", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[key] = float(value)
    curves: Curves = {}
    for split, steps in points.items():
        metrics: dict[str, tuple[list[int], list[float]]] = {}
        for step in sorted(steps):
            for key, value in steps[step].items():
                xs, ys = metrics.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)
        if metrics:
            curves[split] = metrics
    return curves


def parse_metric(text: str) -> tuple[str, str]:
    """``"valid:loss"`` -> ``("valid", "loss")``; ValueError for anything but ``SPLIT:KEY``."""
    split, sep, key = text.partition(":")
    if not sep or not split or not key or ":" in key:
        raise ValueError(f"metric {text!r} is not SPLIT:KEY (e.g. valid:loss, train:accuracy, valid:wer)")
    return split, key


def available_metrics(runs: Sequence[tuple[str, Curves]]) -> list[str]:
    """Every ``split:key`` that some run logged, sorted."""
    return sorted({f"{split}:{key}" for _, curves in runs for split, metrics in curves.items() for key in metrics})


def curves_png(runs: Sequence[tuple[str, Curves]], metrics: Sequence[tuple[str, str]], path: str | os.PathLike,
               title: str | None = None) -> Path:
    """Plot ``metrics`` of ``runs`` into the PNG file ``path`` (atomically); returns ``path``.

    One panel per ``(split, key)`` metric (two per row), one line per run that logged it, against the number
    of updates.

    Args:
        runs: ``(name, read_log(exp_dir))`` per run, in legend order.
        metrics: ``(split, key)`` pairs, e.g. ``[("valid", "loss"), ("valid", "accuracy")]``.
        path: the ``.png`` file to write.
        title: the figure's title.

    Raises:
        ValueError: no runs or metrics, ``path`` is not a ``.png`` file, or a metric that no run logged
            (the message lists the ones they did).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"curves are written as PNG: give a .png file name, not {str(path)!r}")
    if not runs:
        raise ValueError("curves_png needs at least one run")
    if not metrics:
        raise ValueError("curves_png needs at least one metric (split, key)")
    for split, key in metrics:
        if not any(key in curves.get(split, {}) for _, curves in runs):
            names = ", ".join(name for name, _ in runs)
            raise ValueError(f"metric {split}:{key} is logged by none of the runs ({names}); they log: "
                             + (", ".join(available_metrics(runs)) or "nothing"))
    cols = min(2, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.4 * rows + (0.4 if title else 0.0)), dpi=100)
    FigureCanvasAgg(fig)
    for i, (split, key) in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, curves in runs:
            if key not in curves.get(split, {}):
                continue
            steps, values = curves[split][key]
            finite = [v if math.isfinite(v) else math.nan for v in values]  # gaps, not a broken axis
            ax.plot(steps, finite, marker="o", markersize=2.5, linewidth=1.2, label=name)
        ax.set_xlabel("updates")
        ax.set_ylabel(f"{split}:{key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
