"""Import from (and export to) transformers' Wav2Vec2 model directories.

Handles ``Wav2Vec2ForPreTraining``, ``Wav2Vec2Model`` and ``Wav2Vec2ForCTC`` weights, both weight-norm key
styles of the positional convolution (``weight_g``/``weight_v`` and
``parametrizations.weight.original0``/``original1``), ``model.safetensors`` and ``pytorch_model.bin``, whole
or sharded (``*.index.json`` with its shard files, as ``save_pretrained`` writes large models). transformers
itself is not needed to import.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechcl.models.checkpoint import SpeechclModel, load_state_strict, read_safetensors
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForCTC, Wav2Vec2ForPretraining

SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"

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
    """Weights of a transformers model directory, in transformers' order of preference: ``model.safetensors``,
    the shards listed in ``model.safetensors.index.json``, ``pytorch_model.bin``, the shards listed in
    ``pytorch_model.bin.index.json`` (``.bin`` files are loaded with ``weights_only=True``).

    Raises:
        FileNotFoundError: no weights file, or a shard the index lists is missing (named in the message).
        ValueError: a weights file or index that cannot be read, or a shard without the tensors its index
            assigns to it.
    """
    for name, read in ((SAFETENSORS_NAME, read_safetensors), (BIN_NAME, _read_bin)):
        if (directory / name).is_file():
            return read(directory / name)
        index = directory / f"{name}.index.json"
        if index.is_file():
            return _load_shards(index, read)
    raise FileNotFoundError(
        f"{directory} has a config.json but no weights: expected {SAFETENSORS_NAME}, {BIN_NAME} or a sharded "
        f"checkpoint ({SAFETENSORS_NAME}.index.json / {BIN_NAME}.index.json with its shard files)"
    )


def _load_shards(index: Path, read: Callable[[Path], dict[str, Tensor]]) -> dict[str, Tensor]:
    """The tensors of all shards listed in a sharded checkpoint's index (its ``weight_map``: tensor name →
    shard file name, relative to the index's directory)."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()):
        raise ValueError(f"{index}: expected a 'weight_map' object mapping tensor names to shard file names "
                         "in the same directory")
    shards: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        shards.setdefault(shard, []).append(tensor)
    missing = [shard for shard in shards if not (index.parent / shard).is_file()]
    if missing:
        raise FileNotFoundError(f"{index} lists shard files that are not in {index.parent}: {', '.join(missing)}; "
                                "the checkpoint is incomplete: download the missing shards")
    state: dict[str, Tensor] = {}
    for shard, tensors in shards.items():
        part = read(index.parent / shard)
        absent = [t for t in tensors if t not in part]
        if absent:
            raise ValueError(f"{index.parent / shard} lacks {len(absent)} tensors that {index.name} assigns to it "
                             f"({', '.join(absent[:6])}); the shard and the index do not belong together")
        state.update(part)
    return state


def _read_bin(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt pickles fail with KeyError, IndexError, struct.error, ...
        raise ValueError(f"{path} is not a readable torch weights file ({type(err).__name__}: {err}); it is "
                         "truncated, corrupt or holds "
                         "more than tensors: save or download it again") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def _read_json_value(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file may be truncated") from None


def _read_json(path: Path) -> dict[str, Any]:
    data = _read_json_value(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(data).__name__}")
    return data


def load_hf_model(directory: Path, map_location: str | torch.device = "cpu") -> SpeechclModel:
    """A transformers Wav2Vec2 model directory as a speechcl model in eval mode: ``Wav2Vec2ForCTC`` →
    :class:`Wav2Vec2ForCTC`, ``Wav2Vec2ForPreTraining`` → :class:`Wav2Vec2ForPretraining`, the bare
    ``Wav2Vec2Model`` → :class:`Wav2Vec2Encoder`."""
    cfg = config_from_hf(_read_json(directory / "config.json"))
    state = hf_to_speechcl_state(load_hf_state(directory))
    model: SpeechclModel
    if "head.weight" in state:
        model = Wav2Vec2ForCTC(cfg, vocab_size=state["head.weight"].shape[0])
    elif "quantizer.codevectors" in state:
        model = Wav2Vec2ForPretraining(cfg)
    else:
        model = Wav2Vec2Encoder(cfg)
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
    # transformers omits the mask embedding when its config disables masking; ours keeps a fresh one.
    load_state_strict(model, state, str(directory), allow_missing=("mask_emb",))
    return model.to(map_location).eval()


def read_hf_labels(directory: Path) -> list[str] | None:
    """The CTC labels in index order from ``vocab.json``, when it maps symbols to the indices 0..n-1."""
    vocab = directory / "vocab.json"
    if not vocab.is_file():
        return None
    table = _read_json_value(vocab)
    if not isinstance(table, dict) or not table or not all(isinstance(v, int) for v in table.values()):
        return None
    ordered = sorted(table, key=table.__getitem__)
    return ordered if [table[s] for s in ordered] == list(range(len(ordered))) else None


def read_hf_normalize(directory: Path) -> bool:
    """``do_normalize`` of ``preprocessor_config.json`` (False when there is none)."""
    pre = directory / "preprocessor_config.json"
    return bool(_read_json(pre).get("do_normalize", False)) if pre.is_file() else False
