"""A keyword-spotting corpus in the Speech Commands layout (SUPERB's KS task), spoken by espeak-ng.

``synthesize_keywords(out, KeywordConfig(...))`` (``speechcl synth OUT --keywords``) writes::

    OUT/<split>/<label>/<speaker>_<n>.flac   1 s clips: 16000 samples, 16 kHz mono 16-bit FLAC
    OUT/<split>/clips.tsv                    one line per clip: path (relative to OUT), label, what is
                                             heard (the word, or the noise kind), speaker, and the
                                             spoken part's start and end sample (0 0 for silence)
    OUT/keywords.json                        the configuration, the labels and the speakers

Splits ``train``, ``dev`` and ``test``; labels (:data:`LABELS`, SUPERB KS's twelve classes): the ten
command words :data:`COMMANDS`, ``_unknown_`` (a word of :mod:`speechcl.data.text`'s vocabulary other
than the commands of at most 7 letters, drawn for each clip) and ``_silence_`` (no speech: the speaker's
noise floor, white, pink or brown noise, or mains hum, at -60 to -30 dBFS RMS). Every label gets
``per_word`` clips in train and ``heldout_per_word`` in dev and in test, so the classes are balanced
(chance 1/12). Speakers are :func:`speechcl.data.synth.plan_speakers`' voices: ``speakers`` training
voices for train, and disjoint unseen voices (``heldout_speakers`` each) for dev and for test; a label's
clips go round the split's speakers, and ``n`` counts a speaker's clips of one label.

A word clip is the whole espeak-ng utterance of the word (about 0.3-0.6 s, a random rate within 10% of
the speaker's, loudness 0.5-1 times the speaker's gain) at a random offset in the second, over the
speaker's noise floor; its ``clips.tsv`` span comes from espeak-ng's phoneme events
(:mod:`speechcl.data.alignments`).

Determinism and resuming as in :mod:`speechcl.data.synth`: each speaker's clips of a split are made in
a fresh worker process in a fixed order, so the same configuration gives the same bytes; a speaker is
done once ``OUT/.progress/<split>-<speaker>.tsv`` (its clip lines) exists, so an interrupted run resumes.
``speechcl prepare keywords OUT DATA`` turns the tree into manifests
(:func:`speechcl.data.prepare.prepare_keywords`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from speechcl.audio.io import SAMPLE_RATE
from speechcl.data.espeak import fresh_pool
from speechcl.data.synth import DEV_SPLIT, TEST_SPLIT, Speaker, SynthConfig, claim_output, plan_speakers
from speechcl.utils.io import write_lines

COMMANDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
LABELS: tuple[str, ...] = (*COMMANDS, UNKNOWN, SILENCE)
SPLITS: tuple[str, ...] = ("train", "dev", "test")
CLIP_SAMPLES = SAMPLE_RATE
"""Every clip is one second."""
NOISE_KINDS: tuple[str, ...] = ("floor", "white", "pink", "brown", "hum")
MAX_UNKNOWN_LETTERS = 7
"""Unknown words are short (as Speech Commands' are), so that every spoken word fits in its second."""
CLIPS_HEADER = "path\tlabel\theard\tspeaker\tspeech_start\tspeech_end"


@dataclass(frozen=True)
class KeywordConfig:
    """What to synthesize.

    Attributes:
        per_word: clips per label in train.
        heldout_per_word: clips per label in dev and in test (None: half of ``per_word``, at least 1).
        speakers: training voices.
        heldout_speakers: voices in each of dev and test (unseen in training, disjoint).
        seed: seeds voices, words, offsets and noise.
    """

    per_word: int = 50
    heldout_per_word: int | None = None
    speakers: int = 40
    heldout_speakers: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_word < 1 or (self.heldout_per_word is not None and self.heldout_per_word < 1):
            raise ValueError(f"need at least one clip per label, got per_word={self.per_word}, "
                             f"heldout_per_word={self.heldout_per_word}")
        SynthConfig(speakers=self.speakers, heldout_speakers=self.heldout_speakers)  # checks the speaker counts

    def clips_per_label(self, split: str) -> int:
        """Clips of each label in ``split``."""
        if split == "train":
            return self.per_word
        return self.heldout_per_word if self.heldout_per_word is not None else max(1, self.per_word // 2)


@dataclass(frozen=True)
class Clip:
    """One clip to make: its label, what is heard (a word or a noise kind) and its file number."""

    label: str
    heard: str
    number: int


@dataclass(frozen=True)
class SpeakerTask:
    """One speaker's clips of one split, made in one worker process."""

    split: str
    speaker: Speaker
    clips: tuple[Clip, ...]
    seed: int
    out: str


@dataclass
class KeywordSummary:
    """What :func:`synthesize_keywords` produced."""

    clips: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_speakers: int = 0
    synthesized_speakers: int = 0


def plan_keyword_speakers(config: KeywordConfig) -> list[Speaker]:
    """The voices of train, dev and test: those :func:`plan_speakers` draws for the same seed and counts
    (the sentence corpus's train, dev-clean and test-clean voices), with the splits renamed."""
    synth = SynthConfig(speakers=config.speakers, heldout_speakers=config.heldout_speakers, seed=config.seed,
                        train_split="train")
    names = {"train": "train", DEV_SPLIT: "dev", TEST_SPLIT: "test"}
    return [replace(s, split=names[s.split]) for s in plan_speakers(synth)]


def unknown_words() -> list[str]:
    """The words ``_unknown_`` clips say: the sentence vocabulary's words of at most
    :data:`MAX_UNKNOWN_LETTERS` letters other than the commands, lowercase, sorted."""
    from speechcl.data.text import build_vocabulary

    return sorted(w.lower() for w in build_vocabulary().words()
                  if w.lower() not in COMMANDS and len(w) <= MAX_UNKNOWN_LETTERS)


def plan_keywords(config: KeywordConfig, out: str | os.PathLike) -> list[SpeakerTask]:
    """Every split's clips, grouped by speaker (pure; seeded by ``config.seed``)."""
    speakers = plan_keyword_speakers(config)
    others = unknown_words()
    tasks = []
    for split in SPLITS:
        rng = random.Random(f"keywords-{config.seed}-{split}")
        voices = [s for s in speakers if s.split == split]
        clips: dict[int, list[Clip]] = {s.id: [] for s in voices}
        for index, label in enumerate(LABELS):
            counts = {s.id: 0 for s in voices}
            for j in range(config.clips_per_label(split)):
                speaker = voices[(j + index) % len(voices)]
                if label == UNKNOWN:
                    heard = rng.choice(others)
                elif label == SILENCE:
                    heard = rng.choice(NOISE_KINDS)
                else:
                    heard = label
                clips[speaker.id].append(Clip(label, heard, counts[speaker.id]))
                counts[speaker.id] += 1
        for speaker in voices:
            if clips[speaker.id]:
                tasks.append(SpeakerTask(split, speaker, tuple(clips[speaker.id]), rng.randrange(2**31), str(out)))
    return tasks


def clip_path(split: str, clip: Clip, speaker: Speaker) -> str:
    """``<split>/<label>/<speaker>_<n>.flac``, relative to the corpus directory."""
    return f"{split}/{clip.label}/{speaker.id}_{clip.number}.flac"


def _progress_path(out: str | os.PathLike, split: str, speaker: Speaker) -> Path:
    return Path(out) / ".progress" / f"{split}-{speaker.id}.tsv"


def background_noise(kind: str, num_samples: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    """``num_samples`` of a background ``kind`` (:data:`NOISE_KINDS` but ``floor``) at RMS level ``rms``.

    ``white``: Gaussian; ``pink``: power falling as 1/f; ``brown``: as 1/f^2 (integrated white noise,
    mean removed); ``hum``: 50 or 60 Hz and three harmonics with random phases, plus faint white noise.
    """
    if kind == "white":
        noise = rng.standard_normal(num_samples)
    elif kind in ("pink", "brown"):
        spectrum = np.fft.rfft(rng.standard_normal(num_samples))
        freqs = np.fft.rfftfreq(num_samples, 1 / SAMPLE_RATE)
        freqs[0] = freqs[1]
        spectrum /= np.sqrt(freqs) if kind == "pink" else freqs
        spectrum[0] = 0.0
        noise = np.fft.irfft(spectrum, num_samples)
    elif kind == "hum":
        t = np.arange(num_samples) / SAMPLE_RATE
        base = rng.choice([50.0, 60.0])
        noise = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3, 4))
        noise = noise + 0.05 * rng.standard_normal(num_samples)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; use one of {NOISE_KINDS[1:]}")
    return (noise * (rms / max(float(np.sqrt(np.mean(noise**2))), 1e-12))).astype(np.float32)


def _synthesize_speaker(task: SpeakerTask) -> tuple[str, dict[str, int]]:
    """Worker: make one speaker's clips of one split; returns ``(split, clips per label)``."""
    import torch

    from speechcl.audio.io import resample, write_audio
    from speechcl.data.alignments import SIL, alignment_from_events
    from speechcl.data.espeak import Espeak

    torch.set_num_threads(1)
    engine = Espeak()
    rng = random.Random(task.seed)
    noise = np.random.default_rng(task.seed + 1)
    speaker = task.speaker
    rows, counts = [], {}
    for k, clip in enumerate(task.clips):
        clip_wave = np.zeros(CLIP_SAMPLES, dtype=np.float32)
        span = (0, 0)
        if clip.label == SILENCE:
            if clip.heard != "floor":
                clip_wave += background_noise(clip.heard, CLIP_SAMPLES, 10 ** (rng.uniform(-60, -30) / 20), noise)
        else:
            rate = max(80, round(speaker.rate * rng.uniform(0.9, 1.1)))
            raw, events = engine.synthesize_events(clip.heard, speaker.voice, rate, speaker.pitch,
                                                   speaker.pitch_range, seed=k)
            if raw.size == 0:
                raise RuntimeError(f"espeak-ng produced no audio for {clip.heard!r} with voice {speaker.voice}")
            wave = resample(torch.from_numpy(raw.astype(np.float32) / 32768.0), engine.sample_rate, SAMPLE_RATE)
            wave = wave[:CLIP_SAMPLES].numpy()
            wave = wave * (speaker.gain * rng.uniform(0.5, 1.0) / max(float(np.abs(wave).max()), 1e-4))
            offset = rng.randint(0, CLIP_SAMPLES - wave.size)
            clip_wave[offset:offset + wave.size] = wave
            phones = [s for s in alignment_from_events(events, clip.heard, raw.size).phones if s.label != SIL]
            if phones:
                ratio = SAMPLE_RATE / engine.sample_rate
                span = tuple(min(offset + wave.size, offset + round(p * ratio))
                             for p in (phones[0].start, phones[-1].end))
        clip_wave += speaker.noise * noise.standard_normal(CLIP_SAMPLES).astype(np.float32)
        path = clip_path(task.split, clip, speaker)
        os.makedirs(os.path.dirname(os.path.join(task.out, path)), exist_ok=True)
        write_audio(os.path.join(task.out, path), np.clip(clip_wave, -1.0, 1.0), SAMPLE_RATE)
        rows.append(f"{path}\t{clip.label}\t{clip.heard}\t{speaker.id}\t{span[0]}\t{span[1]}")
        counts[clip.label] = counts.get(clip.label, 0) + 1
    marker = _progress_path(task.out, task.split, speaker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_lines(marker, rows)  # last: marks the speaker done
    return task.split, counts


def synthesize_keywords(out: str | os.PathLike, config: KeywordConfig, workers: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> KeywordSummary:
    """Write the keyword corpus described in the module docstring under ``out``.

    Args:
        out: output directory (created; may hold an interrupted run of the same configuration).
        config: what to synthesize.
        workers: parallel worker processes (default: all CPUs).
        progress: called as ``progress(done, total)`` in speaker tasks.

    Raises:
        ValueError: ``out`` holds a keyword corpus made with another configuration.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    speakers = plan_keyword_speakers(config)
    meta = {"config": asdict(config), "labels": list(LABELS), "splits": list(SPLITS),
            "clip_samples": CLIP_SAMPLES, "sample_rate": SAMPLE_RATE, "speakers": [asdict(s) for s in speakers]}
    claim_output(out / "keywords.json", meta, "a keyword corpus made")
    tasks = plan_keywords(config, out)
    summary = KeywordSummary()
    todo = [t for t in tasks if not _progress_path(out, t.split, t.speaker).exists()]
    summary.skipped_speakers = len(tasks) - len(todo)
    summary.synthesized_speakers = len(todo)
    done = summary.skipped_speakers
    if progress:
        progress(done, len(tasks))
    if todo:
        count = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        with fresh_pool(count) as pool:  # fresh espeak-ng state per speaker
            for _ in pool.imap_unordered(_synthesize_speaker, todo):
                done += 1
                if progress:
                    progress(done, len(tasks))
    for split in SPLITS:
        rows = []
        for task in tasks:
            if task.split == split:
                rows += _progress_path(out, split, task.speaker).read_text(encoding="utf-8").splitlines()
        rows.sort()
        write_lines(out / split / "clips.tsv", [CLIPS_HEADER, *rows])
        labels = [row.split("\t")[1] for row in rows]
        summary.clips[split] = {label: labels.count(label) for label in LABELS}
    return summary

