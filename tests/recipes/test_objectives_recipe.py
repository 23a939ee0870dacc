"""The objectives recipe end to end at its tiny setting, for one method (hubert) and the random floor, two at a time:
every piece runs once and leaves its marker, the runs get the settings the recipe promises (the same budget,
one thread, each method's overrides), the table's cells are the numbers of the files they come from, the
figures are written, a rerun skips everything, and deleting one marker reruns that piece alone.

The tiny setting trains for 3 updates: its numbers say nothing about the methods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("hubert", "random")  # one method keeps the default suite short; hubert also runs stage 2
PIECES = ["0-synth-corpus", "1-prepare-corpus", "2-cluster", *[f"{stage}-{m}" for stage in (
    "3-pretrain", "4-probes", "5-invariance", "6-finetune") for m in METHODS], "7-lm",
    *[f"7-decode-{m}" for m in METHODS], "8-results"]


def run_recipe(out: Path, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPEECHCL=f"{sys.executable} -m speechcl", OMP_NUM_THREADS="1")
    cmd = ["bash", str(ROOT / "recipes/objectives/run.sh"), "--setting", "tiny", "--out", str(out),
           "--methods", " ".join(METHODS), "--jobs", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def config(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


def read_json(path: Path):
    return json.loads(path.read_text())


def main_table(path: Path) -> dict[str, dict[str, str]]:
    """The first table of results.md: ``{method: {header: cell}}``."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    head = rows[0]
    return {row[0]: dict(zip(head[1:], row[1:])) for row in rows[2:]}


def test_objectives_recipe_tiny(tmp_path):
    out = tmp_path / "exp"
    first = run_recipe(out, timeout=600)
    assert sorted(p.name for p in (out / ".done").iterdir()) == sorted(PIECES)
    assert "FAILED" not in first.stdout + first.stderr

    # pretraining: one thread each, the same budget, each method its objective and overrides; random saved at 0 updates
    runs = {m: config(out / m / "pretrain") for m in METHODS}
    for m, cfg in runs.items():
        assert cfg["trainer"]["threads"] == 1
        assert cfg["trainer"]["max_update"] == (0 if m == "random" else 3)
        assert cfg["data"]["manifest_dir"] == str(out / "data")
        assert read_json(out / m / "pretrain" / "train_result.json")["num_updates"] == cfg["trainer"]["max_update"]
    assert runs["random"]["objective"]["name"] == "wav2vec2"
    assert runs["hubert"]["objective"]["name"] == "hubert" and runs["hubert"]["data"]["frame_labels"] == "km"
    assert runs["hubert"]["optim"]["lr"] == 0.001 and runs["hubert"]["objective"]["unmasked_weight"] == 0.5
    assert runs["hubert"]["objective"]["feature_pen_weight"] == 0
    assert read_json(out / "data" / "km.json")["num_clusters"] == 8

    # fine-tuning: the same updates for all; random from scratch, the others from their pretraining's best
    for m in METHODS:
        ft = config(out / m / "finetune")
        assert ft["trainer"]["max_update"] == 3 and ft["data"]["train_subset"] == "train-clean-100-1m"
        assert ft["model"]["init"] == ("" if m == "random" else str(out / m / "pretrain" / "checkpoints" / "best"))

    # the table: a row per method, every cell a number read from its file
    table = main_table(out / "results.md")
    assert list(table) == list(METHODS)
    for m, row in table.items():
        assert "-" not in row.values(), row
        result = read_json(out / m / "pretrain" / "train_result.json")
        assert row["updates"] == str(result["num_updates"])
        assert row["pretrain wall min"] == f"{result['train_seconds'] / 60:.1f}"
        probe = read_json(out / m / "probes" / "phone" / "results.json")
        best = str(probe["best_layer"])
        assert row["phone acc best (layer)"] == f"{probe['per_layer'][best]:.3f} ({best})"
        assert row["phone acc weighted"] == f"{probe['weighted_sum']:.3f}"
        cosine = read_json(out / m / "invariance" / "results.json")["cosine"]
        first_layer, last_layer = ([v for k, v in layer.items() if k != "identity"] for layer in (cosine[0], cosine[-1]))
        assert row["invariance cos first / last"] == (f"{sum(first_layer) / len(first_layer):.2f} / "
                                                       f"{sum(last_layer) / len(last_layer):.2f}")
        greedy = read_json(out / m / "finetune" / "decode" / "summary.json")
        with_lm = read_json(out / m / "finetune" / "decode_lm" / "summary.json")
        assert row["dev-clean CER %"] == f"{100 * greedy['dev-clean']['cer']:.1f}"
        assert row["test-clean CER %"] == f"{100 * greedy['test-clean']['cer']:.1f}"
        assert row["test-clean WER %"] == f"{100 * greedy['test-clean']['wer']:.1f}"
        assert row["test-clean WER % (LM)"] == f"{100 * with_lm['test-clean']['wer']:.1f}"
        assert read_json(out / m / "finetune" / "decode_lm" / "result.test-clean.json")["settings"]["tuned_on"] == "dev-clean"
    assert table["random"]["audio h seen"] == "0.00"
    for name in ("pretrain_curves.png", "probes_by_layer.png", "invariance.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # a rerun skips every piece
    again = run_recipe(out, timeout=120)
    assert "===" not in again.stdout
    assert again.stdout.count("done already") == len(PIECES)

    # one method's pretraining marker gone: that piece alone runs again (the finished run has nothing left to do)
    before = (out / "hubert" / "pretrain" / "train_result.json").read_text()
    (out / ".done" / "3-pretrain-hubert").unlink()
    partial = run_recipe(out, timeout=120)
    started = [line for line in partial.stdout.splitlines() if line.startswith("===")]
    assert len(started) == 1 and started[0].startswith("=== stage 3: 3-pretrain-hubert (")
    assert partial.stdout.count("done already") == len(PIECES) - 1
    assert (out / ".done" / "3-pretrain-hubert").exists()
    assert (out / "hubert" / "pretrain" / "train_result.json").read_text() == before
