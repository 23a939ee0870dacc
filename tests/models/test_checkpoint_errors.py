"""Broken checkpoints fail with a ValueError that names the file and says what is wrong."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import speechcl
from speechcl.interop.export import export_to_transformers
from speechcl.interop.loading import read_metadata
from speechcl.models.checkpoint import VERSION
from tests.interop.cli_helper import run_verb


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = speechcl.Wav2Vec2ForCTC(speechcl.preset("tiny"), vocab_size=7)
    return speechcl.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "good")


@pytest.fixture
def ckpt(tmp_path, saved) -> Path:
    """A fresh copy of a valid CTC checkpoint directory, for one test to damage."""
    out = tmp_path / "ckpt"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        (out / name).write_bytes((saved / name).read_bytes())
    return out


def fails(path: Path, pattern: str):
    """``pytest.raises(ValueError)`` whose message starts with ``path`` followed by the regex ``pattern``."""
    return pytest.raises(ValueError, match=re.escape(str(path)) + pattern)


def edit_config(directory: Path, change) -> None:
    cfg = json.loads((directory / "config.json").read_text())
    change(cfg)
    (directory / "config.json").write_text(json.dumps(cfg))


def edit_weights(directory: Path, change) -> None:
    state = load_file(str(directory / "model.safetensors"))
    change(state)
    save_file(state, str(directory / "model.safetensors"))


def test_valid_copy_loads(ckpt):
    assert isinstance(speechcl.load_model(ckpt), speechcl.Wav2Vec2ForCTC)


@pytest.mark.parametrize("damage, expected", [
    (lambda s: s.pop("head.bias"), r"missing 1 \(head\.bias\)"),
    (lambda s: s.update(extra=torch.zeros(2)), r"unexpected 1 \(extra\)"),
    (lambda s: s.update({"head.weight": torch.zeros(9, s["head.weight"].shape[1])}),
     r"shape mismatches 1 \(head\.weight: \(9, \d+\) in the file, \(7, \d+\) in the model\)"),
], ids=["missing", "unexpected", "shape"])
def test_weights_that_do_not_fit_the_config(ckpt, damage, expected):
    edit_weights(ckpt, damage)
    with fails(ckpt / "model.safetensors", f" do not fit the model.*{expected}.*saved with"):
        speechcl.load_model(ckpt)


def test_config_that_does_not_fit_the_weights(ckpt):
    edit_config(ckpt, lambda c: c["model"].update(encoder_ffn_embed_dim=c["model"]["encoder_ffn_embed_dim"] * 2))
    with pytest.raises(ValueError, match=r"do not fit the model.*shape mismatches .*fc1\.weight"):
        speechcl.load_model(ckpt)


def test_newer_format_version_is_refused(ckpt):
    edit_config(ckpt, lambda c: c.update(version=VERSION + 1))
    with pytest.raises(ValueError, match=f"newer speechcl .*version {VERSION + 1}.*upgrade speechcl"):
        speechcl.load_model(ckpt)


def test_absent_version_reads_as_the_first(ckpt):
    edit_config(ckpt, lambda c: c.pop("version"))
    assert isinstance(speechcl.load_model(ckpt), speechcl.Wav2Vec2ForCTC)


@pytest.mark.parametrize("change, expected", [
    (lambda c: c.update(version="2"), "'version' must be an integer, got '2'"),
    (lambda c: c.pop("model"), "has no 'model' entry"),
    (lambda c: c.pop("architecture"), "has no 'architecture' entry"),
    (lambda c: c.pop("vocab_size"), "needs vocab_size"),
    (lambda c: c.update(model=[1, 2]), "'model' must be a JSON object"),
    (lambda c: c.update(architecture="Wav2Vec2ForMagic"), "unknown architecture 'Wav2Vec2ForMagic'"),
    (lambda c: c.update(vocab_size="7"), "'vocab_size' must be a positive integer, got '7'"),
    (lambda c: c["model"].update(encoder_layers="2"), "model.encoder_layers must be of type int .*got '2'"),
    (lambda c: c["model"].update(encoder_layers=2.0), "model.encoder_layers must be of type int"),
    (lambda c: c["model"].update(layer_norm_first=1), "model.layer_norm_first must be of type bool"),
    (lambda c: c["model"].update(conv_layers=[[32, "ten", 5]]), "invalid model config"),
    (lambda c: c["model"].update(dropout=3.0), "invalid model config: dropout must lie in"),
    (lambda c: c["model"].update(no_such_field=1), "unknown model config keys"),
], ids=["version-type", "no-model", "no-architecture", "no-vocab-size", "model-type", "architecture", "vocab-type",
        "int-as-str", "int-as-float", "bool-as-int", "conv-layers", "dropout-range", "unknown-key"])
def test_broken_config_json(ckpt, change, expected):
    edit_config(ckpt, change)
    with fails(ckpt / "config.json", f".*{expected}"):
        speechcl.load_model(ckpt)


@pytest.mark.parametrize("text, expected", [
    ('{"format": "speechcl", "model": ', "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, got a list"),
], ids=["invalid-json", "not-an-object"])
def test_unreadable_config_json(ckpt, text, expected):
    (ckpt / "config.json").write_text(text)
    with fails(ckpt / "config.json", f" {expected}"):
        speechcl.load_model(ckpt)


def test_bad_metadata_types(ckpt):
    edit_config(ckpt, lambda c: c.update(labels="abc"))
    with pytest.raises(ValueError, match="'labels' must be a list of strings"):
        read_metadata(ckpt)
    edit_config(ckpt, lambda c: c.update(labels=None, normalize="yes"))
    with pytest.raises(ValueError, match="'normalize' must be true or false"):
        read_metadata(ckpt)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_corrupt_safetensors(ckpt, damage):
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "random": random.Random(1).randbytes(4096), "empty": b""}[damage])
    with fails(weights, " is not a readable safetensors file .*corrupt"):
        speechcl.load_model(ckpt)


def test_corrupt_weights_of_a_transformers_directory(tmp_path):
    export_to_transformers(speechcl.Wav2Vec2Encoder(speechcl.preset("tiny")), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with fails(tmp_path / "model.safetensors", " is not a readable safetensors"):
        speechcl.load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(random.Random(0).randbytes(512))
    with fails(tmp_path / "pytorch_model.bin", " is not a readable torch weights file"):
        speechcl.load_model(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights: expected model.safetensors"):
        speechcl.load_model(tmp_path)


def _damaged_pickles(count: int) -> list[bytes]:
    """Seeded damage to a real torch file: random bytes, and bytes flipped inside its pickle stream (these reach
    the unpickler and fail there with KeyError, IndexError, struct.error or UnicodeDecodeError, not only
    UnpicklingError)."""
    import io
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer, _use_new_zipfile_serialization=False)
    good = buffer.getvalue()
    rng = random.Random(0)
    damaged = [rng.randbytes(rng.randrange(1, 600)) for _ in range(count)]
    for _ in range(count):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        damaged.append(bytes(data))
    return damaged


def test_damaged_torch_files_give_one_error(tmp_path):
    """Whatever the damage, both torch readers answer with the ValueError that names the file."""
    from speechcl.interop.fairseq import read_fairseq_checkpoint
    from speechcl.interop.transformers import _read_bin

    path = tmp_path / "w.bin"
    for data in _damaged_pickles(150):
        path.write_bytes(data)
        for reader in (_read_bin, read_fairseq_checkpoint):
            try:
                reader(path)
            except ValueError as err:
                assert str(path) in str(err)
            # a flip that leaves a loadable file is fine: the reader then checks the contents


def test_convert_reports_a_broken_checkpoint(ckpt, tmp_path, capsys):
    (ckpt / "model.safetensors").write_bytes(b"junk")
    argv = ["convert", str(ckpt), str(tmp_path / "out")]
    assert run_verb("speechcl.interop.commands", argv) == 1
    assert "is not a readable safetensors file" in capsys.readouterr().err


def test_map_location_is_honoured(ckpt):
    model = speechcl.load_model(ckpt, map_location="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
