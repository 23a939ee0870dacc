"""Audio input/output shared by every verb: decoding, mixdown and resampling to 16 kHz."""

from speechcl.audio.io import (
    SAMPLE_RATE,
    AudioError,
    AudioInfo,
    audio_info,
    load_audio,
    resample,
    resampled_length,
    write_audio,
)

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "resample",
    "resampled_length",
    "write_audio",
]
