"""Session fixture of the training tests: one tiny synthetic corpus and its manifests (see helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechcl.data.prepare import prepare_librispeech
from speechcl.data.synth import synthesize_corpus
from tests.training.helpers import CORPUS


@pytest.fixture(scope="session")
def manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_corpus")
    synthesize_corpus(root / "corpus", CORPUS, workers=2)
    out = root / "data"
    result = prepare_librispeech(root / "corpus", out)
    assert result.usable > 0 and not result.skipped()
    return out
