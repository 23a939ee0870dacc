"""Shared fixtures for the ASR tests: a tiny CTC model, its dictionary, generated audio."""

from __future__ import annotations

import pytest
import torch

from speechcl.asr.recognizer import Recognizer
from speechcl.data.labels import Dictionary
from speechcl.models.config import preset
from speechcl.models.wav2vec2 import Wav2Vec2ForCTC

LETTERS = list("|ETAOHNISRDLUCMWYGKB")


@pytest.fixture(scope="session")
def dictionary() -> Dictionary:
    return Dictionary(LETTERS)


@pytest.fixture(scope="session")
def tiny_ctc(dictionary: Dictionary) -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny"), vocab_size=len(dictionary))
    with torch.no_grad():  # a larger head so that argmax is not a near-tie everywhere
        model.head.weight.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="session")
def recognizer(tiny_ctc: Wav2Vec2ForCTC, dictionary: Dictionary) -> Recognizer:
    return Recognizer(tiny_ctc, dictionary)


def noise(num_samples: int, seed: int) -> torch.Tensor:
    """Deterministic speech-like test signal: noise with a slow amplitude envelope, [samples]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 16_000
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t + seed)
    return (0.1 * envelope * torch.randn(num_samples, generator=g)).float()
