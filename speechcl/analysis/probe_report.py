"""A probe's outputs: ``results.json``, a markdown table and a plot of the metric against the layer.

All three are written atomically. The plot (matplotlib, no display needed) shows the test score per layer,
the training-split score per layer (dashed: the gap between the two is the dataset-bias measurement), the
weighted sum of layers and the chance level as horizontal lines.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from speechcl.utils.io import write_report

if TYPE_CHECKING:
    from speechcl.analysis.probe import ProbeResult


def markdown_table(result: ProbeResult) -> str:
    """The results as markdown: one row per layer (test, train, gap), the weighted sum and its weights."""
    better = "higher" if result.higher_is_better else "lower"
    lines = [
        f"# {result.task} probe: {result.metric} per layer ({better} is better)",
        "",
        f"- model: `{result.model}`",
        f"- train: `{result.train}`, test: `{result.test}` "
        f"({result.counts['train_utterances']} / {result.counts['test_utterances']} utterances)",
        f"- chance: {result.chance:.4f}",
        f"- best layer: {result.best_layer}",
        "",
        f"| layer | test {result.metric} | train {result.metric} | gap (how much worse on test) |",
        "|---|---|---|---|",
    ]
    sign = 1.0 if result.higher_is_better else -1.0
    rows = [(layer, value, result.train_value[layer]) for layer, value in result.per_layer.items()]
    rows.append(("weighted sum", result.weighted_sum, result.weighted_sum_train_value))
    for layer, value, train in rows:
        lines.append(f"| {layer} | {value:.4f} | {train:.4f} | {sign * (train - value):+.4f} |")
    lines += ["", "Weighted-sum layer weights (softmax, hidden states 0..L): "
              + ", ".join(f"{i}: {w:.3f}" for i, w in enumerate(result.weights)), ""]
    return "\n".join(lines)


def plot_png(result: ProbeResult) -> bytes:
    """The metric against the layer as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [int(k) for k in result.per_layer]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(layers, list(result.per_layer.values()), marker="o", label=f"test ({result.test})")
    ax.plot(layers, list(result.train_value.values()), marker=".", linestyle="--", alpha=0.7,
            label=f"train ({result.train})")
    ax.axhline(result.weighted_sum, color="tab:green", linestyle="-.", label="weighted sum (test)")
    ax.axhline(result.chance, color="gray", linestyle=":", label="chance")
    ax.set_xlabel("hidden state (0 = transformer input)")
    ax.set_ylabel(result.metric)
    ax.set_xticks(layers)
    name = "/".join(Path(result.model).parts[-2:])
    ax.set_title(f"{result.task} probe ({result.metric}) of {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(result: ProbeResult, output: str | os.PathLike) -> None:
    """``results.json``, ``results.md`` and ``<task>_layers.png`` in ``output`` (each atomically)."""
    write_report(output, result.to_dict(), markdown_table(result), f"{result.task}_layers.png", plot_png(result))


def comparison_png(runs: dict[str, dict[str, dict]]) -> bytes:
    """Several models' probes side by side as PNG bytes: one panel per task, the test metric against the
    layer for each model (its weighted sum as a marker at the right), chance dashed.

    Args:
        runs: ``{model name: {task: results.json of `speechcl probe`}}``; a model may lack a task.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = sorted({task for results in runs.values() for task in results})
    if not tasks:
        raise ValueError("comparison_png needs at least one model with at least one probe result")
    fig = Figure(figsize=(4.2 * len(tasks), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        chance, metric, last = None, "", 0
        for name, results in runs.items():
            if task not in results:
                continue
            r = results[task]
            layers = [int(k) for k in r["per_layer"]]
            line, = ax.plot(layers, list(r["per_layer"].values()), marker="o", markersize=3, label=name)
            last = max(last, max(layers) + 1)
            ax.plot([last], [r["weighted_sum"]], marker="*", markersize=9, color=line.get_color())
            chance, metric = r["chance"], r["metric"]
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle=":", label="chance")
        ax.set_title(f"{task} ({metric}; * weighted sum)", fontsize="medium")
        ax.set_xlabel("hidden state")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
