"""recipes/librispeech/run.sh: options, and stage 0 (with its .done marker) on the session corpus.

The whole recipe on a synthetic corpus (stages 0-4, ~1.5 min) is the README's smoke run; here only
what is cheap.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "recipes" / "librispeech" / "run.sh"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPEECHCL=f"{sys.executable} -m speechcl")
    return subprocess.run(["bash", str(RUN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_usage_and_bad_options(tmp_path: Path) -> None:
    usage = _run("--help", cwd=tmp_path)
    assert usage.returncode == 0 and "--stop-stage" in usage.stdout and "Stages" in usage.stdout
    assert _run("--root", "x", "--subsets", "5h", cwd=tmp_path).returncode == 2
    assert _run("--root", "x", "--frobnicate", cwd=tmp_path).returncode == 2
    assert _run("--stage", "0", cwd=tmp_path).returncode == 2  # --root is required


def test_stage_0_prepares_and_is_skipped_on_rerun(manifest_dir: Path, tmp_path: Path) -> None:
    corpus = manifest_dir.parent / "corpus"
    args = ("--cpu", "--root", str(corpus), "--data", "data", "--exp", "exp", "--stop-stage", "0")
    first = _run(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    data = tmp_path / "data"
    for name in ("train-clean-100", "train-clean-100-10m", "train-clean-100-1h", "dev-clean", "test-clean"):
        assert (data / f"{name}.tsv").exists() and (data / f"{name}.ltr").exists(), name
    assert (data / "dict.ltr.txt").exists() and (data / ".done" / "prepare").exists()
    again = _run(*args, cwd=tmp_path)
    assert again.returncode == 0 and "prepare: done already" in again.stdout
