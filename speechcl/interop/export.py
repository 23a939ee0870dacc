"""Export speechcl models to transformers model directories, and convert between checkpoint formats.

:func:`export_to_transformers` writes ``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json``,
and for CTC models with known labels ``vocab.json`` + ``tokenizer_config.json``) that
``transformers.Wav2Vec2ForPreTraining`` / ``Wav2Vec2ForCTC`` / ``Wav2Vec2Model.from_pretrained`` load with
the same outputs; transformers itself is not needed to write them. :func:`convert` loads any format
:func:`speechcl.load_model` reads (speechcl directory, transformers directory, fairseq ``.pt``) and writes
a speechcl checkpoint directory or a transformers directory.

The CTC labels and the normalisation flag (:class:`~speechcl.interop.loading.ModelMetadata`) travel with
the weights; a fairseq checkpoint keeps its labels in a separate ``dict.ltr.txt``, given to :func:`convert`
as ``dictionary``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from safetensors.torch import save_file
from torch import nn

from speechcl.interop.loading import load_model_with_metadata
from speechcl.interop.transformers import config_to_hf, speechcl_to_hf_state
from speechcl.models.checkpoint import save_checkpoint
from speechcl.models.config import Wav2Vec2Config
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from speechcl.utils.io import atomic_save, atomic_write_json

TargetFormat = Literal["speechcl", "transformers"]

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
"""fairseq's ``Dictionary`` specials, indices 0-3 (index 0, ``<s>``, is the CTC blank)."""


def read_fairseq_dictionary(path: str | Path) -> list[str]:
    """Full label list of a fairseq ``dict.ltr.txt`` (``SYMBOL COUNT`` lines): fairseq's four specials first."""
    symbols = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{number}: expected 'SYMBOL COUNT', got {line!r}")
        symbols.append(parts[0])
    return [*FAIRSEQ_SPECIALS, *symbols]

_HF_ARCHITECTURES = {
    Wav2Vec2ForPretraining: "Wav2Vec2ForPreTraining",
    Wav2Vec2ForCTC: "Wav2Vec2ForCTC",
    Wav2Vec2Encoder: "Wav2Vec2Model",
}


def export_to_transformers(model: nn.Module, directory: str | Path, normalize: bool = False,
                           labels: list[str] | None = None) -> Path:
    """Write ``model`` as a transformers Wav2Vec2 model directory (each file atomically).

    Args:
        model: a :class:`Wav2Vec2ForPretraining` (→ ``Wav2Vec2ForPreTraining``), :class:`Wav2Vec2ForCTC`
            (→ ``Wav2Vec2ForCTC``, blank = ``pad_token_id`` 0) or :class:`Wav2Vec2Encoder` (→ ``Wav2Vec2Model``).
        directory: output directory (created).
        normalize: recorded as ``do_normalize`` in ``preprocessor_config.json`` (True for models trained on
            per-utterance normalised audio, e.g. LARGE LV-60).
        labels: CTC output symbols in index order (blank, pad, eos, unk, letters...), written as
            ``vocab.json`` with a ``Wav2Vec2CTCTokenizer`` config (blank = its pad token, ``|`` between words).
    """
    arch = next((name for cls, name in _HF_ARCHITECTURES.items() if isinstance(model, cls)), None)
    if arch is None:
        raise ValueError(f"cannot export a {type(model).__name__}; expected a speechcl wav2vec 2.0 model")
    cfg: Wav2Vec2Config = model.cfg  # type: ignore[assignment]
    bare = isinstance(model, Wav2Vec2Encoder)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    if bare:
        state = {f"encoder.{k}": v for k, v in state.items()}
    hf_state = speechcl_to_hf_state(state, bare=bare)
    if cfg.mask_prob <= 0 and cfg.mask_channel_prob <= 0:
        # transformers creates masked_spec_embed only when a masking probability is positive.
        hf_state = {k: v for k, v in hf_state.items() if not k.endswith("masked_spec_embed")}
    vocab_size = model.vocab_size if isinstance(model, Wav2Vec2ForCTC) else None
    hf_cfg = config_to_hf(cfg, vocab_size)
    hf_cfg["architectures"] = [arch]
    if vocab_size is not None:
        hf_cfg.update(pad_token_id=0, ctc_zero_infinity=True)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save(directory / "model.safetensors",
                lambda p: save_file(hf_state, str(p), metadata={"format": "pt"}))
    atomic_write_json(directory / "preprocessor_config.json", {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "padding_side": "right", "do_normalize": normalize,
        # transformers' convention: group-norm models must not be given an attention mask (pad with zeros)
        "return_attention_mask": cfg.extractor_mode == "layer_norm",
    })
    if labels is not None and vocab_size is not None:
        if len(labels) != vocab_size:
            raise ValueError(f"{len(labels)} labels do not match the model's {vocab_size} outputs")
        atomic_write_json(directory / "vocab.json", {symbol: i for i, symbol in enumerate(labels)})
        atomic_write_json(directory / "tokenizer_config.json", {
            "tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": labels[0], "bos_token": labels[1],
            "eos_token": labels[2], "unk_token": labels[3], "word_delimiter_token": "|", "do_lower_case": False,
        })
    atomic_write_json(directory / "config.json", hf_cfg)
    return directory


def convert(source: str | Path, destination: str | Path, to: TargetFormat = "speechcl",
            dictionary: str | Path | None = None) -> nn.Module:
    """Load ``source`` (speechcl dir, transformers dir or fairseq ``.pt``) and write it to ``destination``.

    ``to`` is ``"speechcl"`` (``config.json`` + ``model.safetensors``) or ``"transformers"`` (see
    :func:`export_to_transformers`). Labels and normalisation travel along (:class:`~speechcl.interop.loading.ModelMetadata`);
    ``dictionary``, a fairseq ``dict.ltr.txt``, supplies the labels of a CTC model that has none.
    Returns the loaded model.
    """
    if to not in ("speechcl", "transformers"):
        raise ValueError(f"unknown target format {to!r}; choose 'speechcl' or 'transformers'")
    if Path(source).resolve() == Path(destination).resolve():
        raise ValueError(f"source and destination are the same path ({source}); choose another DST")
    model, meta = load_model_with_metadata(source)
    if dictionary is not None:
        meta.labels = read_fairseq_dictionary(dictionary)
    if meta.labels is not None and isinstance(model, Wav2Vec2ForCTC) and len(meta.labels) != model.vocab_size:
        raise ValueError(f"{dictionary or source}: {len(meta.labels)} labels (with the 4 specials) but the model "
                         f"has {model.vocab_size} outputs; pass the dict.ltr.txt the model was trained with")
    if not isinstance(model, Wav2Vec2ForCTC):
        meta.labels = None
    if to == "speechcl":
        extra = {"normalize": meta.normalize} | ({"labels": meta.labels} if meta.labels else {})
        save_checkpoint(model, destination, extra=extra)
    else:
        export_to_transformers(model, destination, normalize=meta.normalize, labels=meta.labels)
    return model
