"""The CPU demo recipe end to end at its tiny setting: every stage runs, reruns skip, and what it writes
hangs together.

The tiny setting trains for 4 updates, so its error rates are near 100% and say nothing about learning
(tests/training/test_learning.py covers that). What is checked is that each number in the tables comes
from the stage before it: the hypotheses are scored again here, independently, against the prepared
transcripts; the table cells are those scores; the trainer's best validation CER is what `evaluate`
measures on the best checkpoint; the LM decode of test uses the setting that won on dev.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("dev-clean", "test-clean")
SYSTEMS = {"pretrained": "finetune-pretrained", "scratch": "finetune-scratch"}


def levenshtein(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def manifest_seconds(path: Path) -> tuple[int, float]:
    """Items and seconds of audio in a manifest (root line, then ``path<TAB>samples``)."""
    items = [line.split("\t") for line in lines(path)[1:] if line.strip()]
    return len(items), sum(int(samples) for _, samples in items) / 16000


def read_table(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and each row's cells by system name."""
    table = [line for line in lines(path) if line.startswith("|")]  # the examples section follows the table
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]
    return rows[0], {row[0]: row[1:] for row in rows[2:]}


def check_scores(decode: Path, data: Path) -> dict[str, dict]:
    """The references are the prepared transcripts, one hypothesis per utterance, and the scores in
    ``summary.json`` are the edit distances of the hypotheses (characters of the word strings, spaces
    included; words); returns the summary."""
    summary = json.loads((decode / "summary.json").read_text())
    assert sorted(summary) == sorted(SPLITS)
    for split in SPLITS:
        refs, hyps = lines(decode / f"ref.{split}.txt"), lines(decode / f"hyp.{split}.txt")
        assert refs == lines(data / f"{split}.wrd")
        assert len(hyps) == len(refs) == manifest_seconds(data / f"{split}.tsv")[0] == summary[split]["utterances"]
        chars = sum(levenshtein(list(r), list(h)) for r, h in zip(refs, hyps))
        words = sum(levenshtein(r.split(), h.split()) for r, h in zip(refs, hyps))
        assert summary[split]["chars"]["errors"] == chars
        assert summary[split]["words"]["errors"] == words
        assert summary[split]["cer"] == pytest.approx(chars / sum(len(r) for r in refs))
        assert summary[split]["wer"] == pytest.approx(words / sum(len(r.split()) for r in refs))
        assert json.loads((decode / f"result.{split}.json").read_text())["cer"] == summary[split]["cer"]
    return summary


def check_table(table: Path, out: Path, decode_dir: str) -> list[str]:
    """Each cell of a results table is the figure it reports, from the files it was made from."""
    header, rows = read_table(table)
    assert header[:3] == ["system", "pretraining min", "labeled min"]
    assert header[3:] == [f"{split} {metric}" for split in SPLITS for metric in ("WER", "CER")]
    assert list(rows) == list(SYSTEMS)
    pretrain_seconds = json.loads((out / "pretrain" / "train_result.json").read_text())["train_seconds"]
    labeled_seconds = manifest_seconds(out / "data" / "train-clean-100-1m.tsv")[1]
    assert 60 <= labeled_seconds <= 60 + 20  # a 1-minute subset, overshooting by less than one utterance
    for system, cells in rows.items():
        summary = check_scores(out / SYSTEMS[system] / decode_dir, out / "data")
        minutes = pretrain_seconds / 60 if system == "pretrained" else 0.0
        assert cells[:2] == [f"{minutes:.1f}", f"{labeled_seconds / 60:.1f}"]
        assert cells[2:] == [f"{100 * summary[split][metric]:.1f}" for split in SPLITS for metric in ("wer", "cer")]
    return header


def check_examples(out: Path, stdout: str) -> None:
    """The printed example utterances are test references with both systems' hypotheses, as decoded."""
    refs = lines(out / "finetune-pretrained" / "decode" / "ref.test-clean.txt")
    hyps = {name: lines(out / system / "decode" / "hyp.test-clean.txt") for name, system in SYSTEMS.items()}
    shown = [line.split("REF: ", 1)[1] for line in stdout.splitlines() if "REF: " in line]
    assert len(shown) == 2 and all(ref in refs for ref in shown)
    for ref in shown:
        i = refs.index(ref)
        for name, hyp in hyps.items():
            assert any(line.startswith(f"{name} (CER") and line.rstrip().endswith(hyp[i].strip())
                       for line in stdout.splitlines()), (name, hyp[i])
    assert (out / "results.md").read_text().count("REF: ") == 2
    made = "updates: pretraining 4, fine-tuning 4 (pretrained) and 4 (scratch)"  # what each run made
    assert made in stdout and made in (out / "results.md").read_text()


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in lines(path) if line.strip()]


@pytest.mark.slow
def test_synthetic_recipe_tiny(tmp_path):
    out = tmp_path / "exp"
    env = dict(os.environ, SPEECHCL=f"{sys.executable} -m speechcl", OMP_NUM_THREADS="2")
    cmd = ["bash", str(ROOT / "recipes/synthetic/run.sh"), "--setting", "tiny", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("0-synth", "1-prepare", "2-pretrain", "3-finetune", "4-decode", "5-report"):
        assert (out / ".done" / stage).exists()
    assert len(lines(out / "corpus" / "lm-text.txt")) == 500

    # pretraining ran its 4 updates with finite losses
    pretrain = json.loads((out / "pretrain" / "train_result.json").read_text())
    assert pretrain["num_updates"] == 4 and pretrain["train_seconds"] > 0
    train_steps = [e for e in read_log(out / "pretrain" / "log.jsonl") if e["split"] == "train"]
    assert train_steps and train_steps[-1]["step"] == 4 and all(math.isfinite(e["loss"]) for e in train_steps)

    header = check_table(out / "results.md", out, "decode")
    check_examples(out, proc.stdout)
    for plot in ("pretraining.png", "finetuning.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(out / plot) in proc.stdout  # the output names the plots
    assert check_table(out / "results_lm.md", out, "decode_lm") == header
    penalties = {}
    for system in SYSTEMS.values():
        # the trainer's validation (best checkpoint chosen by dev CER) scores what `evaluate` measures
        log = read_log(out / system / "log.jsonl")
        valid = [e for e in log if e["split"] == "valid"]
        assert [e["step"] for e in valid] == [2, 4]
        best_cer = min(e["cer"] for e in valid)
        assert valid[-1]["best"] == pytest.approx(best_cer)
        summary = json.loads((out / system / "decode" / "summary.json").read_text())
        # greedy decoding's blank penalty: chosen on dev CER; penalty 0 is what the trainer validated
        greedy = json.loads((out / system / "decode" / "tune.json").read_text())
        assert greedy["metric"] == "cer" and [e["blank_penalty"] for e in greedy["grid"]] == [0, 1]
        assert greedy["grid"][0]["cer"] == pytest.approx(best_cer, abs=1e-9)
        assert summary["dev-clean"]["cer"] == pytest.approx(greedy["best"]["cer"], abs=1e-9)
        assert greedy["best"]["cer"] == min(e["cer"] for e in greedy["grid"])
        penalties[system] = greedy["best"]["blank_penalty"]
        # the LM settings that won on dev decode test, and dev's result is that grid entry
        tune = json.loads((out / system / "decode_lm" / "tune.json").read_text())
        assert len(tune["grid"]) == 2 and tune["metric"] == "wer"
        assert tune["best"]["wer"] == min(entry["wer"] for entry in tune["grid"])
        for split in SPLITS:
            settings = json.loads((out / system / "decode_lm" / f"result.{split}.json").read_text())["settings"]
            assert settings["decoder"] == "beam" and settings["lm"].endswith("4gram.arpa")
            assert settings["tuned_on"] == "dev-clean"
            assert (settings["lm_weight"], settings["word_score"]) == (tune["best"]["lm_weight"],
                                                                       tune["best"]["word_score"])
        dev_lm = json.loads((out / system / "decode_lm" / "result.dev-clean.json").read_text())
        assert (dev_lm["wer"], dev_lm["cer"]) == pytest.approx((tune["best"]["wer"], tune["best"]["cer"]))

    chosen = (f"blank penalty {penalties['finetune-pretrained']} (pretrained) and "
              f"{penalties['finetune-scratch']} (scratch), chosen on dev CER")
    assert chosen in proc.stdout and chosen in (out / "results.md").read_text()

    # a rerun skips every stage
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert again.stdout.count("done already") == 6


@pytest.mark.slow
def test_synthetic_recipe_hubert_objective(tmp_path):
    """``--objective hubert`` clusters MFCC frames before pretraining and pretrains with HuBERT on those
    labels, with the settings the recipe names, into its own default folder (wav2vec 2.0's stays free)."""
    env = dict(os.environ, SPEECHCL=f"{sys.executable} -m speechcl", OMP_NUM_THREADS="2")
    cmd = ["bash", str(ROOT / "recipes/synthetic/run.sh"), "--setting", "tiny", "--objective", "hubert",
           "--stop-stage", "2"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "exp" / "synthetic-tiny-hubert"
    assert not (tmp_path / "exp" / "synthetic-tiny").exists()
    km = json.loads((out / "data" / "km.json").read_text())
    assert km["num_clusters"] == 8 and km["features"] == "mfcc"
    for split in SPLITS[:1] + ("train-clean-100",):
        labels = lines(out / "data" / f"{split}.km")
        assert len(labels) == manifest_seconds(out / "data" / f"{split}.tsv")[0]
    config = (out / "pretrain" / "config.yaml").read_text()
    assert "name: hubert" in config and "unmasked_weight: 0.5" in config and "lr: 0.001" in config
    train_steps = [e for e in read_log(out / "pretrain" / "log.jsonl") if e["split"] == "train"]
    assert train_steps[-1]["step"] == 4 and train_steps[-1]["chance_uniform"] == pytest.approx(1 / 8)
    assert all(math.isfinite(e["masked_loss"]) for e in train_steps)
    bad = subprocess.run(cmd[:-2] + ["--objective", "data2vec"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "unknown objective data2vec" in bad.stderr
