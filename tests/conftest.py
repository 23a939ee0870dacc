"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one torch thread (tiny models are fastest so, and the suite shares two cores)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny synthetic corpus and its manifests for every training test (tests/training/helpers.py)."""
    from speechcl.data.prepare import prepare_librispeech
    from speechcl.data.synth import synthesize_corpus
    from tests.training.helpers import CORPUS

    root = tmp_path_factory.mktemp("train_corpus")
    synthesize_corpus(root / "corpus", CORPUS, workers=2)
    out = root / "data"
    result = prepare_librispeech(root / "corpus", out)
    assert result.usable > 0 and not result.skipped()
    return out
