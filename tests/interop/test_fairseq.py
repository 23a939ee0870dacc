"""fairseq import: checkpoints built to fairseq's layout from a speechcl model's weights must import exactly.

These cover layouts fairseq 0.12 no longer writes (``args`` namespaces, omegaconf ``cfg`` objects, float16
weights); ``test_fairseq_real.py`` checks checkpoints written by fairseq itself against fairseq's outputs.
"""

from __future__ import annotations

import argparse
import fractions

import pytest
import torch

import speechcl
from speechcl.interop.fairseq import (
    config_from_fairseq,
    load_fairseq_checkpoint,
    model_from_fairseq,
    parse_conv_layers,
    parse_literal,
)
from speechcl.models.config import Wav2Vec2Config


def fairseq_model_cfg(cfg: Wav2Vec2Config) -> dict:
    """fairseq ``Wav2Vec2Config`` fields for ``cfg``, written the way fairseq writes them."""
    dims = {spec[0] for spec in cfg.conv_layers}
    assert len(dims) == 1
    (c,) = dims
    return {
        "_name": "wav2vec2",
        "extractor_mode": "default" if cfg.extractor_mode == "group_norm" else "layer_norm",
        "conv_feature_layers": f"[({c}, 10, 5)] + [({c}, 3, 2)] * 4 + [({c},2,2)] + [({c},2,2)]",
        "conv_bias": cfg.conv_bias, "encoder_layers": cfg.encoder_layers,
        "encoder_embed_dim": cfg.encoder_embed_dim, "encoder_ffn_embed_dim": cfg.encoder_ffn_embed_dim,
        "encoder_attention_heads": cfg.encoder_attention_heads, "activation_fn": "gelu",
        "layer_norm_first": cfg.layer_norm_first, "conv_pos": cfg.conv_pos, "conv_pos_groups": cfg.conv_pos_groups,
        "latent_vars": cfg.latent_vars, "latent_groups": cfg.latent_groups, "latent_dim": cfg.latent_dim,
        "final_dim": cfg.final_dim, "num_negatives": cfg.num_negatives,
        "cross_sample_negatives": cfg.cross_sample_negatives, "logit_temp": cfg.logit_temp,
        "feature_grad_mult": cfg.feature_grad_mult, "quantize_targets": True, "quantize_input": False,
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.1,
        "dropout_features": 0.1, "encoder_layerdrop": 0.05, "mask_prob": 0.65, "mask_length": 10,
        "latent_temp": [2.0, 0.5, 0.999995], "layer_type": "transformer", "pos_conv_depth": 1,
    }


def fairseq_state(model, legacy_weight_norm: bool = True) -> dict[str, torch.Tensor]:
    """The state dict fairseq's ``Wav2Vec2Model`` / ``Wav2VecCtc`` would hold, written key by key."""
    enc = model.encoder.state_dict()
    cfg = model.cfg
    out: dict[str, torch.Tensor] = {}
    for i in range(len(cfg.conv_layers)):
        src = f"feature_extractor.layers.{i}"
        dst = f"feature_extractor.conv_layers.{i}"
        out[f"{dst}.0.weight"] = enc[f"{src}.conv.weight"]
        if cfg.conv_bias:
            out[f"{dst}.0.bias"] = enc[f"{src}.conv.bias"]
        if cfg.extractor_mode == "layer_norm":  # Sequential(TransposeLast, LayerNorm, TransposeLast)
            out[f"{dst}.2.1.weight"] = enc[f"{src}.norm.weight"]
            out[f"{dst}.2.1.bias"] = enc[f"{src}.norm.bias"]
        elif i == 0:  # GroupNorm
            out[f"{dst}.2.weight"] = enc[f"{src}.norm.weight"]
            out[f"{dst}.2.bias"] = enc[f"{src}.norm.bias"]
    for name in ("layer_norm.weight", "layer_norm.bias", "post_extract_proj.weight", "post_extract_proj.bias",
                 "mask_emb", "encoder.layer_norm.weight", "encoder.layer_norm.bias"):
        out[name] = enc[name]
    g, v = "weight_g", "weight_v"
    if not legacy_weight_norm:
        g, v = "parametrizations.weight.original0", "parametrizations.weight.original1"
    out[f"encoder.pos_conv.0.{g}"] = enc["encoder.pos_conv.conv.parametrizations.weight.original0"]
    out[f"encoder.pos_conv.0.{v}"] = enc["encoder.pos_conv.conv.parametrizations.weight.original1"]
    out["encoder.pos_conv.0.bias"] = enc["encoder.pos_conv.conv.bias"]
    for i in range(cfg.encoder_layers):
        for name in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj",
                     "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"):
            for p in ("weight", "bias"):
                out[f"encoder.layers.{i}.{name}.{p}"] = enc[f"encoder.layers.{i}.{name}.{p}"]
    if isinstance(model, speechcl.Wav2Vec2ForCTC):
        out = {f"w2v_encoder.w2v_model.{k}": t for k, t in out.items()}
        out["w2v_encoder.proj.weight"] = model.head.weight.detach()
        out["w2v_encoder.proj.bias"] = model.head.bias.detach()
    else:
        out["quantizer.vars"] = model.quantizer.codevectors.detach()
        out["quantizer.weight_proj.weight"] = model.quantizer.weight_proj.weight.detach()
        out["quantizer.weight_proj.bias"] = model.quantizer.weight_proj.bias.detach()
        for name in ("project_q", "final_proj"):
            out[f"{name}.weight"] = getattr(model, name).weight.detach()
            out[f"{name}.bias"] = getattr(model, name).bias.detach()
    return {k: t.clone() for k, t in out.items()}


def tiny(**kw) -> Wav2Vec2Config:
    return speechcl.preset("tiny", encoder_layers=2, **kw)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def assert_same_features(a, b, seconds: float = 0.6) -> None:
    wav = torch.randn(2, int(16000 * seconds), generator=torch.Generator().manual_seed(0))
    fa, fb = a.eval().extract_features(wav), b.eval().extract_features(wav)
    assert torch.equal(fa.last_hidden_state, fb.last_hidden_state)
    for x, y in zip(fa.hidden_states, fb.hidden_states, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("mode", ["layer_norm-preln", "group_norm-postln"])
def test_pretraining_checkpoint_imports_exactly(tmp_path, mode):
    torch.manual_seed(0)
    cfg = tiny() if mode == "layer_norm-preln" else tiny(extractor_mode="group_norm", conv_bias=False,
                                                           layer_norm_first=False)
    ours = speechcl.Wav2Vec2ForPretraining(cfg).eval()
    path = tmp_path / "checkpoint_best.pt"
    torch.save({"cfg": {"model": fairseq_model_cfg(cfg), "task": {"normalize": False}},
                "model": fairseq_state(ours), "optimizer_history": [{"num_updates": 3}]}, path)
    imported = speechcl.load_model(path)
    assert isinstance(imported, speechcl.Wav2Vec2ForPretraining)
    assert imported.cfg.conv_layers == cfg.conv_layers
    assert imported.cfg.extractor_mode == cfg.extractor_mode
    assert imported.cfg.layer_norm_first == cfg.layer_norm_first
    assert imported.cfg.layerdrop == 0.05 and imported.cfg.latent_temp == (2.0, 0.5, 0.999995)
    assert_same_state(ours, imported)
    assert_same_features(ours, imported)
    # pretraining head: same quantized targets and logits for a fixed mask and distractors
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    t = int(ours.encoder.output_lengths(torch.tensor([8000]))[0])
    mask = torch.zeros(2, t, dtype=torch.bool)
    mask[:, 3:15] = True
    neg = torch.randint(0, int(mask.sum()), (int(mask.sum()), cfg.num_negatives),
                        generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ours(wav, mask_indices=mask, negative_indices=neg)
        b = imported(wav, mask_indices=mask, negative_indices=neg)
    assert torch.equal(a.logits, b.logits)


def test_ctc_checkpoint_with_legacy_args_namespace(tmp_path):
    """Old fairseq files: ``args`` is an argparse.Namespace (also for w2v_args); loaded via the allow-list."""
    torch.manual_seed(1)
    cfg = tiny(extractor_mode="group_norm", conv_bias=False, layer_norm_first=False)
    ours = speechcl.Wav2Vec2ForCTC(cfg, vocab_size=32).eval()
    w2v_args = argparse.Namespace(arch="wav2vec2", **fairseq_model_cfg(cfg))
    w2v_args.latent_temp = "(2,0.5,0.999995)"  # old argparse files store it as a string
    args = argparse.Namespace(arch="wav2vec_ctc", w2v_args=w2v_args, dropout=0.0, final_dropout=0.0,
                              layerdrop=0.1, mask_prob=0.5, mask_channel_prob=0.25, mask_channel_length=64,
                              apply_mask=True, feature_grad_mult=0.0)
    path = tmp_path / "ctc.pt"
    torch.save({"args": args, "model": fairseq_state(ours, legacy_weight_norm=False)}, path)
    imported = load_fairseq_checkpoint(path)
    assert isinstance(imported, speechcl.Wav2Vec2ForCTC) and imported.vocab_size == 32
    assert imported.cfg.layerdrop == 0.1 and imported.cfg.mask_channel_length == 64
    assert imported.cfg.feature_grad_mult == 0.0 and imported.cfg.mask_prob == 0.5
    assert_same_state(ours, imported)
    wav = torch.randn(2, 9000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(wav)[0], imported(wav)[0])


def test_ctc_checkpoint_with_omegaconf_cfg(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    torch.manual_seed(2)
    cfg = tiny()
    ours = speechcl.Wav2Vec2ForCTC(cfg, vocab_size=10).eval()
    ctc_cfg = {"_name": "wav2vec_ctc", "w2v_path": "/nowhere/pretrained.pt", "apply_mask": False,
               "final_dropout": 0.0, "w2v_args": {"model": fairseq_model_cfg(cfg), "task": {"normalize": True}}}
    dict_cfg = omegaconf.OmegaConf.create({"model": ctc_cfg, "task": {"_name": "audio_finetuning"}})
    path = tmp_path / "ctc_omegaconf.pt"
    torch.save({"cfg": dict_cfg, "model": fairseq_state(ours)}, path)
    imported = speechcl.load_model(path)
    assert isinstance(imported, speechcl.Wav2Vec2ForCTC)
    assert imported.cfg.mask_prob == 0.0  # apply_mask=False
    assert_same_features(ours, imported)


def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"model": {}}, "extra": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="refusing to unpickle.*Fraction"):
        speechcl.load_model(path)


def test_missing_post_extract_proj_is_identity_and_fp16_is_upcast():
    """fairseq drops post_extract_proj when the conv width equals the model width."""
    torch.manual_seed(3)
    cfg = tiny(conv_layers=((64, 10, 5),) + ((64, 3, 2),) * 4 + ((64, 2, 2),) * 2)
    ours = speechcl.Wav2Vec2ForPretraining(cfg).eval()
    with torch.no_grad():
        ours.encoder.post_extract_proj.weight.copy_(torch.eye(64))
        ours.encoder.post_extract_proj.bias.zero_()
        for p in ours.parameters():  # representable in float16
            p.copy_(p.half().float())
    state = {k: t.half() for k, t in fairseq_state(ours).items() if "post_extract_proj" not in k}
    imported = model_from_fairseq({"cfg": {"model": fairseq_model_cfg(cfg)}, "model": state})
    assert imported.encoder.post_extract_proj.weight.dtype == torch.float32
    assert_same_state(ours, imported)


def test_encoder_only_when_no_quantizer():
    cfg = tiny()
    ours = speechcl.Wav2Vec2ForPretraining(cfg).eval()
    state = {k: t for k, t in fairseq_state(ours).items() if not k.startswith("quantizer.")}
    model_cfg = fairseq_model_cfg(cfg) | {"quantize_targets": False}
    imported = model_from_fairseq({"cfg": {"model": model_cfg}, "model": state})
    assert isinstance(imported, speechcl.Wav2Vec2Encoder)
    assert_same_features(ours.encoder, imported)


def test_unexpected_weights_and_unsupported_configs_are_named():
    cfg = tiny()
    ours = speechcl.Wav2Vec2ForPretraining(cfg)
    state = fairseq_state(ours) | {"target_glu.0.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="target_glu"):
        model_from_fairseq({"cfg": {"model": fairseq_model_cfg(cfg)}, "model": state}, "x.pt")
    with pytest.raises(ValueError, match="layer_type='conformer'"):
        config_from_fairseq(fairseq_model_cfg(cfg) | {"layer_type": "conformer"})
    with pytest.raises(ValueError, match="'hubert' is not supported"):
        config_from_fairseq(fairseq_model_cfg(cfg) | {"_name": "hubert"})
    with pytest.raises(ValueError, match="no model configuration"):
        model_from_fairseq({"model": fairseq_state(ours)})


def test_conv_layer_strings_parse_safely():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == \
        speechcl.preset("base").conv_layers
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]") == \
        speechcl.preset("base").conv_layers
    assert parse_literal("(2,0.5,0.999995)") == (2, 0.5, 0.999995)
    for bad in ("__import__('os').system('true')", "[(512, 10, 5)] * n", "[(1, 2, 3)].pop()", "[(1,2)]"):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_conv_layers(bad)


def test_untrusted_literals_are_bounded():
    for huge in ("[(1, 1, 1)] * 1000000000", "1000000000 * [(1, 1, 1)]", "[(1, 1, 1)] * 10**9",
                 "([(1,1,1)] * 9000) + ([(1,1,1)] * 9000)", "[" * 5000 + "]" * 5000, "[1]" + " + [1]" * 20000):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_literal(huge, "conv_feature_layers")
    assert len(parse_literal("[(1, 1, 1)] * 10000")) == 10000  # the bound itself is allowed


def test_checkpoint_config_resolvers_are_not_run(tmp_path, monkeypatch):
    omegaconf = pytest.importorskip("omegaconf")
    monkeypatch.setenv("SPEECHCL_SECRET", "leaked")
    calls = []
    omegaconf.OmegaConf.register_new_resolver("spy", lambda x: calls.append(x) or 0.0, replace=True)
    torch.manual_seed(2)
    cfg = tiny()
    ours = speechcl.Wav2Vec2ForPretraining(cfg).eval()
    model_cfg = fairseq_model_cfg(cfg) | {"dropout": "${common.dropout}", "attention_dropout": "${spy:1}",
                                          "comment": "${oc.env:SPEECHCL_SECRET}"}
    dict_cfg = omegaconf.OmegaConf.create({"model": model_cfg, "common": {"dropout": 0.0}})
    path = tmp_path / "resolvers.pt"
    torch.save({"cfg": dict_cfg, "model": fairseq_state(ours)}, path)
    from speechcl.interop.fairseq import checkpoint_model_config, read_fairseq_checkpoint

    plain = checkpoint_model_config(read_fairseq_checkpoint(path))
    assert plain["dropout"] == 0.0  # a plain reference to another key is followed
    assert plain["comment"] == "${oc.env:SPEECHCL_SECRET}" and plain["attention_dropout"] == "${spy:1}"
    assert calls == []
    with pytest.raises(ValueError, match="attention_dropout"):  # the unresolved text is refused as a number
        speechcl.load_model(path)
    assert calls == []
