"""Where the dictionary comes from (checkpoint labels, transformers vocab.json, or dict.ltr.txt); normalisation."""

from __future__ import annotations

import json

import pytest
import torch

from speechcl.asr.recognizer import Recognizer, checkpoint_normalize, labels_to_dictionary, resolve_dictionary
from speechcl.audio import normalize_wave
from speechcl.data.labels import Dictionary, write_dict
from speechcl.models.checkpoint import save_checkpoint

from .conftest import LETTERS, noise


def test_labels_map_to_the_dictionary_layout():
    d = labels_to_dictionary(["<s>", "<pad>", "</s>", "<unk>", "|", "E"], "x")
    assert d.symbols == ["<blank>", "<pad>", "</s>", "<unk>", "|", "E"]
    with pytest.raises(ValueError, match="four special symbols"):
        labels_to_dictionary(["|", "E", "T", "A", "O"], "x")


def test_checkpoint_labels_win_and_must_agree_with_dict(tmp_path, tiny_ctc, dictionary):
    ckpt = save_checkpoint(tiny_ctc, tmp_path / "ckpt", extra={"labels": dictionary.symbols, "normalize": True})
    assert resolve_dictionary(ckpt, None, tiny_ctc.vocab_size).symbols == dictionary.symbols
    assert checkpoint_normalize(ckpt) is True
    same = tmp_path / "dict.ltr.txt"
    write_dict(same, [(s, 1) for s in LETTERS])
    assert resolve_dictionary(ckpt, same, tiny_ctc.vocab_size).symbols == dictionary.symbols
    other = tmp_path / "other.txt"
    write_dict(other, [(s, 1) for s in reversed(LETTERS)])
    with pytest.raises(ValueError, match="does not match the labels"):
        resolve_dictionary(ckpt, other, tiny_ctc.vocab_size)


def test_dict_file_and_size_check(tmp_path, tiny_ctc):
    bare = save_checkpoint(tiny_ctc, tmp_path / "bare")
    assert checkpoint_normalize(bare) is False
    with pytest.raises(ValueError, match="--dict"):
        resolve_dictionary(bare, tmp_path / "missing.txt", tiny_ctc.vocab_size)
    short = tmp_path / "short.txt"
    write_dict(short, [("|", 1), ("A", 1)])
    with pytest.raises(ValueError, match="model outputs"):
        resolve_dictionary(bare, short, tiny_ctc.vocab_size)


def test_transformers_vocab_json(tmp_path):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    d = resolve_dictionary(tmp_path, None, 7)
    assert isinstance(d, Dictionary) and d.symbols[4:] == ["|", "E", "T"]
    assert checkpoint_normalize(tmp_path) is True


def test_normalize_feeds_the_model_the_normalised_waveform(tiny_ctc, dictionary):
    wave = 3.0 * noise(8000, seed=2) + 0.1
    normalised, _ = Recognizer(tiny_ctc, dictionary, normalize=True).forward([wave])
    plain, _ = Recognizer(tiny_ctc, dictionary).forward([normalize_wave(wave)])
    torch.testing.assert_close(normalised, plain)
    raw, _ = Recognizer(tiny_ctc, dictionary).forward([wave])
    assert not torch.allclose(raw, plain, atol=1e-3)
