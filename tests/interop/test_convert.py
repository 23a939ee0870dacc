"""Round trips: transformers -> speechcl -> transformers, and fairseq layout -> speechcl -> transformers."""

from __future__ import annotations

import json

import pytest
import torch

import speechcl
from speechcl.interop.export import export_to_transformers
from speechcl.interop.loading import read_metadata
from tests.interop.cli_helper import run_verb
from tests.interop.test_fairseq import fairseq_model_cfg, fairseq_state

transformers = pytest.importorskip("transformers")
from transformers import Wav2Vec2Config as HFConfig  # noqa: E402

TOL = 1e-4


def cli(argv: list[str]) -> int:
    return run_verb("speechcl.interop.commands", argv)


def hf_config(stable: bool, **kw) -> HFConfig:
    values = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group", conv_bias=stable,
        codevector_dim=32, proj_codevector_dim=24, num_codevectors_per_group=16, num_negatives=7,
    )
    values.update(kw)
    return HFConfig(**values)


def hf_outputs(model, wav: torch.Tensor):
    core = model if isinstance(model, transformers.Wav2Vec2Model) else model.wav2vec2
    with torch.no_grad():
        out = core(wav, output_hidden_states=True)
        logits = model(wav).logits if isinstance(model, transformers.Wav2Vec2ForCTC) else None
    return out, logits


@pytest.mark.parametrize("kind", ["pretraining-postln", "pretraining-preln", "ctc", "bare"])
def test_transformers_speechcl_transformers_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    stable = kind != "pretraining-postln"
    cls = {"ctc": transformers.Wav2Vec2ForCTC, "bare": transformers.Wav2Vec2Model}.get(
        kind, transformers.Wav2Vec2ForPreTraining)
    original = cls(hf_config(stable, vocab_size=12)).eval()
    original.save_pretrained(tmp_path / "hf")
    assert cli(["convert", str(tmp_path / "hf"), str(tmp_path / "sc")]) == 0
    assert cli(["convert", str(tmp_path / "sc"), str(tmp_path / "hf2"), "--to", "transformers"]) == 0
    back = cls.from_pretrained(tmp_path / "hf2").eval()
    a, b = original.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    wav = torch.randn(2, 7000, generator=torch.Generator().manual_seed(1))
    (ra, la), (rb, lb) = hf_outputs(original, wav), hf_outputs(back, wav)
    assert torch.equal(ra.last_hidden_state, rb.last_hidden_state)
    if la is not None:
        assert torch.equal(la, lb)


def test_export_matches_speechcl_outputs(tmp_path):
    """A speechcl-trained model exported to transformers gives our numbers there (tiny preset: pre-LN)."""
    torch.manual_seed(2)
    ours = speechcl.Wav2Vec2ForCTC(speechcl.preset("tiny"), vocab_size=9).eval()
    export_to_transformers(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["Wav2Vec2ForCTC"] and cfg["pad_token_id"] == 0
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    wav = torch.randn(2, 12000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(wav, output_hidden_states=True)
        logits, _ = ours(wav)
    got = ours.extract_features(wav)
    assert float((ref.logits - logits).abs().max()) <= TOL
    for x, y in zip(ref.hidden_states, got.hidden_states, strict=True):
        assert float((x - y).abs().max()) <= TOL


def test_fairseq_to_transformers(tmp_path):
    torch.manual_seed(4)
    cfg = speechcl.preset("tiny", extractor_mode="group_norm", conv_bias=False, layer_norm_first=False)
    ours = speechcl.Wav2Vec2ForPretraining(cfg).eval()
    torch.save({"cfg": {"model": fairseq_model_cfg(cfg)}, "model": fairseq_state(ours)}, tmp_path / "w2v.pt")
    assert cli(["convert", str(tmp_path / "w2v.pt"), str(tmp_path / "sc")]) == 0
    assert isinstance(speechcl.load_model(tmp_path / "sc"), speechcl.Wav2Vec2ForPretraining)
    assert cli(["convert", str(tmp_path / "w2v.pt"), str(tmp_path / "hf"), "--to", "transformers"]) == 0
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    wav = torch.randn(1, 9000, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf.wav2vec2(wav, output_hidden_states=True)
    got = ours.extract_features(wav)
    for x, y in zip(ref.hidden_states, got.hidden_states, strict=True):
        assert float((x - y).abs().max()) <= TOL


def test_convert_reports_bad_source(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    assert cli(["convert", str(tmp_path / "junk"), str(tmp_path / "out")]) == 1
    assert "neither a speechcl checkpoint" in capsys.readouterr().err


def test_labels_and_normalize_travel_between_formats(tmp_path):
    torch.manual_seed(6)
    cfg = speechcl.preset("tiny")
    ours = speechcl.Wav2Vec2ForCTC(cfg, vocab_size=7).eval()
    ctc_cfg = {"_name": "wav2vec_ctc", "w2v_args": {"model": fairseq_model_cfg(cfg), "task": {"normalize": True}}}
    torch.save({"cfg": {"model": ctc_cfg, "task": {"normalize": True}}, "model": fairseq_state(ours)},
               tmp_path / "ctc.pt")
    (tmp_path / "dict.ltr.txt").write_text("| 10\nE 5\nT 3\n")
    (tmp_path / "bad.ltr.txt").write_text("| 10\n")
    assert cli(["convert", str(tmp_path / "ctc.pt"), str(tmp_path / "x"), "--dict", str(tmp_path / "bad.ltr.txt")]) == 1
    assert cli(["convert", str(tmp_path / "ctc.pt"), str(tmp_path / "sc"), "--dict", str(tmp_path / "dict.ltr.txt")]) == 0
    labels = ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "T"]
    assert read_metadata(tmp_path / "sc").labels == labels and read_metadata(tmp_path / "sc").normalize
    assert cli(["convert", str(tmp_path / "sc"), str(tmp_path / "hf"), "--to", "transformers"]) == 0
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["do_normalize"] is True
    assert read_metadata(tmp_path / "hf").labels == labels
    assert cli(["convert", str(tmp_path / "hf"), str(tmp_path / "sc2")]) == 0
    assert read_metadata(tmp_path / "sc2") == read_metadata(tmp_path / "sc")
    tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.pad_token_id == 0 and tokenizer.decode([5, 5, 0, 6, 4, 5]) == "ET E"
