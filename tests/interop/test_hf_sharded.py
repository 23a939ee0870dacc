"""Sharded transformers checkpoints (``*.index.json`` + shard files, as ``save_pretrained`` writes them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import speechcl

transformers = pytest.importorskip("transformers")
from transformers import Wav2Vec2Config as HFConfig  # noqa: E402

TOL = 1e-4
INDEX = "model.safetensors.index.json"


def save_sharded(directory: Path) -> transformers.Wav2Vec2ForPreTraining:
    """A small random ``Wav2Vec2ForPreTraining`` saved in several safetensors shards."""
    torch.manual_seed(0)
    cfg = HFConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                   codevector_dim=32, proj_codevector_dim=24, num_codevectors_per_group=16, num_negatives=7)
    model = transformers.Wav2Vec2ForPreTraining(cfg).eval()
    model.save_pretrained(directory, max_shard_size="200KB")
    return model


def to_bin_shards(directory: Path) -> None:
    """Rewrite the safetensors shards as ``pytorch_model-*.bin`` shards with a ``pytorch_model.bin.index.json``
    (transformers 5 writes safetensors only; this is the layout older versions wrote for ``.bin``)."""
    index = json.loads((directory / INDEX).read_text())
    renamed = {}
    for shard in sorted(set(index["weight_map"].values())):
        new = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(str(directory / shard)), directory / new)
        (directory / shard).unlink()
        renamed[shard] = new
    index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (directory / INDEX).unlink()


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_sharded_checkpoint_matches_transformers(tmp_path, weights):
    hf = save_sharded(tmp_path)
    shards = json.loads((tmp_path / INDEX).read_text())["weight_map"].values()
    assert len(set(shards)) > 1 and not (tmp_path / "model.safetensors").exists()
    if weights == "bin":
        to_bin_shards(tmp_path)
        assert sorted(p.name for p in tmp_path.glob("*.bin"))[0].startswith("pytorch_model-")
    ours = speechcl.load_model(tmp_path)
    assert isinstance(ours, speechcl.Wav2Vec2ForPretraining)
    wav = torch.randn(2, 9000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf.wav2vec2(wav, output_hidden_states=True)
    got = ours.extract_features(wav)
    assert len(got.hidden_states) == len(ref.hidden_states) == 3
    for x, y in zip(ref.hidden_states, got.hidden_states, strict=True):
        assert float((x - y).abs().max()) <= TOL


def test_missing_shard_is_named(tmp_path):
    save_sharded(tmp_path)
    shard = sorted(set(json.loads((tmp_path / INDEX).read_text())["weight_map"].values()))[1]
    (tmp_path / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"{INDEX} lists shard files .*: {shard}; .*download"):
        speechcl.load_model(tmp_path)


def test_shard_without_its_tensors_or_damaged(tmp_path):
    save_sharded(tmp_path)
    index = json.loads((tmp_path / INDEX).read_text())
    first, second = sorted(set(index["weight_map"].values()))[:2]
    moved = next(k for k, v in index["weight_map"].items() if v == second)
    index["weight_map"][moved] = first  # the index now sends this tensor to a shard that lacks it
    (tmp_path / INDEX).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"{first} lacks 1 tensors .*{moved}"):
        speechcl.load_model(tmp_path)
    (tmp_path / first).write_bytes((tmp_path / first).read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{first} is not a readable safetensors file"):
        speechcl.load_model(tmp_path)
