"""A minimal ctypes binding to libespeak-ng as shipped by the pip package ``espeakng-loader``.

Only what the synthetic corpus needs: synchronous synthesis of one utterance with a given voice
(``"en-US+f2"``: language + variant), rate (words per minute) and pitch (0-100), returning int16
samples at the library's native rate (22050 Hz).

The library keeps global state (one voice, one callback), so use one :class:`Espeak` per process.
espeak-ng also carries hidden state from one utterance to the next (pitch flutter phase, noise
generator), so the audio of an utterance depends on what the process synthesized before it; the
synthetic corpus therefore synthesizes every chapter in a freshly started worker process and resets
the random seed before each utterance (see :mod:`speechcl.data.synth`).
"""

from __future__ import annotations

import ctypes

import numpy as np

# espeak_AUDIO_OUTPUT.AUDIO_OUTPUT_SYNCHRONOUS and espeak_PARAMETER values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """One initialised espeak-ng engine in synchronous mode.

    Args:
        library_path: path of ``libespeak-ng.so``; default: the one inside ``espeakng-loader``.
        data_path: path of ``espeak-ng-data``; default: the one inside ``espeakng-loader``.
    """

    def __init__(self, library_path: str | None = None, data_path: str | None = None) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(library_path or espeakng_loader.get_library_path())
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        path = (data_path or espeakng_loader.get_data_path()).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, path, 0)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {path.decode()!r}")
        self.sample_rate: int = rate
        self._chunks: list[bytes] = []
        self._callback = _SynthCallback(self._collect)  # kept on self so ctypes does not free it
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer, num_samples: int, events: int) -> int:
        if num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        return 0

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int = 50,
                   seed: int = 0) -> np.ndarray:
        """Speak ``text``; returns int16 samples ``[num_samples]`` at :attr:`sample_rate`.

        Args:
            text: plain text (no SSML).
            voice: espeak-ng voice name with optional variant, e.g. ``"en-GB-scotland+m3"``.
            rate: speaking rate in words per minute (espeak-ng accepts 80-450).
            pitch: base pitch, 0-100 (espeak-ng default 50).
            pitch_range: pitch range, 0-100 (0 is monotone; default 50).
            seed: seed of espeak-ng's internal noise generator, reset before speaking.
        """
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice!r}; use e.g. 'en-US+m3'")
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                             (_PARAM_VOLUME, 100)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._lib.espeak_ng_SetRandSeed(seed)
        self._chunks = []
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise RuntimeError(f"espeak-ng failed to synthesize {text[:40]!r} (status {status})")
        self._lib.espeak_Synchronize()
        audio = np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()
        self._chunks = []
        return audio
