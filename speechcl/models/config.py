"""The wav2vec 2.0 model configuration and its named presets.

One flat dataclass, named after fairseq's ``Wav2Vec2Config`` fields so that papers, fairseq configs and
this code read alike. Library code receives this object; Hydra configs in ``conf/model`` map onto it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

ConvSpec = tuple[int, int, int]
"""One feature-encoder layer: (output channels, kernel width, stride)."""

# fairseq's default: [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
BASE_CONV_LAYERS: tuple[ConvSpec, ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass
class Wav2Vec2Config:
    """Hyperparameters of the wav2vec 2.0 model (encoder, quantizer and pretraining heads).

    Names follow fairseq; the values shown as "Base / Large(LV-60)" are the paper's.
    """

    # Feature encoder (fairseq ``conv_feature_layers``, ``extractor_mode``, ``conv_bias``).
    conv_layers: tuple[ConvSpec, ...] = BASE_CONV_LAYERS
    extractor_mode: Literal["group_norm", "layer_norm"] = "group_norm"  # Base: group_norm / LV-60: layer_norm
    conv_bias: bool = False  # Base: False / LV-60: True
    feature_grad_mult: float = 0.1  # gradient scale into the feature encoder; 0 freezes it

    # Context network (transformer).
    encoder_layers: int = 12  # 12 / 24
    encoder_embed_dim: int = 768  # D: 768 / 1024
    encoder_ffn_embed_dim: int = 3072  # 3072 / 4096
    encoder_attention_heads: int = 12  # 12 / 16
    layer_norm_first: bool = False  # post-LN (False, Base) or pre-LN (True, Large)
    conv_pos: int = 128  # positional convolution kernel width
    conv_pos_groups: int = 16
    layer_norm_eps: float = 1e-5

    # Dropouts.
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.1  # after the feature projection
    dropout_features: float = 0.1  # on the unmasked features that feed the quantizer
    layerdrop: float = 0.05

    # Time masking (fairseq ``mask_prob``/``mask_length``; min_masks is 2 in fairseq's pretraining).
    mask_prob: float = 0.65
    mask_length: int = 10
    mask_min_masks: int = 2
    require_same_masks: bool = True  # every utterance of a batch gets the same number of masked steps
    # Channel masking (fine-tuning).
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    mask_channel_min_masks: int = 0

    # Quantizer (fairseq ``latent_vars``, ``latent_groups``, ``latent_dim``, ``latent_temp``).
    latent_vars: int = 320  # V
    latent_groups: int = 2  # G
    latent_dim: int = 0  # codevector size (all groups together); 0 means final_dim
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)  # (start, end, decay per update)

    # Pretraining heads and contrastive task.
    final_dim: int = 256  # projection size of the contrastive task (768 for LV-60)
    num_negatives: int = 100  # K
    cross_sample_negatives: int = 0
    logit_temp: float = 0.1  # kappa

    # Fine-tuning head dropout (transformers' ``final_dropout``).
    final_dropout: float = 0.0

    # --- derived values ---------------------------------------------------------------------------
    @property
    def codevector_dim(self) -> int:
        return self.latent_dim if self.latent_dim > 0 else self.final_dim

    @property
    def conv_out_dim(self) -> int:
        return self.conv_layers[-1][0]

    def __post_init__(self) -> None:
        self.conv_layers = tuple(tuple(int(v) for v in spec) for spec in self.conv_layers)  # type: ignore[assignment]
        self.latent_temp = tuple(float(v) for v in self.latent_temp)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        if self.extractor_mode not in ("group_norm", "layer_norm"):
            raise ValueError(f"extractor_mode must be 'group_norm' or 'layer_norm', got {self.extractor_mode!r}")
        if not self.conv_layers or any(len(s) != 3 or min(s) <= 0 for s in self.conv_layers):
            raise ValueError(f"conv_layers must be a non-empty list of positive (dim, kernel, stride), got {self.conv_layers}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by conv_pos_groups {self.conv_pos_groups}"
            )
        if self.codevector_dim % self.latent_groups:
            raise ValueError(
                f"codevector dim {self.codevector_dim} is not divisible by latent_groups {self.latent_groups}"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout", "dropout_input", "dropout_features",
                     "layerdrop", "mask_prob", "mask_channel_prob", "final_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.mask_length < 1 or self.mask_channel_length < 1:
            raise ValueError("mask_length and mask_channel_length must be at least 1")

    # --- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["conv_layers"] = [list(s) for s in self.conv_layers]
        out["latent_temp"] = list(self.latent_temp)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Wav2Vec2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
        values = dict(data)
        if "conv_layers" in values:
            values["conv_layers"] = tuple(tuple(s) for s in values["conv_layers"])
        if "latent_temp" in values:
            values["latent_temp"] = tuple(values["latent_temp"])
        return cls(**values)

    def replace(self, **changes: Any) -> Wav2Vec2Config:
        return dataclasses.replace(self, **changes)


# --- presets ---------------------------------------------------------------------------------------

def wav2vec2_base(**overrides: Any) -> Wav2Vec2Config:
    """BASE (fairseq ``wav2vec2_base_librispeech``): 12 × 768, post-LN, group-norm extractor; 95.0M params."""
    return Wav2Vec2Config(**overrides)


def wav2vec2_large(**overrides: Any) -> Wav2Vec2Config:
    """LARGE pretrained on LS-960 (fairseq ``wav2vec2_large_librivox`` without LV): 24 × 1024, post-LN,
    group-norm extractor, final_dim 768, dropouts 0.1/0 and layerdrop 0.2 as in the paper's LS-960 run."""
    values: dict[str, Any] = dict(
        encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16,
        final_dim=768, layerdrop=0.2, dropout_input=0.1, dropout_features=0.1, feature_grad_mult=0.1,
    )
    values.update(overrides)
    return Wav2Vec2Config(**values)


def wav2vec2_large_lv60(**overrides: Any) -> Wav2Vec2Config:
    """LARGE (LV-60): 24 × 1024, pre-LN, layer-norm extractor with conv bias, final_dim 768; ≈317.4M params.

    fairseq ``wav2vec2_large_librivox``: dropout 0, attention/activation dropout 0, layerdrop 0, feature
    grad mult 1.0, dropout_input/features 0.1, and the data normalised per utterance.
    """
    values: dict[str, Any] = dict(
        extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True,
        encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16,
        final_dim=768, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
        feature_grad_mult=1.0,
    )
    values.update(overrides)
    return Wav2Vec2Config(**values)


# A compact extractor for the CPU sizes: same 320-sample hop and 400-sample receptive field as BASE,
# narrower channels.
def _cpu_conv(channels: int) -> tuple[ConvSpec, ...]:
    return ((channels, 10, 5),) + ((channels, 3, 2),) * 4 + ((channels, 2, 2),) * 2


def wav2vec2_tiny(**overrides: Any) -> Wav2Vec2Config:
    """Test size (≈0.3M params): 2 × 64, 32-channel extractor, layer-norm extractor, pre-LN."""
    values: dict[str, Any] = dict(
        conv_layers=_cpu_conv(32), extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True,
        encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
        conv_pos=16, conv_pos_groups=4, latent_vars=32, latent_groups=2, final_dim=32, num_negatives=10,
        feature_grad_mult=1.0, layerdrop=0.0,
    )
    values.update(overrides)
    return Wav2Vec2Config(**values)


# The demo extractor widens gradually: the early layers run at 1600–3200 frames per second and dominate
# the cost, so they are kept narrow (a third of a uniform 256-channel extractor's FLOPs).
SMALL_CONV_LAYERS: tuple[ConvSpec, ...] = (
    (64, 10, 5), (128, 3, 2), (192, 3, 2), (256, 3, 2), (256, 3, 2), (256, 2, 2), (256, 2, 2),
)


def wav2vec2_small(**overrides: Any) -> Wav2Vec2Config:
    """CPU demo size (≈6.0M params): 6 × 256 pre-LN transformer (stable at the higher learning rates
    short runs need) over a 64→256-channel group-norm extractor without conv bias (BASE's extractor
    layout), V=320, K=50, final_dim 128.

    Sized to train usefully on 2 CPU cores in tens of minutes: about 0.9 GFLOP per second of audio
    forward, a sixteenth of BASE. Why group norm: with a layer-norm extractor every frame's features are
    dominated by the same per-channel pattern, so at initialisation nearly all frames fall on a handful
    of codes (code perplexity ≈9 of 640) and the contrastive task collapses onto one code within ten
    updates; group norm removes each channel's mean over time and starts at a perplexity of ≈200.
    """
    values: dict[str, Any] = dict(
        conv_layers=SMALL_CONV_LAYERS, extractor_mode="group_norm", conv_bias=False, layer_norm_first=True,
        encoder_layers=6, encoder_embed_dim=256, encoder_ffn_embed_dim=1024, encoder_attention_heads=4,
        conv_pos=64, conv_pos_groups=16, final_dim=128, num_negatives=50, layerdrop=0.0,
        feature_grad_mult=1.0,
    )
    values.update(overrides)
    return Wav2Vec2Config(**values)


PRESETS = {
    "base": wav2vec2_base,
    "large": wav2vec2_large,
    "large_lv60": wav2vec2_large_lv60,
    "small": wav2vec2_small,
    "tiny": wav2vec2_tiny,
}


def preset(name: str, **overrides: Any) -> Wav2Vec2Config:
    """Return the named preset (``base``, ``large``, ``large_lv60``, ``small``, ``tiny``) with overrides."""
    try:
        builder = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return builder(**overrides)
