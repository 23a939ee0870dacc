"""Audio shared by every verb: finding files, decoding, mixdown, resampling to 16 kHz, normalising."""

from speechcl.audio.io import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioError,
    AudioInfo,
    audio_info,
    find_audio_files,
    load_audio,
    normalize_wave,
    resample,
    resampled_length,
    write_audio,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "SAMPLE_RATE",
    "AudioError",
    "AudioInfo",
    "audio_info",
    "find_audio_files",
    "load_audio",
    "normalize_wave",
    "resample",
    "resampled_length",
    "write_audio",
]
