"""Shared fixtures: tiny saved models and a small generated corpus of mixed rates, channels and lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import speechcl

# (relative path, sample rate, channels, seconds)
CORPUS = (
    ("a/one.wav", 16000, 1, 1.30),
    ("a/two.flac", 8000, 1, 0.55),
    ("a/deep/three.flac", 44100, 2, 1.234),
    ("b/four.wav", 48000, 2, 0.81),
    ("b/five.ogg", 16000, 2, 0.97),
    ("six.wav", 22050, 1, 1.61),
)


def write_corpus(root: Path, files=CORPUS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for rel, sr, channels, seconds in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (0.3 * rng.standard_normal((int(seconds * sr), channels))).clip(-1, 1).astype(np.float32)
        sf.write(path, data, sr)
    return root


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _save(model, directory: Path) -> Path:
    speechcl.save_checkpoint(model, directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Layer-norm extractor, pre-LN (padding-invariant): batches mix lengths."""
    torch.manual_seed(0)
    return _save(speechcl.Wav2Vec2ForPretraining(speechcl.preset("tiny")), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def groupnorm_model_dir(tmp_path_factory) -> Path:
    """Group-norm extractor, post-LN (BASE-like): output depends on padding."""
    torch.manual_seed(1)
    cfg = speechcl.preset("tiny", extractor_mode="group_norm", conv_bias=False, layer_norm_first=False)
    return _save(speechcl.Wav2Vec2ForCTC(cfg, vocab_size=8), tmp_path_factory.mktemp("gn"))
