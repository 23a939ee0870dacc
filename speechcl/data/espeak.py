"""A minimal ctypes binding to libespeak-ng as shipped by the pip package ``espeakng-loader``.

Only what the synthetic corpus needs: synchronous synthesis of one utterance with a given voice
(``"en-US+f2"``: language + variant), rate (words per minute) and pitch (0-100), returning int16
samples at the library's native rate (22050 Hz), and with :meth:`Espeak.synthesize_events` the
synthesis events espeak-ng reports while speaking (:class:`SynthEvent`: word and phoneme starts with
their sample positions, the time alignment :mod:`speechcl.data.alignments` builds on).

Events: the engine is initialised with ``espeakINITIALIZE_PHONEME_EVENTS``, so besides word, sentence
and end events the callback receives one ``espeakEVENT_PHONEME`` per phoneme, carrying the phoneme's
mnemonic (``id.string``, e.g. ``'aU``: stress mark + phoneme name) and the text position of the word
it belongs to. Every event's ``sample`` field is its exact position in the output, in samples at the
native rate from the start of the utterance (``audio_position`` is the same in whole milliseconds,
truncated, so it is not used). Enabling phoneme events leaves the audio unchanged, sample for sample
(checked: the same corpus with and without them has the same bytes; tests/data/test_alignments.py).

The library keeps global state (one voice, one callback), so use one :class:`Espeak` per process.
espeak-ng also carries hidden state from one utterance to the next (pitch flutter phase, noise
generator), so the audio of an utterance depends on what the process synthesized before it; the
synthetic corpus therefore synthesizes every chapter in a freshly started worker process and resets
the random seed before each utterance (see :mod:`speechcl.data.synth`).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.pool
from dataclasses import dataclass

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
_INITIALIZE_PHONEME_EVENTS = 0x0001

# espeak_EVENT_TYPE values from speak_lib.h; the ones kept get a name in SynthEvent.kind
_EVENT_LIST_TERMINATED = 0
_EVENT_KINDS = {1: "word", 2: "sentence", 5: "end", 7: "phoneme"}
_EVENT_PHONEME = 7


class _Event(ctypes.Structure):
    """``espeak_EVENT`` from speak_lib.h (the ``id`` union read as its 8-byte ``string`` member)."""

    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


@dataclass(frozen=True)
class SynthEvent:
    """One synthesis event of an utterance.

    Attributes:
        kind: ``"word"`` (a word starts), ``"phoneme"`` (a phoneme starts), ``"sentence"`` or ``"end"``
            (end of a clause or of the text).
        sample: position in the utterance's audio, in samples at :attr:`Espeak.sample_rate`.
        text_position: 1-based character position in the text of the word the event belongs to (for a
            phoneme: the word it is spoken in; pauses after the last word point past its end).
        length: for word events, espeak-ng's word length in characters (not always the written length).
        name: for phoneme events the mnemonic, e.g. ``"k"``, ``"'aU"`` (``'`` / ``,``: primary / secondary
            stress), ``"_:"`` (a pause); empty otherwise.
    """

    kind: str
    sample: int
    text_position: int
    length: int = 0
    name: str = ""


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
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, path, _INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {path.decode()!r}")
        self.sample_rate: int = rate
        self._chunks: list[bytes] = []
        self._events: list[SynthEvent] = []
        self._callback = _SynthCallback(self._collect)  # kept on self so ctypes does not free it
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer, num_samples: int, events: ctypes._Pointer) -> int:
        if num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        if events:
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                event = events[i]
                kind = _EVENT_KINDS.get(event.type)
                if kind is not None:
                    name = event.id.decode("utf-8", "replace") if event.type == _EVENT_PHONEME else ""
                    self._events.append(SynthEvent(kind, int(event.sample), int(event.text_position),
                                                   int(event.length), name))
                i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int = 50,
                   seed: int = 0) -> np.ndarray:
        """Speak ``text``; returns int16 samples ``[num_samples]`` at :attr:`sample_rate`.

        The arguments are those of :meth:`synthesize_events`, which also returns the events.
        """
        return self.synthesize_events(text, voice, rate, pitch, pitch_range, seed)[0]

    def synthesize_events(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int = 50,
                          seed: int = 0) -> tuple[np.ndarray, list[SynthEvent]]:
        """Speak ``text``; returns int16 samples ``[num_samples]`` at :attr:`sample_rate` and the
        synthesis events in the order espeak-ng reported them (positions in that audio).

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
        self._events = []
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise RuntimeError(f"espeak-ng failed to synthesize {text[:40]!r} (status {status})")
        self._lib.espeak_Synchronize()
        audio = np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()
        events, self._chunks, self._events = self._events, [], []
        return audio, events


def fresh_pool(count: int) -> multiprocessing.pool.Pool:
    """``count`` workers that run each task in a new process forked from a clean server (``forkserver``):
    espeak-ng state of the calling process (an engine it used before) never reaches a task, so the audio of
    a chapter is the same whatever the caller did earlier. The server imports the corpus modules once."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["speechcl.data.synth", "speechcl.data.keywords"])
    return context.Pool(count, maxtasksperchild=1)
