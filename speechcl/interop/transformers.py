"""Import from (and export to) transformers' Wav2Vec2 model directories.

Handles ``Wav2Vec2ForPreTraining``, ``Wav2Vec2Model`` and ``Wav2Vec2ForCTC`` weights, both weight-norm key
styles of the positional convolution (``weight_g``/``weight_v`` and
``parametrizations.weight.original0``/``original1``), ``model.safetensors`` and ``pytorch_model.bin``.
transformers itself is not needed to import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechcl.models.config import Wav2Vec2Config

# (transformers key, speechcl key) with ``{i}`` for a layer index; keys relative to the encoder.
_ENCODER_RULES: tuple[tuple[str, str], ...] = (
    ("feature_extractor.conv_layers.{i}.conv.weight", "feature_extractor.layers.{i}.conv.weight"),
    ("feature_extractor.conv_layers.{i}.conv.bias", "feature_extractor.layers.{i}.conv.bias"),
    ("feature_extractor.conv_layers.{i}.layer_norm.weight", "feature_extractor.layers.{i}.norm.weight"),
    ("feature_extractor.conv_layers.{i}.layer_norm.bias", "feature_extractor.layers.{i}.norm.bias"),
    ("feature_projection.layer_norm.weight", "layer_norm.weight"),
    ("feature_projection.layer_norm.bias", "layer_norm.bias"),
    ("feature_projection.projection.weight", "post_extract_proj.weight"),
    ("feature_projection.projection.bias", "post_extract_proj.bias"),
    ("masked_spec_embed", "mask_emb"),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original0",
     "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original1",
     "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.conv.bias"),
    ("encoder.layer_norm.weight", "encoder.layer_norm.weight"),
    ("encoder.layer_norm.bias", "encoder.layer_norm.bias"),
) + tuple(
    (f"encoder.layers.{{i}}.{hf}.{p}", f"encoder.layers.{{i}}.{ours}.{p}")
    for hf, ours in (
        ("attention.q_proj", "self_attn.q_proj"),
        ("attention.k_proj", "self_attn.k_proj"),
        ("attention.v_proj", "self_attn.v_proj"),
        ("attention.out_proj", "self_attn.out_proj"),
        ("layer_norm", "self_attn_layer_norm"),
        ("feed_forward.intermediate_dense", "fc1"),
        ("feed_forward.output_dense", "fc2"),
        ("final_layer_norm", "final_layer_norm"),
    )
    for p in ("weight", "bias")
)

_HEAD_RULES: tuple[tuple[str, str], ...] = (
    ("quantizer.codevectors", "quantizer.codevectors"),
    ("quantizer.weight_proj.weight", "quantizer.weight_proj.weight"),
    ("quantizer.weight_proj.bias", "quantizer.weight_proj.bias"),
    ("project_hid.weight", "final_proj.weight"),
    ("project_hid.bias", "final_proj.bias"),
    ("project_q.weight", "project_q.weight"),
    ("project_q.bias", "project_q.bias"),
    ("lm_head.weight", "head.weight"),
    ("lm_head.bias", "head.bias"),
)


def _compile(rules: tuple[tuple[str, str], ...], src_prefix: str, dst_prefix: str, reverse: bool
             ) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for hf, ours in rules:
        src, dst = (ours, hf) if reverse else (hf, ours)
        pattern = re.escape(src_prefix + src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile(f"^{pattern}$"), dst_prefix + dst.replace("{i}", r"\g<i>")))
    return out


def _rename(state: dict[str, Tensor], rules: list[tuple[re.Pattern[str], str]], what: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        for pattern, template in rules:
            if pattern.match(key):
                out[pattern.sub(template, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{what}: unexpected weights {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def hf_to_speechcl_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers Wav2Vec2 state dict (any of the three heads, or the bare model) to speechcl's."""
    bare = not any(k.startswith("wav2vec2.") for k in state)
    enc_prefix = "" if bare else "wav2vec2."
    rules = _compile(_ENCODER_RULES, enc_prefix, "encoder.", reverse=False)
    rules += _compile(_HEAD_RULES, "", "", reverse=False)
    return _rename(state, rules, "transformers checkpoint")


def speechcl_to_hf_state(state: dict[str, Tensor], bare: bool = False) -> dict[str, Tensor]:
    """Inverse of :func:`hf_to_speechcl_state` (weight norm written as ``parametrizations`` keys)."""
    enc_rules = tuple(r for r in _ENCODER_RULES if "weight_g" not in r[0] and "weight_v" not in r[0])
    rules = _compile(enc_rules, "encoder.", "" if bare else "wav2vec2.", reverse=True)
    rules += _compile(_HEAD_RULES, "", "", reverse=True)
    return _rename(state, rules, "speechcl checkpoint")


def config_from_hf(hf: dict[str, Any]) -> Wav2Vec2Config:
    """Translate a transformers ``Wav2Vec2Config`` dict (``config.json``) to :class:`Wav2Vec2Config`."""
    for key, expected in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
        if hf.get(key, expected) != expected:
            raise ValueError(f"{key}={hf[key]!r} is not supported (only {expected!r})")
    if hf.get("add_adapter", False):
        raise ValueError("transformers configs with add_adapter=True are not supported")
    if not hf.get("feat_proj_layer_norm", True):
        raise ValueError("feat_proj_layer_norm=False is not supported")
    conv = tuple(zip(hf.get("conv_dim", [512] * 7), hf.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2]),
                     hf.get("conv_stride", [5, 2, 2, 2, 2, 2, 2]), strict=True))
    norm = hf.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise ValueError(f"feat_extract_norm={norm!r} is not supported (expected 'group' or 'layer')")
    return Wav2Vec2Config(
        conv_layers=conv,
        extractor_mode="group_norm" if norm == "group" else "layer_norm",
        conv_bias=bool(hf.get("conv_bias", False)),
        encoder_layers=hf.get("num_hidden_layers", 12),
        encoder_embed_dim=hf.get("hidden_size", 768),
        encoder_ffn_embed_dim=hf.get("intermediate_size", 3072),
        encoder_attention_heads=hf.get("num_attention_heads", 12),
        layer_norm_first=bool(hf.get("do_stable_layer_norm", False)),
        conv_pos=hf.get("num_conv_pos_embeddings", 128),
        conv_pos_groups=hf.get("num_conv_pos_embedding_groups", 16),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
        dropout=hf.get("hidden_dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.1),
        activation_dropout=hf.get("activation_dropout", 0.1),
        dropout_input=hf.get("feat_proj_dropout", 0.0),
        dropout_features=hf.get("feat_quantizer_dropout", 0.0),
        layerdrop=hf.get("layerdrop", 0.1),
        mask_prob=hf.get("mask_time_prob", 0.05),
        mask_length=hf.get("mask_time_length", 10),
        mask_min_masks=hf.get("mask_time_min_masks", 2),
        mask_channel_prob=hf.get("mask_feature_prob", 0.0),
        mask_channel_length=hf.get("mask_feature_length", 10),
        mask_channel_min_masks=hf.get("mask_feature_min_masks", 0),
        latent_vars=hf.get("num_codevectors_per_group", 320),
        latent_groups=hf.get("num_codevector_groups", 2),
        latent_dim=hf.get("codevector_dim", 256),
        final_dim=hf.get("proj_codevector_dim", 256),
        num_negatives=hf.get("num_negatives", 100),
        logit_temp=hf.get("contrastive_logits_temperature", 0.1),
        final_dropout=hf.get("final_dropout", 0.1),
        feature_grad_mult=1.0,
    )


def config_to_hf(cfg: Wav2Vec2Config, vocab_size: int | None = None) -> dict[str, Any]:
    """Inverse of :func:`config_from_hf`: a transformers ``config.json`` dict."""
    out: dict[str, Any] = {
        "model_type": "wav2vec2",
        "conv_dim": [s[0] for s in cfg.conv_layers],
        "conv_kernel": [s[1] for s in cfg.conv_layers],
        "conv_stride": [s[2] for s in cfg.conv_layers],
        "num_feat_extract_layers": len(cfg.conv_layers),
        "feat_extract_norm": "group" if cfg.extractor_mode == "group_norm" else "layer",
        "feat_extract_activation": "gelu",
        "conv_bias": cfg.conv_bias,
        "num_hidden_layers": cfg.encoder_layers,
        "hidden_size": cfg.encoder_embed_dim,
        "intermediate_size": cfg.encoder_ffn_embed_dim,
        "num_attention_heads": cfg.encoder_attention_heads,
        "hidden_act": "gelu",
        "do_stable_layer_norm": cfg.layer_norm_first,
        "num_conv_pos_embeddings": cfg.conv_pos,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "feat_proj_dropout": cfg.dropout_input,
        "feat_quantizer_dropout": cfg.dropout_features,
        "layerdrop": cfg.layerdrop,
        "mask_time_prob": cfg.mask_prob,
        "mask_time_length": cfg.mask_length,
        "mask_time_min_masks": cfg.mask_min_masks,
        "mask_feature_prob": cfg.mask_channel_prob,
        "mask_feature_length": cfg.mask_channel_length,
        "mask_feature_min_masks": cfg.mask_channel_min_masks,
        "num_codevectors_per_group": cfg.latent_vars,
        "num_codevector_groups": cfg.latent_groups,
        "codevector_dim": cfg.codevector_dim,
        "proj_codevector_dim": cfg.final_dim,
        "num_negatives": cfg.num_negatives,
        "contrastive_logits_temperature": cfg.logit_temp,
        "final_dropout": cfg.final_dropout,
        "feat_proj_layer_norm": True,
        "apply_spec_augment": True,
    }
    if vocab_size is not None:
        out["vocab_size"] = vocab_size
    return out


def load_hf_state(directory: Path) -> dict[str, Tensor]:
    """Weights from ``model.safetensors`` or ``pytorch_model.bin`` (loaded with ``weights_only=True``)."""
    st = directory / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    bin_path = directory / "pytorch_model.bin"
    if bin_path.exists():
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{bin_path} does not hold a state dict")
        return state
    raise FileNotFoundError(
        f"{directory} has a config.json but neither model.safetensors nor pytorch_model.bin; "
        "sharded transformers checkpoints are not supported yet"
    )


def is_hf_directory(directory: Path) -> bool:
    cfg = directory / "config.json"
    if not cfg.exists():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "wav2vec2"
