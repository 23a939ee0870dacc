"""The CPU demo recipe end to end at its tiny setting: every stage runs, reruns skip, the table is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_synthetic_recipe_tiny(tmp_path):
    out = tmp_path / "exp"
    env = dict(os.environ, SPEECHCL=f"{sys.executable} -m speechcl", OMP_NUM_THREADS="2")
    cmd = ["bash", str(ROOT / "recipes/synthetic/run.sh"), "--setting", "tiny", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "results.md").read_text()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| system | pretraining min | labeled min | dev-clean WER | dev-clean CER")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["pretrained", "scratch"]
    scratch_pretrain_minutes = float(lines[3].split("|")[2])
    assert scratch_pretrain_minutes == 0.0
    assert float(lines[2].split("|")[2]) >= 0.0  # minutes at one decimal: a tiny run may show 0.0
    assert json.loads((out / "pretrain" / "train_result.json").read_text())["train_seconds"] > 0
    for stage in ("0-synth", "1-prepare", "2-pretrain", "3-finetune-pretrained", "4-finetune-scratch",
                  "5-decode", "6-report"):
        assert (out / ".done" / stage).exists()
    for system in ("finetune-pretrained", "finetune-scratch"):
        assert (out / system / "decode" / "hyp.test-clean.txt").exists()
        lm_result = json.loads((out / system / "decode_lm" / "result.test-clean.json").read_text())
        assert lm_result["settings"]["decoder"] == "beam" and lm_result["settings"]["lm"].endswith("4gram.arpa")
        assert lm_result["settings"]["tuned_on"] == "dev-clean"
        assert len(json.loads((out / system / "decode_lm" / "tune.json").read_text())["grid"]) == 2
    lm_table = (out / "results_lm.md").read_text().strip().splitlines()
    assert lm_table[0] == lines[0] and len(lm_table) == 4
    assert len((out / "corpus" / "lm-text.txt").read_text().splitlines()) == 500
    # a rerun skips every stage
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert again.stdout.count("done already") == 7
