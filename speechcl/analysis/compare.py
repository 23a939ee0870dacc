"""Pretraining objectives side by side: what each method's folders say, as one table and three figures.

An objectives experiment (``recipes/objectives/run.sh``) keeps one folder per method, ``DIR/<method>/``, each
piece written by one verb; every piece is optional here (a stage not run yet shows as ``-`` in the table, with
a note saying what is missing), but a piece that exists and cannot be read is an error naming its file:

- ``pretrain/`` (``speechcl pretrain``): ``train_result.json`` (``num_updates``, ``train_seconds``: the wall time
  over every resumed part, ``train_cpu_seconds``: the CPU time, where written), ``config.yaml`` (``trainer.threads``:
  without a measured CPU time, CPU minutes = wall minutes x threads) and
  ``log.jsonl`` (the curves, read with :func:`speechcl.training.curves.read_log`, and the audio seen);
- ``probes/<task>/results.json`` (``speechcl probe``): the score per hidden state and of the weighted sum;
- ``invariance/results.json`` (``speechcl analyze invariance``): frame-aligned cosine of ``h(x)`` and
  ``h(t(x))`` per hidden state and transformation;
- ``finetune/decode/summary.json`` and ``finetune/decode_lm/summary.json`` (``speechcl evaluate``, greedy and
  beam search with the LM): WER and CER per split.

Audio seen in pretraining: the trainer logs, per logging window of updates, ``audio_s_per_s`` (audio seconds over
the window's wall time). Where a log also carries the window's ``audio_seconds`` their sum is exact; otherwise
the rates averaged over updates times the run's wall time estimate it (shown with ``≈``), which assumes that
every update takes about as long.

Pretraining losses differ in kind between objectives (bits of a contrastive task, a regression error, a
cross-entropy over cluster labels), so the curves figure plots each method's loss divided by its own first
logged value: the shapes compare, the levels do not.

:func:`collect_method` reads one method (a :class:`MethodResults`), :func:`markdown` makes the table,
:func:`write_comparison` writes ``results.md`` and the figures (each atomically).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechcl.training.curves import Curves, curves_png, read_log
from speechcl.utils.io import atomic_open, atomic_write_text

METHOD_ORDER = ("wav2vec2", "wav2vec", "cpc", "simclr", "moco", "pirl", "byol", "data2vec", "hubert", "bestrq",
                "random")
"""The order of ``recipes/objectives/run.sh``; other method folders follow alphabetically."""
PROBE_TASKS = ("phone", "ctc", "speaker", "keyword")
PIECES = ("pretrain", "probes", "invariance", "finetune")
IDENTITY = "identity"
CURVES_PNG = "pretrain_curves.png"
PROBES_PNG = "probes_by_layer.png"
INVARIANCE_PNG = "invariance.png"
_METRIC_SHORT = {"accuracy": "acc", "cer": "CER"}


@dataclass
class Pretraining:
    """A method's pretraining budget, from ``pretrain/``.

    Attributes:
        updates: ``num_updates`` of ``train_result.json``.
        wall_seconds: its ``train_seconds`` (wall time over every resumed part, validation included).
        threads: ``trainer.threads`` of ``config.yaml`` (``None``: missing, or 0 = torch's default, unknown here).
        audio_seconds: audio seen in training (``None`` when the log does not tell).
        audio_exact: whether ``audio_seconds`` was logged (else it is estimated; module docstring).
        curves: :func:`read_log` of the folder (``{}`` without ``log.jsonl``).
        cpu_seconds: its ``train_cpu_seconds`` (the training process's CPU time, measured; ``None`` in results
            of speechcl versions that did not write it).
    """

    updates: int
    wall_seconds: float
    threads: int | None
    audio_seconds: float | None
    audio_exact: bool
    curves: Curves = field(default_factory=dict)
    cpu_seconds: float | None = None

    @property
    def cpu_minutes(self) -> float | None:
        """Measured CPU minutes, else wall minutes x threads (``None`` when neither is known)."""
        if self.cpu_seconds is not None:
            return self.cpu_seconds / 60.0
        return self.wall_seconds / 60.0 * self.threads if self.threads else None


@dataclass
class MethodResults:
    """Everything the comparison knows about one method (``None`` / empty: not there yet; ``notes`` says so).

    Attributes:
        probes: ``task -> results.json`` of ``speechcl probe``.
        invariance: ``results.json`` of ``speechcl analyze invariance``.
        decode, decode_lm: ``split -> {"wer", "cer"}`` (fractions) of greedy and LM decoding.
    """

    method: str
    folder: Path
    pretraining: Pretraining | None = None
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    invariance: dict[str, Any] | None = None
    decode: dict[str, dict[str, float]] | None = None
    decode_lm: dict[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)


# --- reading --------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or ``None`` when there is no such file; ValueError naming it when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and rerun the stage that writes it") from err


def _number(value: Any, path: Path, key: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {key} should be a number, got {value!r}")
    return float(value)


def _dict(data: Any, path: Path, key: str | None = None) -> dict[str, Any]:
    value = data if key is None else (data.get(key) if isinstance(data, dict) else None)
    if not isinstance(value, dict):
        where = "the file" if key is None else key
        raise ValueError(f"{path}: {where} should be a JSON object, got {type(value).__name__}; it was not written "
                         "by speechcl, or by another version")
    return value


def _threads(config: Path) -> int | None:
    if not config.is_file():
        return None
    import yaml

    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{config} is not valid YAML ({err})") from err
    trainer = cfg.get("trainer") if isinstance(cfg, dict) else None
    threads = trainer.get("threads") if isinstance(trainer, dict) else None
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"{config}: trainer.threads should be a whole number >= 0, got {threads!r}")
    return threads or None


def audio_seen(curves: Curves, updates: int, wall_seconds: float) -> tuple[float | None, bool]:
    """``(audio seconds seen in training, exact?)`` from a pretraining log (module docstring).

    Args:
        curves: :func:`read_log` of the run; its ``train`` lines carry ``audio_s_per_s`` (and, where logged, the
            window's ``audio_seconds``).
        updates: the run's updates; wall_seconds: its wall time.
    """
    if updates == 0:
        return 0.0, True
    train = curves.get("train", {})
    if "audio_seconds" in train:
        return float(sum(v for v in train["audio_seconds"][1] if math.isfinite(v))), True
    if "audio_s_per_s" not in train:
        return None, False
    steps, rates = train["audio_s_per_s"]
    weighted, previous = 0.0, 0
    for step, rate in zip(steps, rates):
        if math.isfinite(rate) and step > previous:
            weighted += rate * (step - previous)
        previous = max(previous, step)
    if previous <= 0:
        return None, False
    return weighted / previous * wall_seconds, False


def _pretraining(folder: Path, notes: list[str], method: str) -> Pretraining | None:
    path = folder / "train_result.json"
    result = _read_json(path)
    if result is None:
        state = "not finished" if folder.is_dir() else "not run"
        notes.append(f"{method}: no pretrain/train_result.json (pretraining {state})")
        return None
    result = _dict(result, path)
    for key in ("num_updates", "train_seconds"):
        if key not in result:
            raise ValueError(f"{path} has no {key!r}: not a `speechcl pretrain` result")
    updates = _number(result["num_updates"], path, "num_updates")
    seconds = _number(result["train_seconds"], path, "train_seconds")
    if updates != int(updates) or updates < 0 or seconds < 0:
        raise ValueError(f"{path}: num_updates {result['num_updates']!r} and train_seconds {result['train_seconds']!r} "
                         "should be >= 0 (num_updates whole)")
    try:
        curves = read_log(folder)
    except FileNotFoundError:
        curves = {}
        notes.append(f"{method}: no pretrain/log.jsonl (no curves, audio seen unknown)")
    audio, exact = audio_seen(curves, int(updates), seconds)
    cpu = None
    if "train_cpu_seconds" in result:
        cpu = _number(result["train_cpu_seconds"], path, "train_cpu_seconds")
        if cpu < 0:
            raise ValueError(f"{path}: train_cpu_seconds {cpu!r} should be >= 0")
    return Pretraining(int(updates), seconds, _threads(folder / "config.yaml"), audio, exact, curves, cpu)


def _probe(path: Path) -> dict[str, Any] | None:
    result = _read_json(path)
    if result is None:
        return None
    result = _dict(result, path)
    for key in ("metric", "per_layer", "weighted_sum", "best_layer", "chance", "higher_is_better"):
        if key not in result:
            raise ValueError(f"{path} has no {key!r}: not a `speechcl probe` results.json")
    per_layer = _dict(result, path, "per_layer")
    if not per_layer:
        raise ValueError(f"{path}: per_layer is empty")
    for layer, value in per_layer.items():
        if not str(layer).lstrip("-").isdigit():
            raise ValueError(f"{path}: per_layer keys should be hidden-state indices, got {layer!r}")
        _number(value, path, f"per_layer[{layer}]")
    for key in ("weighted_sum", "chance"):
        _number(result[key], path, key)
    if str(result["best_layer"]) not in per_layer:
        raise ValueError(f"{path}: best_layer {result['best_layer']!r} is not one of the probed layers "
                         f"{', '.join(per_layer)}")
    return result


def _invariance(path: Path) -> dict[str, Any] | None:
    result = _read_json(path)
    if result is None:
        return None
    result = _dict(result, path)
    for key in ("layers", "cosine", "transforms"):
        if not isinstance(result.get(key), list) or not result[key]:
            raise ValueError(f"{path}: {key} should be a non-empty list: not a `speechcl analyze invariance` "
                             "results.json")
    if len(result["cosine"]) != len(result["layers"]):
        raise ValueError(f"{path}: cosine has {len(result['cosine'])} rows for {len(result['layers'])} layers")
    for row in result["cosine"]:
        for label, value in _dict(row, path, None).items():
            _number(value, path, f"cosine[..][{label}]", allow_none=True)
    return result


def _decode(path: Path) -> dict[str, dict[str, float]] | None:
    summary = _read_json(path)
    if summary is None:
        return None
    scores: dict[str, dict[str, float]] = {}
    for split, entry in _dict(summary, path).items():
        entry = _dict(summary, path, split)
        for key in ("wer", "cer"):
            if key not in entry:
                raise ValueError(f"{path}: split {split!r} has no {key!r}: not a `speechcl evaluate` summary.json")
        scores[split] = {key: float(_number(entry[key], path, f"{split}.{key}")) for key in ("wer", "cer")}
    return scores


def collect_method(folder: str | os.PathLike, method: str | None = None,
                   tasks: Sequence[str] = PROBE_TASKS) -> MethodResults:
    """Read one method's folders (module docstring); what is missing is left ``None`` and noted.

    Raises:
        ValueError: a file that exists but is not what its verb writes (the message names it).
    """
    folder = Path(folder)
    name = method or folder.name
    results = MethodResults(name, folder)
    notes = results.notes
    if not folder.is_dir():
        notes.append(f"{name}: no folder {folder}")
        return results
    results.pretraining = _pretraining(folder / "pretrain", notes, name)
    for task in tasks:
        probe = _probe(folder / "probes" / task / "results.json")
        if probe is not None:  # (a missing task is noted by markdown() when another method has it)
            results.probes[task] = probe
    results.invariance = _invariance(folder / "invariance" / "results.json")
    if results.invariance is None:
        notes.append(f"{name}: no invariance/results.json (invariance analysis not run)")
    results.decode = _decode(folder / "finetune" / "decode" / "summary.json")
    results.decode_lm = _decode(folder / "finetune" / "decode_lm" / "summary.json")
    for what, scores in (("decode", results.decode), ("decode_lm", results.decode_lm)):
        if scores is None:
            notes.append(f"{name}: no finetune/{what}/summary.json (fine-tuning or decoding not run)")
    return results


def discover_methods(root: str | os.PathLike) -> list[str]:
    """The method folders of ``root`` (those holding a pretrain, probes, invariance or finetune folder), in
    :data:`METHOD_ORDER`, then the others alphabetically."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    found = [p.name for p in root.iterdir() if p.is_dir() and any((p / piece).is_dir() for piece in PIECES)]
    known = [m for m in METHOD_ORDER if m in found]
    return known + sorted(m for m in found if m not in METHOD_ORDER)


# --- summaries and the table ----------------------------------------------------------------------------------


def invariance_summary(result: dict[str, Any]) -> tuple[float | None, float | None]:
    """Mean frame-aligned cosine over the transformations (``identity`` left out) at the first and the last
    hidden state (``None`` where nothing was measured)."""
    def mean(row: dict[str, float | None]) -> float | None:
        values = [v for k, v in row.items() if k != IDENTITY and v is not None and math.isfinite(v)]
        return sum(values) / len(values) if values else None

    return mean(result["cosine"][0]), mean(result["cosine"][-1])


def _transform_labels(results: Sequence[MethodResults]) -> list[str]:
    labels: list[str] = []
    for r in results:
        if r.invariance is not None:
            for t in r.invariance["transforms"]:
                label = t.get("label") if isinstance(t, dict) else None
                if label and label != IDENTITY and label not in labels:
                    labels.append(label)
    return labels


def _tasks(results: Sequence[MethodResults]) -> list[str]:
    present = {task for r in results for task in r.probes}
    return [t for t in PROBE_TASKS if t in present] + sorted(present - set(PROBE_TASKS))


def _fmt(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{scale * value:.{digits}f}"


def _hours(seconds: float | None, exact: bool) -> str:
    if seconds is None:
        return "-"
    hours = seconds / 3600.0
    text = f"{hours:.2f}" if hours >= 0.1 or hours == 0 else f"{hours:.2g}"
    return text if exact else f"≈{text}"


def _score(scores: dict[str, dict[str, float]] | None, split: str, key: str) -> str:
    if scores is None or split not in scores:
        return "-"
    return _fmt(scores[split][key], 1, 100.0)


def markdown(results: Sequence[MethodResults], dev_split: str = "dev-clean", test_split: str = "test-clean") -> str:
    """The comparison as markdown: the main table (one row per method), the invariance table (methods x
    transformations), chance levels, and notes on what is missing."""
    tasks = _tasks(results)
    metric = {task: next(r.probes[task]["metric"] for r in results if task in r.probes) for task in tasks}
    head = ["method", "pretrain wall min", "CPU min", "updates", "audio h seen"]
    for task in tasks:
        short = _METRIC_SHORT.get(metric[task], metric[task])
        head += [f"{task} {short} best (layer)", f"{task} {short} weighted"]
    head += ["invariance cos first / last", f"{dev_split} CER %", f"{test_split} CER %", f"{test_split} WER %",
             f"{test_split} WER % (LM)"]
    lines = ["# Pretraining objectives compared", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in results:
        p = r.pretraining
        cells = [r.method]
        if p is None:
            cells += ["-"] * 4
        else:
            cells += [_fmt(p.wall_seconds / 60.0, 1), _fmt(p.cpu_minutes, 1), str(p.updates),
                      _hours(p.audio_seconds, p.audio_exact)]
        for task in tasks:
            probe = r.probes.get(task)
            if probe is None:
                cells += ["-", "-"]
                continue
            best = str(probe["best_layer"])
            cells += [f"{probe['per_layer'][best]:.3f} ({best})", f"{probe['weighted_sum']:.3f}"]
        if r.invariance is None:
            cells.append("-")
        else:
            first, last = invariance_summary(r.invariance)
            cells.append(f"{_fmt(first, 2)} / {_fmt(last, 2)}")
        cells += [_score(r.decode, dev_split, "cer"), _score(r.decode, test_split, "cer"),
                  _score(r.decode, test_split, "wer"), _score(r.decode_lm, test_split, "wer")]
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "Pretraining budget: wall time over every resumed part, CPU time of the training process (measured; "
              "for older results, wall min x trainer.threads), "
              "updates, and hours of audio the updates read (≈: estimated from the logged audio rate, see "
              "speechcl/analysis/compare.py). Probes: the test score of the best single hidden state (its index "
              "in brackets; 0 = input to the first transformer layer) and of the learned weighted sum of all "
              "of them; acc higher is better, CER lower. Invariance: frame-aligned cosine of h(x) and h(t(x)) "
              "averaged over the transformations below, at the first and the last hidden state. ASR: CTC "
              f"fine-tuning, greedy decoding, and beam search with the 4-gram LM (weights chosen on {dev_split})."]
    chance = {task: next(r.probes[task]["chance"] for r in results if task in r.probes) for task in tasks}
    if chance:
        lines += ["", "Chance levels: " + ", ".join(f"{task} {value:.3f}" for task, value in chance.items()) + "."]

    labels = _transform_labels(results)
    with_inv = [r for r in results if r.invariance is not None]
    if labels and with_inv:
        lines += ["", "## Invariance: cosine of h(x) and h(t(x)), first / last hidden state", "",
                  "| method | " + " | ".join(labels) + " |", "|" + "|".join(["---"] * (len(labels) + 1)) + "|"]
        for r in with_inv:
            assert r.invariance is not None
            first, last = r.invariance["cosine"][0], r.invariance["cosine"][-1]
            lines.append(f"| {r.method} | " + " | ".join(f"{_fmt(first.get(label), 2)} / {_fmt(last.get(label), 2)}"
                                                         for label in labels) + " |")

    lines += ["", f"Figures: `{CURVES_PNG}` (pretraining loss of each method relative to its first logged value: "
              "losses differ in kind between objectives), "
              f"`{PROBES_PNG}` (probe score by layer), `{INVARIANCE_PNG}` (cosine per method and transformation)."]
    notes = []
    for r in results:
        notes += r.notes
        notes += [f"{r.method}: no probes/{task}/results.json (probe not run)" for task in tasks if task not in r.probes]
    if notes:
        lines += ["", "## Missing", "", "A '-' in the tables is a piece not there yet:", ""]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# --- figures --------------------------------------------------------------------------------------------------


def relative_curves(results: Sequence[MethodResults], key: str = "loss") -> list[tuple[str, Curves]]:
    """Per method with at least two logged points, its ``train`` and ``valid`` ``key`` divided by the first
    logged value, as ``(method, {split: {f"{key} / first": (steps, values)}})`` (methods whose first value is
    not a positive number are left out)."""
    runs: list[tuple[str, Curves]] = []
    for r in results:
        if r.pretraining is None or r.pretraining.updates == 0:
            continue
        curves: Curves = {}
        for split in ("train", "valid"):
            steps, values = r.pretraining.curves.get(split, {}).get(key, ([], []))
            if len(values) >= 2 and math.isfinite(values[0]) and values[0] > 0:
                curves[split] = {f"{key} / first": (list(steps), [v / values[0] for v in values])}
        if curves:
            runs.append((r.method, curves))
    return runs


def probes_png(results: Sequence[MethodResults]) -> bytes | None:
    """Every method's probe score against the layer, one panel per task (``None`` without probes)."""
    from speechcl.analysis.probe_report import comparison_png

    runs = {r.method: r.probes for r in results if r.probes}
    return comparison_png(runs) if runs else None


def invariance_png(results: Sequence[MethodResults]) -> bytes | None:
    """Two heatmaps, methods x transformations, of the mean frame-aligned cosine at the first and the last
    hidden state (colour range [0, 1], values written in the cells); ``None`` without invariance results."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with_inv = [r for r in results if r.invariance is not None]
    labels = _transform_labels(with_inv)
    if not with_inv or not labels:
        return None
    width = max(8.0, 2 * (0.55 * len(labels) + 1.5))
    height = max(2.6, 0.42 * len(with_inv) + 2.0)
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    for i, (row, title) in enumerate(((0, "first hidden state"), (-1, "last hidden state"))):
        ax = fig.add_subplot(1, 2, i + 1)
        grid = np.full((len(with_inv), len(labels)), np.nan)
        for m, r in enumerate(with_inv):
            assert r.invariance is not None
            cosine = r.invariance["cosine"][row]
            for t, label in enumerate(labels):
                value = cosine.get(label)
                if value is not None:
                    grid[m, t] = value
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (m, t), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(t, m, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 0.6 else "white")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(with_inv)))
        ax.set_yticklabels([r.method for r in with_inv], fontsize=8)
        ax.set_title(f"cosine of h(x) and h(t(x)), {title}", fontsize="medium")
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


@dataclass
class Comparison:
    """What :func:`write_comparison` wrote: the markdown file, the figures (``None``: nothing to plot), the
    rows."""

    markdown: Path
    curves: Path | None
    probes: Path | None
    invariance: Path | None
    results: list[MethodResults]


def _write_png(path: Path, png: bytes | None) -> Path | None:
    if png is None:
        return None
    with atomic_open(path, "wb") as handle:
        handle.write(png)
    return path


def write_comparison(root: str | os.PathLike, methods: Sequence[str] | None = None,
                     output: str | os.PathLike | None = None, dev_split: str = "dev-clean",
                     test_split: str = "test-clean", plots: bool = True) -> Comparison:
    """Collect ``methods`` (default: :func:`discover_methods`) of the experiment ``root``, write the table to
    ``output`` (default ``root/results.md``) and, with ``plots``, the figures beside it (:data:`CURVES_PNG`,
    :data:`PROBES_PNG`, :data:`INVARIANCE_PNG`; a figure with nothing to show is not written), each atomically.

    Raises:
        FileNotFoundError: ``root`` is not a folder. ValueError: no methods, or a malformed file (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give the experiment folder of recipes/objectives/run.sh")
    methods = list(methods) if methods else discover_methods(root)
    if not methods:
        raise ValueError(f"{root} holds no method folders (<method>/pretrain, probes, invariance or finetune): "
                         "run recipes/objectives/run.sh into it first")
    results = [collect_method(root / m, m) for m in methods]
    output = Path(output) if output is not None else root / "results.md"
    text = markdown(results, dev_split, test_split)
    paths: dict[str, Path | None] = {"curves": None, "probes": None, "invariance": None}
    if plots:
        runs = relative_curves(results)
        metrics = [(split, "loss / first") for split in ("valid", "train")
                   if any(split in curves for _, curves in runs)]
        if runs and metrics:
            paths["curves"] = curves_png(runs, metrics, output.parent / CURVES_PNG,
                                         title="each method's loss / its first logged value\n(losses differ in "
                                               "kind between objectives)")
        paths["probes"] = _write_png(output.parent / PROBES_PNG, probes_png(results))
        paths["invariance"] = _write_png(output.parent / INVARIANCE_PNG, invariance_png(results))
        missing = [name for name, path in paths.items() if path is None]
        if missing:
            text += f"\nNot plotted (nothing to show yet): {', '.join(missing)}.\n"
    atomic_write_text(output, text)
    return Comparison(output, paths["curves"], paths["probes"], paths["invariance"], results)
