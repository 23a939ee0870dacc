"""Waveform augmentation shared by pretraining views, CTC fine-tuning and the invariance analysis.

``Augmenter(AugmentConfig(transforms=[{"name": "gain", "p": 0.5, "db": [-6, 6]}, ...], seed=0))`` applies a
seeded chain to padded batches, deterministic per (seed, item id, epoch, view stream); the pure functions
(``add_noise``, ``apply_gain``, ``speed_perturb``, ...) apply one transform at a fixed strength. Parameter
conventions (scalar = fixed, ``[lo, hi]`` = uniform range, 3+ values or ``{choice: [...]}`` = choice) are in
:mod:`speechcl.audio.augment.chain`; the Hydra group is ``conf/augment/`` (none, views, finetune).
"""

from speechcl.audio.augment.chain import (
    TRANSFORMS,
    AugmentConfig,
    Augmenter,
    Param,
    Transform,
    describe,
    row_seed,
    time_map,
)
from speechcl.audio.augment.functional import (
    NOISE_COLORS,
    add_babble,
    add_noise,
    apply_gain,
    babble_noise,
    band_limit,
    bandpass_fir,
    clip,
    colored_noise,
    invert_polarity,
    mix_at_snr,
    mu_law,
    peak,
    pitch_shift,
    reverberate,
    rms,
    speed_perturb,
    speed_ratio,
    synthetic_rir,
    time_mask,
    time_shift,
    valid_mask,
)

__all__ = [
    "NOISE_COLORS",
    "TRANSFORMS",
    "AugmentConfig",
    "Augmenter",
    "Param",
    "Transform",
    "add_babble",
    "add_noise",
    "apply_gain",
    "babble_noise",
    "band_limit",
    "bandpass_fir",
    "clip",
    "colored_noise",
    "describe",
    "invert_polarity",
    "mix_at_snr",
    "mu_law",
    "peak",
    "pitch_shift",
    "reverberate",
    "rms",
    "row_seed",
    "speed_perturb",
    "speed_ratio",
    "synthetic_rir",
    "time_map",
    "time_mask",
    "time_shift",
    "valid_mask",
]
