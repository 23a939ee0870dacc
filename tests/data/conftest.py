"""Session fixtures: one small synthetic corpus and its prepared manifests, shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechcl.data.prepare import prepare_librispeech
from speechcl.data.synth import SynthConfig, synthesize_corpus

# about 2.4 minutes of audio: enough utterances for batching, fast to make (~1 s on 2 cores)
SMALL = SynthConfig(minutes=1.2, speakers=4, dev_minutes=0.6, test_minutes=0.6, heldout_speakers=2, seed=7,
                    chapter_minutes=0.5)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize_corpus(out, SMALL, workers=2)
    return out


@pytest.fixture(scope="session")
def prepared(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    result = prepare_librispeech(corpus, out)
    assert result.usable > 0 and not result.report
    return out
