"""Import fairseq wav2vec 2.0 checkpoints (pretraining and CTC fine-tuned) without fairseq.

A fairseq checkpoint (``.pt``) is a dict with ``model`` (the state dict) and either ``cfg`` (fairseq ≥ 0.10:
a plain dict, or omegaconf objects in some files) or ``args`` (older files: an ``argparse.Namespace``).
The model configuration sits in ``cfg["model"]`` (or directly in ``args``); a CTC model (``Wav2VecCtc``)
keeps the pretraining model's configuration in ``cfg["model"]["w2v_args"]`` and prefixes the encoder's
weights with ``w2v_encoder.w2v_model.``; its output layer is ``w2v_encoder.proj``.

A checkpoint written by fairseq's trainer also holds ``optimizer_history``, ``extra_state`` and
``task_state``; for fine-tuning the latter keeps the label dictionary (a pickled fairseq ``Dictionary``,
read by :func:`fairseq_labels`).

Loading never unpickles arbitrary objects: the file is read with ``torch.load(weights_only=True)``; when
that refuses a global, the load is retried with only ``argparse.Namespace``, fairseq's ``Dictionary``
(rebuilt as the attribute-only :class:`FairseqDictionaryState`) and omegaconf's own container and node
classes allow-listed (when omegaconf is installed). Anything else is refused with an error that explains
how to convert the file.

Key names (fairseq → speechcl, relative to the encoder):

- ``feature_extractor.conv_layers.{i}.0`` (conv) → ``feature_extractor.layers.{i}.conv``;
  ``conv_layers.0.2`` (GroupNorm, ``extractor_mode="default"``) and ``conv_layers.{i}.2.1`` (LayerNorm
  inside ``Sequential(TransposeLast, LayerNorm, TransposeLast)``, ``"layer_norm"``) → ``layers.{i}.norm``;
- ``layer_norm``, ``post_extract_proj``, ``mask_emb`` keep their names;
- ``encoder.pos_conv.0.weight_g/weight_v/bias`` → ``encoder.pos_conv.conv.parametrizations.weight.
  original0/original1`` and ``.bias``; ``encoder.layer_norm`` and ``encoder.layers.{i}.*`` keep theirs;
- ``quantizer.vars`` → ``quantizer.codevectors``; ``quantizer.weight_proj``, ``project_q``, ``final_proj``
  keep theirs; ``w2v_encoder.proj`` → ``head``.

fairseq omits ``post_extract_proj`` when the conv width equals the model width; it is imported as the
identity. A pretraining checkpoint without a quantizer (``quantize_targets=False``) is imported as a bare
:class:`~speechcl.models.wav2vec2.Wav2Vec2Encoder`.
"""

from __future__ import annotations

import argparse
import ast
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechcl.interop.transformers import _compile, _rename
from speechcl.models.checkpoint import SpeechclModel, load_state_strict
from speechcl.models.config import ConvSpec, Wav2Vec2Config
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForCTC, Wav2Vec2ForPretraining

CTC_PREFIX = "w2v_encoder.w2v_model."

# (fairseq key, speechcl key), both relative to the encoder; ``{i}`` is a layer index.
_ENCODER_RULES: tuple[tuple[str, str], ...] = (
    ("feature_extractor.conv_layers.{i}.0.weight", "feature_extractor.layers.{i}.conv.weight"),
    ("feature_extractor.conv_layers.{i}.0.bias", "feature_extractor.layers.{i}.conv.bias"),
    ("feature_extractor.conv_layers.{i}.2.weight", "feature_extractor.layers.{i}.norm.weight"),
    ("feature_extractor.conv_layers.{i}.2.bias", "feature_extractor.layers.{i}.norm.bias"),
    ("feature_extractor.conv_layers.{i}.2.1.weight", "feature_extractor.layers.{i}.norm.weight"),
    ("feature_extractor.conv_layers.{i}.2.1.bias", "feature_extractor.layers.{i}.norm.bias"),
    ("layer_norm.weight", "layer_norm.weight"),
    ("layer_norm.bias", "layer_norm.bias"),
    ("post_extract_proj.weight", "post_extract_proj.weight"),
    ("post_extract_proj.bias", "post_extract_proj.bias"),
    ("mask_emb", "mask_emb"),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv.0.parametrizations.weight.original0",
     "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.parametrizations.weight.original1",
     "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv.conv.bias"),
    ("encoder.layer_norm.weight", "encoder.layer_norm.weight"),
    ("encoder.layer_norm.bias", "encoder.layer_norm.bias"),
) + tuple(
    (f"encoder.layers.{{i}}.{name}.{p}", f"encoder.layers.{{i}}.{name}.{p}")
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                 "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
    for p in ("weight", "bias")
)

_PRETRAINING_RULES: tuple[tuple[str, str], ...] = (
    ("quantizer.vars", "quantizer.codevectors"),
    ("quantizer.weight_proj.weight", "quantizer.weight_proj.weight"),
    ("quantizer.weight_proj.bias", "quantizer.weight_proj.bias"),
    ("project_q.weight", "project_q.weight"),
    ("project_q.bias", "project_q.bias"),
    ("final_proj.weight", "final_proj.weight"),
    ("final_proj.bias", "final_proj.bias"),
)

_CTC_RULES: tuple[tuple[str, str], ...] = (
    ("w2v_encoder.proj.weight", "head.weight"),
    ("w2v_encoder.proj.bias", "head.bias"),
)

_UNUSED_BY_CTC = ("quantizer.", "project_q.", "final_proj.")

# fairseq bookkeeping entries that carry no weights.
_IGNORED_SUFFIXES = (".version", "._float_tensor")

# fairseq ``Wav2Vec2Config`` defaults for the fields read here (used when a checkpoint omits a field).
_FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False, "feature_grad_mult": 1.0, "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu",
    "layer_norm_first": False, "conv_pos": 128, "conv_pos_groups": 16, "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0, "dropout_features": 0.0,
    "encoder_layerdrop": 0.0, "mask_prob": 0.65, "mask_length": 10, "mask_channel_prob": 0.0,
    "mask_channel_length": 10, "require_same_masks": True, "latent_vars": 320, "latent_groups": 2,
    "latent_dim": 0, "latent_temp": (2.0, 0.5, 0.999995), "final_dim": 0, "num_negatives": 100,
    "cross_sample_negatives": 0, "logit_temp": 0.1,
}

_SUPPORTED_NAMES = frozenset({"wav2vec2", "wav2vec_ctc"})

# Fine-tuning (``Wav2Vec2CtcConfig``) fields that override the pretraining values, as fairseq does.
_CTC_OVERRIDES: tuple[tuple[str, str], ...] = (
    ("dropout", "dropout"), ("attention_dropout", "attention_dropout"),
    ("activation_dropout", "activation_dropout"), ("dropout_input", "dropout_input"),
    ("layerdrop", "layerdrop"), ("feature_grad_mult", "feature_grad_mult"), ("mask_prob", "mask_prob"),
    ("mask_length", "mask_length"), ("mask_channel_prob", "mask_channel_prob"),
    ("mask_channel_length", "mask_channel_length"), ("final_dropout", "final_dropout"),
)


# --- safe literal parsing ----------------------------------------------------------------------------

MAX_LITERAL_CHARS = 10_000
MAX_LITERAL_ITEMS = 10_000

def parse_literal(text: str, what: str = "value") -> Any:
    """Evaluate a Python literal built from numbers, lists, tuples, ``+`` and ``*`` — never ``eval``.

    fairseq stores ``conv_feature_layers`` as such a string, e.g.
    ``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"``, and old checkpoints store
    ``latent_temp`` as ``"(2,0.5,0.999995)"``.

    The input is untrusted (it comes from a checkpoint file), so it is bounded: at most
    :data:`MAX_LITERAL_CHARS` characters, and no list or tuple built by ``*`` or ``+`` may exceed
    :data:`MAX_LITERAL_ITEMS` elements (``[(1, 1, 1)] * 10**9`` is refused before it is built).

    Raises:
        ValueError: the text is not such an expression (names, calls, attributes... are refused), or it
            is too long or would build too large a value.
    """
    if len(text) > MAX_LITERAL_CHARS:
        raise ValueError(f"cannot parse {what}: {len(text)} characters, more than {MAX_LITERAL_CHARS}; the "
                         "checkpoint's config is corrupt or not from fairseq")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as err:
        raise ValueError(f"cannot parse {what} {text[:80]!r}: {getattr(err, 'msg', type(err).__name__)}") from None

    def bounded(length: int) -> None:
        if length > MAX_LITERAL_ITEMS:
            raise ValueError(f"cannot parse {what} {text[:80]!r}: it builds a sequence of {length} items, more than "
                             f"{MAX_LITERAL_ITEMS}; the checkpoint's config is corrupt or not from fairseq")

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
                and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = walk(node.operand)
            if isinstance(value, int | float):
                return -value
        if isinstance(node, ast.List):
            return [walk(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(walk(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, list | tuple):
                bounded(len(left) + len(right))
                return left + right
            if isinstance(node.op, ast.Mult):
                if isinstance(left, int) and isinstance(right, list | tuple):
                    left, right = right, left
                if isinstance(left, list | tuple) and isinstance(right, int):
                    bounded(len(left) * max(right, 0))
                    return left * right
        raise ValueError(
            f"cannot parse {what} {text!r}: only numbers, lists, tuples, '+' and '*' are allowed "
            f"(found {ast.dump(node)[:60]})"
        )

    try:
        return walk(tree.body)
    except RecursionError:
        raise ValueError(f"cannot parse {what} {text[:80]!r}: nested too deeply") from None


def parse_conv_layers(spec: str | list | tuple) -> tuple[ConvSpec, ...]:
    """fairseq ``conv_feature_layers`` (string or list) → ``((dim, kernel, stride), ...)``."""
    value = parse_literal(spec, "conv_feature_layers") if isinstance(spec, str) else spec
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"conv_feature_layers must be a non-empty list of (dim, kernel, stride), got {spec!r}")
    out = []
    for layer in value:
        if not isinstance(layer, list | tuple) or len(layer) != 3 or not all(isinstance(v, int) for v in layer):
            raise ValueError(f"conv_feature_layers entry {layer!r} is not (dim, kernel, stride) in {spec!r}")
        out.append((int(layer[0]), int(layer[1]), int(layer[2])))
    return tuple(out)


# --- reading the file ----------------------------------------------------------------------------------

class FairseqDictionaryState:
    """Stand-in for ``fairseq.data.dictionary.Dictionary`` while unpickling: only its attributes are kept.

    fairseq keeps the fine-tuning task's label dictionary in ``task_state["target_dictionary"]``; the
    pickle names the class and sets plain attributes (``symbols``, ``count``, ``indices``, ...) on it, so
    building this empty class in its place runs no code from the file.
    """

    symbols: list[str]


def _allowed_globals() -> list[Any]:
    """``argparse.Namespace``, fairseq's ``Dictionary`` (as :class:`FairseqDictionaryState`) and, when
    importable, omegaconf's containers and value nodes."""
    allowed: list[Any] = [argparse.Namespace, (FairseqDictionaryState, "fairseq.data.dictionary.Dictionary")]
    try:
        import collections
        import typing

        from omegaconf import DictConfig, ListConfig, base, nodes
    except ImportError:
        return allowed
    allowed += [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, typing.Any,
                collections.defaultdict, dict, list, int, float, str, bool]
    allowed += [getattr(nodes, n) for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                            "BytesNode", "PathNode") if hasattr(nodes, n)]
    return allowed


def read_fairseq_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a fairseq checkpoint file safely (see the module docstring) and return its top-level dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fairseq checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        try:
            with torch.serialization.safe_globals(_allowed_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            detail = str(err).strip().splitlines()
            reason = next((line for line in detail if "GLOBAL" in line or "Unsupported" in line),
                          detail[0] if detail else str(first))
            raise ValueError(
                f"{path}: refusing to unpickle objects other than tensors, argparse.Namespace, fairseq's "
                f"Dictionary and omegaconf configs ({reason.strip()}). Convert the checkpoint once where "
                "fairseq is installed and the file is trusted: ckpt = torch.load(path, weights_only=False); "
                "ckpt['cfg'] = OmegaConf.to_container(ckpt['cfg'], resolve=True); "
                "torch.save({'model': ckpt['model'], 'cfg': ckpt['cfg']}, 'clean.pt') — then import clean.pt"
            ) from None
    except Exception as err:  # noqa: BLE001 - corrupt pickles fail with KeyError, IndexError, struct.error, ...
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err}); the file may be "
                         "truncated or corrupt") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        raise ValueError(f"{path}: expected a fairseq checkpoint dict with a 'model' state dict")
    return ckpt


def _plain(value: Any) -> Any:
    """Namespace / omegaconf containers → plain dicts and lists (recursively)."""
    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):  # never resolve: ${oc.env:...} and other resolvers run code
            container = OmegaConf.to_container(value, resolve=False)
            return _resolve_references(container, container)
    except ImportError:
        pass
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


def _resolve_references(value: Any, root: Any, depth: int = 0) -> Any:
    """Replace plain references ``${a.b}`` (a whole string naming another key of the same config) by that
    key's value; resolver calls (``${oc.env:HOME}``, ``${eval:...}``) and anything else stay as text.

    A checkpoint's config is untrusted: OmegaConf's own resolution would run whatever resolvers are
    registered in this process."""
    if isinstance(value, dict):
        return {k: _resolve_references(v, root, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_references(v, root, depth) for v in value]
    if not isinstance(value, str) or depth > 8:
        return value
    match = _REFERENCE.fullmatch(value.strip())
    if match is None:
        return value
    target: Any = root
    for part in match.group(1).split("."):
        if not isinstance(target, dict) or part not in target:
            return value
        target = target[part]
    return _resolve_references(target, root, depth + 1)


def checkpoint_model_config(ckpt: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The model section of a fairseq checkpoint's config as a plain dict (``cfg['model']`` or ``args``)."""
    cfg = _plain(ckpt.get("cfg"))
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        return dict(cfg["model"])
    args = _plain(ckpt.get("args"))
    if isinstance(args, Mapping):
        return dict(args)
    raise ValueError(f"{source}: no model configuration found (neither cfg['model'] nor args)")


# --- config --------------------------------------------------------------------------------------------

def _pretraining_section(w2v_args: Any, source: str) -> dict[str, Any]:
    args = _plain(w2v_args)
    if not isinstance(args, Mapping):
        raise ValueError(f"{source}: the CTC config has no w2v_args describing the pretrained model; "
                         "re-save the checkpoint with fairseq so that cfg.model.w2v_args is filled in")
    if isinstance(args.get("model"), Mapping):
        return dict(args["model"])
    return dict(args)


def config_from_fairseq(model_cfg: Mapping[str, Any], source: str = "checkpoint") -> Wav2Vec2Config:
    """Translate fairseq's wav2vec 2.0 model config (``cfg['model']`` or ``vars(args)``).

    For a CTC config (one with ``w2v_args``) the architecture comes from ``w2v_args`` and the fine-tuning
    dropouts, masking and ``final_dropout`` override the pretraining values, as fairseq does.
    """
    model_cfg = dict(model_cfg)
    name = model_cfg.get("_name")
    if name is not None and name not in _SUPPORTED_NAMES:
        raise ValueError(f"{source}: model {name!r} is not supported; expected one of {sorted(_SUPPORTED_NAMES)} "
                         "(wav2vec 2.0 pretraining or CTC)")
    overrides: dict[str, Any] = {}
    if "w2v_args" in model_cfg:
        finetune = model_cfg
        model_cfg = _pretraining_section(finetune["w2v_args"], source)
        for ours, theirs in _CTC_OVERRIDES:
            if finetune.get(theirs) is not None:
                overrides[ours] = finetune[theirs]
        if finetune.get("apply_mask") is False:
            overrides["mask_prob"] = 0.0
            overrides["mask_channel_prob"] = 0.0

    def get(name: str) -> Any:
        value = model_cfg.get(name)
        return _FAIRSEQ_DEFAULTS[name] if value is None else value

    for name, default in _FAIRSEQ_DEFAULTS.items():  # numbers must be numbers (not e.g. unresolved "${...}")
        value = model_cfg.get(name)
        if isinstance(default, int | float) and not isinstance(default, bool) and value is not None \
                and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{source}: {name}={value!r} is not a number; interpolations and resolvers in a "
                             "checkpoint's config are not evaluated: write the value itself")
    for name, supported in (("activation_fn", ("gelu",)), ("layer_type", ("transformer", None)),
                            ("pos_conv_depth", (1, None)), ("quantize_input", (False, None)),
                            ("target_glu", (False, None))):
        value = model_cfg.get(name)
        if value not in supported:
            raise ValueError(f"{source}: {name}={value!r} is not supported (only {supported[0]!r})")
    mode = get("extractor_mode")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"{source}: extractor_mode={mode!r} is not supported (expected 'default' or 'layer_norm')")
    latent_temp = get("latent_temp")
    if isinstance(latent_temp, str):
        latent_temp = parse_literal(latent_temp, "latent_temp")
    dim = int(get("encoder_embed_dim"))
    final_dim = int(get("final_dim")) or dim
    values: dict[str, Any] = dict(
        conv_layers=parse_conv_layers(get("conv_feature_layers")),
        extractor_mode="group_norm" if mode == "default" else "layer_norm",
        conv_bias=bool(get("conv_bias")),
        feature_grad_mult=float(get("feature_grad_mult")),
        encoder_layers=int(get("encoder_layers")),
        encoder_embed_dim=dim,
        encoder_ffn_embed_dim=int(get("encoder_ffn_embed_dim")),
        encoder_attention_heads=int(get("encoder_attention_heads")),
        layer_norm_first=bool(get("layer_norm_first")),
        conv_pos=int(get("conv_pos")),
        conv_pos_groups=int(get("conv_pos_groups")),
        dropout=float(get("dropout")),
        attention_dropout=float(get("attention_dropout")),
        activation_dropout=float(get("activation_dropout")),
        dropout_input=float(get("dropout_input")),
        dropout_features=float(get("dropout_features")),
        layerdrop=float(get("encoder_layerdrop")),
        mask_prob=float(get("mask_prob")),
        mask_length=int(get("mask_length")),
        mask_channel_prob=float(get("mask_channel_prob")),
        mask_channel_length=int(get("mask_channel_length")),
        require_same_masks=bool(get("require_same_masks")),
        latent_vars=int(get("latent_vars")),
        latent_groups=int(get("latent_groups")),
        latent_dim=int(get("latent_dim")),
        latent_temp=tuple(float(v) for v in latent_temp),
        final_dim=final_dim,
        num_negatives=int(get("num_negatives")),
        cross_sample_negatives=int(get("cross_sample_negatives")),
        logit_temp=float(get("logit_temp")),
    )
    values.update(overrides)
    return Wav2Vec2Config(**values)


# --- weights -------------------------------------------------------------------------------------------

def fairseq_to_speechcl_state(state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename a fairseq wav2vec 2.0 (``Wav2Vec2Model``) or CTC (``Wav2VecCtc``) state dict to speechcl keys.

    Floating-point weights are returned as float32 (some released checkpoints are stored in float16).
    """
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    ctc = any(k.startswith("w2v_encoder.") for k in state)
    if ctc:  # pretraining heads left in by fairseq versions that did not strip them: unused by CTC
        state = {k: v for k, v in state.items()
                 if not k.startswith(tuple(CTC_PREFIX + h for h in _UNUSED_BY_CTC))}
    rules = _compile(_ENCODER_RULES, CTC_PREFIX if ctc else "", "encoder.", reverse=False)
    rules += _compile(_CTC_RULES if ctc else _PRETRAINING_RULES, "", "", reverse=False)
    if any(k.startswith("label_embs") for k in state):
        raise ValueError(f"{source}: this is a HuBERT checkpoint (label_embs_concat), not wav2vec 2.0")
    renamed = _rename(dict(state), rules, f"fairseq {source}")
    return {k: v.float() if v.is_floating_point() else v for k, v in renamed.items()}


def _complete_state(state: dict[str, Tensor], cfg: Wav2Vec2Config, source: str) -> None:
    """Fill in what fairseq leaves out: identity ``post_extract_proj``; repeat a shared codebook."""
    if "encoder.post_extract_proj.weight" not in state:
        if cfg.conv_out_dim != cfg.encoder_embed_dim:
            raise ValueError(f"{source}: post_extract_proj is missing but conv width {cfg.conv_out_dim} != "
                             f"model width {cfg.encoder_embed_dim}")
        state["encoder.post_extract_proj.weight"] = torch.eye(cfg.encoder_embed_dim)
        state["encoder.post_extract_proj.bias"] = torch.zeros(cfg.encoder_embed_dim)
    book = state.get("quantizer.codevectors")
    if book is not None and book.shape[1] == cfg.latent_vars and cfg.latent_groups > 1:
        # fairseq combine_groups=True: one codebook shared by all groups.
        state["quantizer.codevectors"] = book.repeat(1, cfg.latent_groups, 1)


def model_from_fairseq(ckpt: Mapping[str, Any], source: str = "checkpoint") -> SpeechclModel:
    """Build the speechcl model for a loaded fairseq checkpoint dict (``{'model': ..., 'cfg' or 'args': ...}``).

    Returns, in eval mode, a :class:`Wav2Vec2ForCTC` (``w2v_encoder.*`` weights), a
    :class:`Wav2Vec2ForPretraining` (with a quantizer) or a :class:`Wav2Vec2Encoder` (without one).
    """
    cfg = config_from_fairseq(checkpoint_model_config(ckpt, source), source)
    state = fairseq_to_speechcl_state(ckpt["model"], source)
    _complete_state(state, cfg, source)
    model: SpeechclModel
    if "head.weight" in state:
        model = Wav2Vec2ForCTC(cfg, vocab_size=int(state["head.weight"].shape[0]))
    elif any(k.startswith("w2v_encoder.") for k in ckpt["model"]):
        raise ValueError(f"{source}: fine-tuned checkpoint without w2v_encoder.proj (not a CTC model)")
    elif "quantizer.codevectors" in state:
        model = Wav2Vec2ForPretraining(cfg)
    else:
        model = Wav2Vec2Encoder(cfg)
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    load_state_strict(model, state, source)
    return model.eval()


def fairseq_normalize(ckpt: Mapping[str, Any]) -> bool:
    """Whether the model expects per-utterance normalised audio (fairseq task ``normalize``)."""
    cfg = _plain(ckpt.get("cfg"))
    task = cfg.get("task") if isinstance(cfg, Mapping) else None
    if not isinstance(task, Mapping):
        task = _plain(ckpt.get("args")) or {}
    if task.get("normalize") is not None:
        return bool(task["normalize"])
    try:
        model_cfg = checkpoint_model_config(ckpt)
    except ValueError:
        return False
    w2v = _plain(model_cfg.get("w2v_args"))
    if isinstance(w2v, Mapping):
        inner = w2v.get("task") if isinstance(w2v.get("task"), Mapping) else w2v
        return bool(inner.get("normalize", False))
    return False


def fairseq_labels(ckpt: Mapping[str, Any]) -> list[str] | None:
    """The CTC output symbols in index order from ``task_state["target_dictionary"]`` (fairseq's four
    specials first, ``<s>`` = blank), or None when the checkpoint does not keep its dictionary."""
    task_state = ckpt.get("task_state")
    book = task_state.get("target_dictionary") if isinstance(task_state, Mapping) else None
    symbols = getattr(book, "symbols", None)
    if isinstance(symbols, list) and all(isinstance(s, str) for s in symbols):
        return list(symbols)
    return None


def load_fairseq_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> SpeechclModel:
    """Load a fairseq wav2vec 2.0 checkpoint file (pretraining or CTC) as a speechcl model in eval mode."""
    ckpt = read_fairseq_checkpoint(path)
    return model_from_fairseq(ckpt, str(path)).to(map_location)
