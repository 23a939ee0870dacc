"""Results tables from fine-tuning experiments: one row per system with pretraining minutes (CPU/GPU
wall time of the pretraining run it started from), labeled minutes, and WER/CER per decoded split.

An experiment is a fine-tuning ``exp_dir``: its ``config.yaml`` names the labeled manifest and
``model.init`` (the pretraining checkpoint, ``<pretrain exp>/checkpoints/<tag>``), and its decode folder
holds ``summary.json`` from ``speechcl evaluate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from speechcl.data.manifest import read_manifest


@dataclass
class ResultRow:
    system: str
    pretrain_minutes: float  # 0 for a system trained from scratch
    labeled_minutes: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> {"wer", "cer"}


def _train_minutes(exp_dir: Path) -> float:
    result = exp_dir / "train_result.json"
    if not result.exists():
        return float("nan")
    return float(json.loads(result.read_text()).get("train_seconds", float("nan"))) / 60.0


def collect_row(exp_dir: str | Path, decode_dir: str | Path | None = None, system: str | None = None) -> ResultRow:
    """Read one fine-tuning experiment (see the module docstring)."""
    from omegaconf import OmegaConf

    exp_dir = Path(exp_dir)
    config = exp_dir / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(f"{config} not found: {exp_dir} is not a `speechcl finetune` experiment")
    cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    data, model = cfg["data"], cfg["model"]
    manifest = Path(data["manifest_dir"]) / f"{data['train_subset']}.tsv"
    labeled = read_manifest(manifest).total_samples() / 16000 / 60 if manifest.exists() else float("nan")
    pretrain = 0.0
    if model.get("init"):
        init = Path(model["init"])
        pretrain_exp = init.parent.parent if init.parent.name == "checkpoints" else init
        pretrain = _train_minutes(pretrain_exp)
    decode = Path(decode_dir) if decode_dir else exp_dir / "decode"
    summary_path = decode / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: run `speechcl evaluate --output {decode}` first")
    summary = json.loads(summary_path.read_text())
    scores = {split: {"wer": float(v["wer"]), "cer": float(v["cer"])} for split, v in summary.items()}
    return ResultRow(system or exp_dir.name, pretrain, labeled, scores)


def markdown_table(rows: list[ResultRow]) -> str:
    """Rows as a markdown table; WER/CER in percent, one column pair per split."""
    splits: list[str] = []
    for row in rows:
        splits += [s for s in row.scores if s not in splits]
    head = ["system", "pretraining min", "labeled min"] + [f"{s} {m}" for s in splits for m in ("WER", "CER")]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in rows:
        cells = [row.system, f"{row.pretrain_minutes:.1f}", f"{row.labeled_minutes:.1f}"]
        for s in splits:
            score = row.scores.get(s)
            cells += [f"{100 * score['wer']:.1f}", f"{100 * score['cer']:.1f}"] if score else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
