"""Word and phone time alignments of the synthetic corpus, and frame labels at a model's frame rate.

The alignments come from espeak-ng's own synthesis events (:meth:`speechcl.data.espeak.Espeak.synthesize_events`),
not from a recognizer run afterwards: every phoneme event says where in the audio a phoneme starts and
which word of the text it belongs to.

**File format.** ``speechcl synth`` writes, next to each chapter's ``<spk>-<chap>.trans.txt``, a
``<spk>-<chap>.align.tsv`` with one segment per line and no header::

    utt_id<TAB>kind<TAB>start_sample<TAB>end_sample<TAB>label

- ``kind`` is ``word`` or ``phone``; each utterance's word lines come first, then its phone lines, each
  in time order;
- ``start_sample`` / ``end_sample``: the half-open sample range ``[start, end)`` in the final 16 kHz
  FLAC (the utterance's audio as :func:`speechcl.audio.io.load_audio` returns it);
- phone segments tile the whole file, ``[0, num_samples)``, without gaps or overlaps; the label is
  espeak-ng's phoneme mnemonic without its stress mark (``'aU`` and ``,aU`` are ``aU``; nothing else
  is mapped: ``@2``, ``I2``, ``t#``, ``;`` stay as espeak-ng names them), and ``sil`` for the pauses
  espeak-ng inserts (mnemonics starting with ``_``), the silence added before and after the speech, and
  the short decay after the last phoneme; phonemes espeak-ng gives no duration are left out;
- word segments span the word's phonemes (first start to last end, pauses excluded), labelled with the
  transcript's word. espeak-ng speaks a few common pairs as one word (``FOR THE``, ``AT A``, ``IN THE``)
  and reports one word for them, with one span for both; such a segment's label holds the words with a
  space between them, so the word labels of an utterance, joined by spaces, are always its transcript.

**Frame labels** (:func:`frame_labels`): the label of model frame ``t`` is the phone covering the centre
of the frame's receptive field. For the wav2vec 2.0 conv stack (hop 320, receptive field 400 samples)
frame ``t`` sees samples ``[320 t, 320 t + 400)`` and takes the label of the segment with
``start <= 320 t + 200 < end`` (at a boundary the later phone, since segments are half-open), ``sil``
where no segment covers it; there are exactly as many labels as the model has frames
(:func:`speechcl.models.feature_encoder.num_frames`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from speechcl.models.config import BASE_CONV_LAYERS, ConvSpec
from speechcl.models.feature_encoder import conv_geometry, num_frames
from speechcl.utils.io import write_lines

SIL = "sil"
"""Label of silence: pauses, leading and trailing silence, frames no phone covers."""
WORD = "word"
PHONE = "phone"
ALIGN_SUFFIX = ".align.tsv"
_STRESS_MARKS = "',"


class Segment(NamedTuple):
    """A labelled half-open sample range ``[start, end)``."""

    start: int
    end: int
    label: str


@dataclass
class Alignment:
    """One utterance's word and phone segments (sample positions at one sample rate).

    Attributes:
        words: word segments in time order (they need not touch: pauses lie between them).
        phones: phone segments in time order, tiling ``[0, num_samples)`` (``sil`` included).
    """

    words: list[Segment] = field(default_factory=list)
    phones: list[Segment] = field(default_factory=list)

    def phone_sequence(self) -> list[str]:
        """The spoken phones in order, without ``sil`` (a ``.phn`` line)."""
        return [s.label for s in self.phones if s.label != SIL]


def phone_label(mnemonic: str) -> str:
    """The phone label of an espeak-ng phoneme mnemonic: stress mark removed, pauses (``_...``) -> ``sil``."""
    name = mnemonic.lstrip(_STRESS_MARKS)
    return SIL if not name or name.startswith("_") else name


def alignment_from_events(events: Iterable, text: str, num_samples: int) -> Alignment:
    """Build an utterance's :class:`Alignment` from its synthesis events, at the events' sample rate.

    Args:
        events: the :class:`speechcl.data.espeak.SynthEvent` list of one utterance, in reported order.
        text: the text that was spoken (words separated by single spaces).
        num_samples: length of the synthesized audio; the phone tier tiles ``[0, num_samples)``.

    A phoneme lasts until the next phoneme starts; the last one until the ``end`` event (the audio after
    it is ``sil``). Phones are assigned to words by the text position every phoneme event carries.

    Raises:
        ValueError: events out of order or beyond ``num_samples``, or no word event for the text.
    """
    events = list(events)
    samples = [e.sample for e in events]
    if any(b < a for a, b in zip(samples, samples[1:])) or (samples and (samples[0] < 0 or samples[-1] > num_samples)):
        raise ValueError(f"synthesis events of {text[:40]!r} are not in order within 0..{num_samples} samples: "
                         f"{samples[:8]}...")
    phonemes = [e for e in events if e.kind == "phoneme"]
    ends = [e.sample for e in events if e.kind == "end"]
    speech_end = ends[-1] if ends else num_samples
    raw: list[tuple[int, int, str, int]] = []  # start, end, label, text position
    for i, event in enumerate(phonemes):
        end = phonemes[i + 1].sample if i + 1 < len(phonemes) else max(speech_end, event.sample)
        if end > event.sample:
            raw.append((event.sample, end, phone_label(event.name), event.text_position))
    phones = _tile([Segment(s, e, label) for s, e, label, _ in raw], num_samples)

    # words: the transcript's words by their 1-based character position
    words_of = text.split(" ")
    starts, position = [], 1
    for word in words_of:
        starts.append(position)
        position += len(word) + 1
    word_events = sorted({_word_index(starts, e.text_position) for e in events if e.kind == "word"})
    if not word_events:
        raise ValueError(f"espeak-ng reported no word events for {text[:40]!r}")
    word_events[0] = 0  # anything before the first event belongs to it
    spans: dict[int, list[int]] = {}
    for start, end, label, text_position in raw:
        if label == SIL:
            continue
        index = _group(word_events, _word_index(starts, text_position))
        span = spans.setdefault(index, [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    words: list[Segment] = []
    pending: list[str] = []  # words of leading groups without a sounding phoneme
    for k, first in enumerate(word_events):
        names = words_of[first:word_events[k + 1] if k + 1 < len(word_events) else len(words_of)]
        if first not in spans:  # no sounding phoneme: joins the previous word (or the next one)
            if words:
                words[-1] = words[-1]._replace(label=" ".join([words[-1].label, *names]))
            else:
                pending += names
            continue
        words.append(Segment(spans[first][0], spans[first][1], " ".join(pending + names)))
        pending = []
    if pending:
        words.append(Segment(0, 0, " ".join(pending)))
    return Alignment(words, phones)


def _word_index(starts: Sequence[int], text_position: int) -> int:
    """Index of the word whose span holds 1-based character ``text_position`` (the last word past the end)."""
    index = 0
    for i, start in enumerate(starts):
        if start <= text_position:
            index = i
    return index


def _group(firsts: Sequence[int], index: int) -> int:
    """The first word of the word-event group word ``index`` belongs to."""
    group = firsts[0]
    for first in firsts:
        if first <= index:
            group = first
    return group


def _tile(phones: Sequence[Segment], num_samples: int) -> list[Segment]:
    """Phones clipped to ``[0, num_samples)``, gaps filled with ``sil``, neighbouring ``sil`` merged,
    empty segments dropped."""
    out: list[Segment] = []

    def add(start: int, end: int, label: str) -> None:
        if end <= start:
            return
        if out and out[-1].label == SIL and label == SIL:
            out[-1] = out[-1]._replace(end=end)
        else:
            out.append(Segment(start, end, label))

    position = 0
    for start, end, label in phones:
        start, end = max(start, position), min(end, num_samples)
        add(position, start, SIL)
        add(start, end, label)
        position = max(position, end)
    add(position, num_samples, SIL)
    return out


def rescale(alignment: Alignment, source_rate: int, target_rate: int, offset: int, num_samples: int) -> Alignment:
    """Map an alignment from ``source_rate`` audio into a ``target_rate`` file where that audio starts at
    sample ``offset`` (the synthetic corpus pads each utterance with silence) and which is ``num_samples``
    long: position ``p`` goes to ``offset + round(p * target_rate / source_rate)``; the phone tier is
    re-tiled over ``[0, num_samples)``."""
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate} and {target_rate}")

    def at(position: int) -> int:
        return min(num_samples, offset + (position * target_rate * 2 + source_rate) // (2 * source_rate))

    words = [Segment(at(s.start), at(s.end), s.label) for s in alignment.words]
    phones = _tile([Segment(at(s.start), at(s.end), s.label) for s in alignment.phones], num_samples)
    return Alignment(words, phones)


def frame_labels(segments: Sequence[Segment], num_samples: int,
                 geometry: Sequence[ConvSpec] = BASE_CONV_LAYERS) -> list[str]:
    """One label per model frame of a ``num_samples`` long utterance (rule: module docstring).

    Args:
        segments: labelled half-open sample ranges (a phone tier); later segments win where they overlap.
        num_samples: length of the utterance in samples.
        geometry: the conv stack whose frames are labelled, ``(channels, kernel, stride)`` per layer
            (default wav2vec 2.0's, hop 320, receptive field 400; the tiny/small presets share it).

    Returns:
        ``num_frames(num_samples, geometry)`` labels (none for fewer samples than the receptive field).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    hop, receptive_field = conv_geometry(geometry)
    centre = receptive_field // 2
    count = num_frames(num_samples, geometry)
    labels = [SIL] * count
    for start, end, label in segments:
        # frames t with start <= hop * t + centre < end
        first = max(0, -((centre - start) // hop))
        stop = min(count, -((centre - end) // hop))
        labels[first:stop] = [label] * max(0, stop - first)
    return labels


# ----------------------------------------------------------------------------- files


def alignment_path(trans_path: str | os.PathLike) -> Path:
    """``<spk>-<chap>.align.tsv`` beside ``<spk>-<chap>.trans.txt``."""
    trans_path = Path(trans_path)
    return trans_path.with_name(trans_path.name.removesuffix(".trans.txt") + ALIGN_SUFFIX)


def alignment_lines(utt_id: str, alignment: Alignment) -> list[str]:
    """The ``.align.tsv`` lines of one utterance (words first, then phones)."""
    return ([f"{utt_id}\t{WORD}\t{s.start}\t{s.end}\t{s.label}" for s in alignment.words]
            + [f"{utt_id}\t{PHONE}\t{s.start}\t{s.end}\t{s.label}" for s in alignment.phones])


def write_alignments(path: str | os.PathLike, alignments: Iterable[tuple[str, Alignment]]) -> None:
    """Atomically write ``(utt_id, alignment)`` pairs as an ``.align.tsv`` file."""
    write_lines(path, [line for utt_id, alignment in alignments for line in alignment_lines(utt_id, alignment)])


def read_alignments(path: str | os.PathLike) -> dict[str, Alignment]:
    """Read an ``.align.tsv`` file: utterance id -> :class:`Alignment`, in file order.

    Raises:
        ValueError: a line without five tab-separated fields, an unknown kind, a position that is not an
            integer or a segment that ends before it starts (the message names the file and line).
    """
    out: dict[str, Alignment] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 5 or fields[1] not in (WORD, PHONE):
                raise ValueError(f"{path}:{number}: expected 'utt_id<TAB>word|phone<TAB>start<TAB>end<TAB>label', "
                                 f"got {line!r}; re-create the file with speechcl synth")
            utt_id, kind, start, end, label = fields
            try:
                segment = Segment(int(start), int(end), label)
            except ValueError:
                raise ValueError(f"{path}:{number}: sample positions must be integers, got {start!r}, {end!r}") from None
            if not 0 <= segment.start <= segment.end or not label:
                raise ValueError(f"{path}:{number}: bad segment {line!r} (need 0 <= start <= end and a label)")
            alignment = out.setdefault(utt_id, Alignment())
            (alignment.words if kind == WORD else alignment.phones).append(segment)
    return out
