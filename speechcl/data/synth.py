"""A synthetic speech corpus in LibriSpeech's layout, spoken by espeak-ng.

``synthesize_corpus(out, SynthConfig(...))`` writes::

    OUT/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac   16 kHz mono 16-bit FLAC
    OUT/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt       "<utt-id> TRANSCRIPT" lines
    OUT/<split>/<speaker>/<chapter>/<speaker>-<chapter>.align.tsv       word and phone time alignments
    OUT/SPEAKERS.TXT                                                    LibriSpeech-style speaker table
    OUT/synth.json                                                      the configuration and voices
    OUT/lm-text.txt                        (optional, :func:`write_lm_text`) text-only LM training sentences

Splits: the training split (``train-clean-100`` by default, ``minutes`` of audio from ``speakers``
speakers) and ``dev-clean`` / ``test-clean`` (``dev_minutes`` / ``test_minutes`` each, from
``heldout_speakers`` speakers each). The three speaker sets are disjoint, both in speaker id and in
voice, so dev/test measure generalisation to unseen speakers.

A speaker is an espeak-ng voice: an English accent (``en``, ``en-US``, ``en-GB-scotland``, ...) with a
variant (``m3``, ``f2``, ``klatt``, ...), a speaking rate of 130-200 words per minute, a base pitch of
30-70, a pitch range, a loudness and a faint background noise level, all drawn from the seed. Each
utterance gets 0.1-0.4 s of pause at both ends. Text comes from
:class:`speechcl.data.text.SentenceGenerator`, seeded per chapter.

Determinism: the same configuration gives the same files, byte for byte. espeak-ng carries hidden
state from one utterance to the next, so each chapter is synthesized in a freshly forked worker
process from a fixed utterance sequence. A chapter is complete once its ``.trans.txt`` exists (written
last, atomically), so an interrupted run resumes by skipping complete chapters.

Audio durations: every chapter synthesizes utterances until it reaches its share of the split's
minutes, so a split holds its requested duration to within one utterance per chapter.

Alignments: each chapter's ``.align.tsv`` holds every utterance's word and phone segments in samples
of its FLAC file, taken from espeak-ng's own synthesis events (phoneme starts reported while speaking,
shifted by the leading pause and mapped from 22050 Hz to 16 kHz); format and labels in
:mod:`speechcl.data.alignments`. Collecting the events does not change the audio.

Condition-shifted test splits (``conditions=True``, ``speechcl synth --conditions``), for measuring
dataset bias: a reference split and splits that differ from it in exactly one condition, all in the
same LibriSpeech layout (with alignments), described in ``OUT/conditions.json``:

=======================  ======================================================================
split                    what it is
=======================  ======================================================================
``test-voices-seen``     the reference: the training speakers (voice, rate, pitch, loudness,
                         noise floor as in training) reading new sentences
``test-voices-unseen``   the same sentences read by the held-out test-clean speakers (voices and
                         prosody never heard in training; dev-clean's when there is no test-clean)
``test-fast``            the reference at 1.5 times the speaker's rate (about 185-315 words/min;
                         training 124-210)
``test-slow``            the reference at 0.65 times the speaker's rate (80-137 words/min)
``test-high-pitch``      the reference with base pitch mapped from 30-70 to 85-99
``test-noisy``           the reference plus white Gaussian noise at 10 dB SNR (speech power over
                         the spoken part; samples clipped to [-1, 1])
=======================  ======================================================================

Every condition split holds the reference's utterances in the same order: the same sentences, the
same pauses and noise floor, the same chapter and utterance numbers (``test-voices-unseen``: another
speaker id), so a test on two of them differs in its one condition only; ``test-noisy`` is the
reference's audio plus noise, sample for sample. The reference has ``condition_minutes`` of audio
(default: ``test_minutes``) over all training speakers.

LM text: the counterpart of LibriSpeech's ``librispeech-lm-norm.txt``, sentences of the same generator
from a seed no chapter uses (chapter seeds are below ``2**31``), so the language model knows the domain
(grammar, vocabulary, names) but not the dev/test sentences.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from speechcl.audio.io import SAMPLE_RATE, audio_info, write_audio
from speechcl.data.espeak import fresh_pool
from speechcl.utils.io import atomic_write_json, write_lines

ACCENTS: tuple[str, ...] = (
    "en", "en-US", "en-GB-scotland", "en-GB-x-rp", "en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-029", "en-US-nyc",
)
MALE_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2", "klatt3", "adam", "Alex", "Andy",
    "benjamin", "david", "ed", "edward", "john", "max", "michael", "paul", "robert", "travis", "grandpa",
    "iven", "norbert", "quincy", "rob", "Lee", "Mike", "Gene",
)
FEMALE_VARIANTS: tuple[str, ...] = (
    "f1", "f2", "f3", "f4", "f5", "Annie", "anika", "linda", "steph", "aunty", "Alicia", "Andrea",
    "belinda", "shelby",
)

RATE_RANGE = (130, 200)
"""Speakers' speaking rates in words per minute (each utterance then varies it by up to 5%)."""
PITCH_RANGE = (30, 70)
"""Speakers' base pitches (espeak-ng's 0-100 scale)."""

DEFAULT_TRAIN_SPLIT = "train-clean-100"
DEV_SPLIT = "dev-clean"
TEST_SPLIT = "test-clean"


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesize.

    Attributes:
        minutes: minutes of audio in the training split.
        speakers: number of training speakers.
        dev_minutes: minutes in ``dev-clean`` (0 skips the split).
        test_minutes: minutes in ``test-clean`` (0 skips the split).
        heldout_speakers: speakers in each of dev and test (disjoint from training and each other).
        seed: seeds voices, speaker ids and text.
        train_split: name of the training split directory.
        chapter_minutes: the longest chapter; a speaker's audio is cut into chapters of at most this.
        conditions: also write the condition-shifted test splits (module docstring).
        condition_minutes: minutes of the reference condition split (None: ``test_minutes``).
    """

    minutes: float = 60.0
    speakers: int = 40
    dev_minutes: float = 5.0
    test_minutes: float = 5.0
    heldout_speakers: int = 8
    seed: int = 0
    train_split: str = DEFAULT_TRAIN_SPLIT
    chapter_minutes: float = 2.0
    conditions: bool = False
    condition_minutes: float | None = None

    def __post_init__(self) -> None:
        for name in ("minutes", "dev_minutes", "test_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.speakers < 1 or self.heldout_speakers < 1:
            raise ValueError(f"need at least one speaker per split, got speakers={self.speakers}, "
                             f"heldout_speakers={self.heldout_speakers}")
        if self.chapter_minutes <= 0:
            raise ValueError(f"chapter_minutes must be > 0, got {self.chapter_minutes}")
        if self.train_split in (DEV_SPLIT, TEST_SPLIT) or "/" in self.train_split:
            raise ValueError(f"train_split must be a plain name other than dev/test, got {self.train_split!r}")
        if self.speakers + 2 * self.heldout_speakers > len(ACCENTS) * (len(MALE_VARIANTS) + len(FEMALE_VARIANTS)):
            raise ValueError("too many speakers: there are only "
                             f"{len(ACCENTS) * (len(MALE_VARIANTS) + len(FEMALE_VARIANTS))} distinct voices")
        if self.conditions:
            if self.minutes <= 0 or (self.test_minutes <= 0 and self.dev_minutes <= 0):
                raise ValueError("conditions need training speakers (minutes > 0) and held-out ones "
                                 "(test_minutes or dev_minutes > 0)")
            if self.reference_minutes() <= 0:
                raise ValueError(f"condition_minutes must be > 0, got {self.condition_minutes}")

    def reference_minutes(self) -> float:
        """Minutes of the reference condition split (``condition_minutes``, by default ``test_minutes``)."""
        return self.test_minutes if self.condition_minutes is None else self.condition_minutes

    def record(self) -> dict:
        """The configuration as stored in ``synth.json``: the condition fields only when conditions are
        on, so a corpus made before they existed (or without them) keeps its record."""
        values = asdict(self)
        if not self.conditions:
            del values["conditions"], values["condition_minutes"]
        return values

    def split_plan(self) -> list[tuple[str, float, int]]:
        """``(split, minutes, speakers)`` for each split with minutes > 0."""
        splits = [(self.train_split, self.minutes, self.speakers), (DEV_SPLIT, self.dev_minutes, self.heldout_speakers),
                  (TEST_SPLIT, self.test_minutes, self.heldout_speakers)]
        return [s for s in splits if s[1] > 0]


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice with its own prosody.

    Attributes:
        id: LibriSpeech-style numeric speaker id.
        split: the split the speaker belongs to.
        sex: ``"M"`` or ``"F"`` (from the espeak-ng variant).
        voice: espeak-ng voice name, e.g. ``"en-GB-scotland+f2"``.
        rate: words per minute (130-200).
        pitch: base pitch (30-70).
        pitch_range: pitch range (20-80).
        gain: peak amplitude of every utterance (0.35-0.9).
        noise: standard deviation of the background noise (0.0001-0.0006, about -80 dB to -64 dB).
    """

    id: int
    split: str
    sex: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    gain: float
    noise: float


@dataclass(frozen=True)
class ChapterTask:
    """One chapter to synthesize in one worker process.

    Attributes:
        speaker: who speaks (the split is ``speaker.split``).
        chapter: chapter number.
        seconds: synthesize generated sentences until the chapter holds this much audio.
        text_seed: seeds the sentences, the pauses, the rate jitter and the noise.
        directory: the chapter's directory.
        texts: speak exactly these sentences instead (a condition split repeating its reference).
        snr_db: add white noise at this signal-to-noise ratio (a noisy condition split).
    """

    speaker: Speaker
    chapter: int
    seconds: float
    text_seed: int
    directory: str
    texts: tuple[str, ...] | None = None
    snr_db: float | None = None


@dataclass(frozen=True)
class Condition:
    """A condition-shifted test split: the reference split's utterances with one thing changed.

    Attributes:
        name: split name.
        changes: what differs from the reference: ``"nothing"``, ``"voice"``, ``"rate"``, ``"pitch"``
            or ``"noise"``.
        description: one sentence for ``conditions.json``.
        rate_factor: speaking rate multiplier.
        pitch_to: base pitch mapped linearly from the training range 30-70 onto this range.
        heldout_voices: spoken by the held-out speakers instead of the training speakers.
        snr_db: white Gaussian noise added at this SNR.
    """

    name: str
    changes: str
    description: str
    rate_factor: float = 1.0
    pitch_to: tuple[int, int] | None = None
    heldout_voices: bool = False
    snr_db: float | None = None


REFERENCE_CONDITION = "test-voices-seen"
CONDITIONS: tuple[Condition, ...] = (
    Condition(REFERENCE_CONDITION, "nothing", "training speakers as in training, reading new sentences: the reference "
              "every other condition split differs from in one condition"),
    Condition("test-voices-unseen", "voice", "the reference's sentences read by held-out speakers (voices and prosody "
              "never heard in training)", heldout_voices=True),
    Condition("test-fast", "rate", "the reference at 1.5 times each speaker's rate", rate_factor=1.5),
    Condition("test-slow", "rate", "the reference at 0.65 times each speaker's rate", rate_factor=0.65),
    Condition("test-high-pitch", "pitch", "the reference with base pitch mapped from the training range 30-70 to "
              "85-99", pitch_to=(85, 99)),
    Condition("test-noisy", "noise", "the reference plus white Gaussian noise at 10 dB SNR (speech power over the "
              "spoken part; samples clipped to [-1, 1])", snr_db=10.0),
)


@dataclass
class SynthSummary:
    """What :func:`synthesize_corpus` produced: seconds and utterances per split."""

    seconds: dict[str, float] = field(default_factory=dict)
    utterances: dict[str, int] = field(default_factory=dict)
    speakers: list[Speaker] = field(default_factory=list)
    skipped_chapters: int = 0
    synthesized_chapters: int = 0


def plan_speakers(config: SynthConfig) -> list[Speaker]:
    """Draw every split's speakers from the seed; ids and voices are distinct across all splits."""
    rng = random.Random(f"speakers-{config.seed}")
    voices = [(f"{accent}+{variant}", "M") for accent in ACCENTS for variant in MALE_VARIANTS]
    voices += [(f"{accent}+{variant}", "F") for accent in ACCENTS for variant in FEMALE_VARIANTS]
    # interleave sexes so that any prefix is roughly balanced
    males = [v for v in voices if v[1] == "M"]
    females = [v for v in voices if v[1] == "F"]
    rng.shuffle(males)
    rng.shuffle(females)
    ordered = []
    while males or females:
        for pool in (males, females):
            if pool:
                ordered.append(pool.pop())
    total = sum(n for _, _, n in config.split_plan())
    ids = sorted(rng.sample(range(100, 10_000), total))
    rng.shuffle(ids)
    speakers = []
    position = 0
    for split, _, count in config.split_plan():
        for _ in range(count):
            voice, sex = ordered[position]
            speakers.append(Speaker(
                id=ids[position], split=split, sex=sex, voice=voice, rate=rng.randint(*RATE_RANGE),
                pitch=rng.randint(*PITCH_RANGE), pitch_range=rng.randint(20, 80), gain=round(rng.uniform(0.35, 0.9), 3),
                noise=round(rng.uniform(0.0001, 0.0006), 5),
            ))
            position += 1
    return speakers


def plan_chapters(config: SynthConfig, out: str | os.PathLike) -> list[ChapterTask]:
    """Split each speaker's share of its split's minutes into chapters (pure; seeded by ``config.seed``)."""
    rng = random.Random(f"chapters-{config.seed}")
    used: set[int] = set()
    tasks = []
    speakers = plan_speakers(config)
    minutes = {split: m for split, m, _ in config.split_plan()}
    counts = {split: n for split, _, n in config.split_plan()}
    for speaker in speakers:
        seconds = minutes[speaker.split] * 60.0 / counts[speaker.split]
        num_chapters = max(1, math.ceil(seconds / (config.chapter_minutes * 60.0)))
        for _ in range(num_chapters):
            chapter = rng.randrange(1_000, 300_000)
            while chapter in used:
                chapter = rng.randrange(1_000, 300_000)
            used.add(chapter)
            directory = os.path.join(str(out), speaker.split, str(speaker.id), str(chapter))
            tasks.append(ChapterTask(speaker, chapter, seconds / num_chapters, rng.randrange(2**31), directory))
    return tasks


def plan_condition_chapters(config: SynthConfig, out: str | os.PathLike) -> list[ChapterTask]:
    """The reference condition split's chapters: every training speaker reads its share of
    ``config.reference_minutes()``, with chapter numbers and text seeds no other chapter uses (pure)."""
    main = plan_chapters(config, out)
    used = {t.chapter for t in main}
    seeds = {t.text_seed for t in main}
    rng = random.Random(f"conditions-{config.seed}")
    train = [s for s in plan_speakers(config) if s.split == config.train_split]
    seconds = config.reference_minutes() * 60.0 / len(train)
    num_chapters = max(1, math.ceil(seconds / (config.chapter_minutes * 60.0)))
    tasks = []
    for speaker in train:
        for _ in range(num_chapters):
            chapter = rng.randrange(1_000, 300_000)
            while chapter in used:
                chapter = rng.randrange(1_000, 300_000)
            used.add(chapter)
            seed = rng.randrange(2**31)
            while seed in seeds:
                seed = rng.randrange(2**31)
            seeds.add(seed)
            reference = replace(speaker, split=REFERENCE_CONDITION)
            directory = os.path.join(str(out), REFERENCE_CONDITION, str(speaker.id), str(chapter))
            tasks.append(ChapterTask(reference, chapter, seconds / num_chapters, seed, directory))
    return tasks


def heldout_voices(config: SynthConfig) -> list[Speaker]:
    """The speakers ``test-voices-unseen`` uses: test-clean's, or dev-clean's when there is no test-clean."""
    speakers = plan_speakers(config)
    return [s for s in speakers if s.split == TEST_SPLIT] or [s for s in speakers if s.split == DEV_SPLIT]


def condition_chapter(reference: ChapterTask, texts: Sequence[str], condition: Condition, speaker_index: int,
                      heldout: Sequence[Speaker], out: str | os.PathLike) -> ChapterTask:
    """The chapter of ``condition`` that repeats the reference chapter's sentences ``texts``; the reference
    speaker is training speaker number ``speaker_index`` and reads as ``heldout[speaker_index % len]``
    in the unseen-voices split."""
    speaker = reference.speaker
    if condition.heldout_voices:
        speaker = heldout[speaker_index % len(heldout)]
    speaker = replace(speaker, split=condition.name, rate=round(speaker.rate * condition.rate_factor))
    if condition.pitch_to is not None:
        low, high = condition.pitch_to
        base_low, base_high = PITCH_RANGE
        speaker = replace(speaker, pitch=low + round((speaker.pitch - base_low) * (high - low) / (base_high - base_low)))
    directory = os.path.join(str(out), condition.name, str(speaker.id), str(reference.chapter))
    return ChapterTask(speaker, reference.chapter, 0.0, reference.text_seed, directory, texts=tuple(texts),
                       snr_db=condition.snr_db)


def _synthesize_chapter(task: ChapterTask) -> tuple[str, float, int]:
    """Worker: synthesize one chapter into ``task.directory``; returns ``(split, seconds, utterances)``."""
    import torch

    from speechcl.audio.io import resample
    from speechcl.data.alignments import alignment_from_events, alignment_path, rescale, write_alignments
    from speechcl.data.espeak import Espeak
    from speechcl.data.text import SentenceGenerator

    torch.set_num_threads(1)
    engine = Espeak()
    texts = SentenceGenerator(task.text_seed)
    jitter = random.Random(task.text_seed + 1)
    noise = np.random.default_rng(task.text_seed + 2)
    extra_noise = np.random.default_rng(task.text_seed + 3)
    speaker = task.speaker
    os.makedirs(task.directory, exist_ok=True)
    lines, total, number = [], 0.0, 0
    alignments = []
    while (total < task.seconds) if task.texts is None else (number < len(task.texts)):
        text = texts.sentence() if task.texts is None else task.texts[number]
        rate = max(80, round(speaker.rate * jitter.uniform(0.95, 1.05)))
        raw, events = engine.synthesize_events(text, speaker.voice, rate, speaker.pitch, speaker.pitch_range,
                                               seed=number)
        if raw.size == 0:
            raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {speaker.voice}")
        wave = torch.from_numpy(raw.astype(np.float32) / 32768.0)
        wave = resample(wave, engine.sample_rate, SAMPLE_RATE)
        wave = wave * (speaker.gain / max(float(wave.abs().max()), 1e-4))
        # pauses at both ends (espeak-ng leaves almost none) and a faint noise floor, as in read speech
        lead, trail = (round(jitter.uniform(0.1, 0.4) * SAMPLE_RATE) for _ in range(2))
        wave = torch.nn.functional.pad(wave, (lead, trail))
        wave = wave + speaker.noise * torch.from_numpy(noise.standard_normal(wave.numel()).astype(np.float32))
        if task.snr_db is not None:
            speech = wave[lead:wave.numel() - trail]
            std = math.sqrt(float(speech.square().mean()) / 10 ** (task.snr_db / 10))
            wave = wave + std * torch.from_numpy(extra_noise.standard_normal(wave.numel()).astype(np.float32))
            wave = wave.clamp(-1.0, 1.0)
        utt_id = f"{speaker.id}-{task.chapter}-{number:04d}"
        write_audio(os.path.join(task.directory, f"{utt_id}.flac"), wave, SAMPLE_RATE)
        alignment = alignment_from_events(events, text, raw.size)
        alignments.append((utt_id, rescale(alignment, engine.sample_rate, SAMPLE_RATE, lead, wave.numel())))
        lines.append(f"{utt_id} {text}")
        total += wave.numel() / SAMPLE_RATE
        number += 1
    trans = os.path.join(task.directory, f"{speaker.id}-{task.chapter}.trans.txt")
    write_alignments(alignment_path(trans), alignments)  # before the transcript, which marks the chapter done
    write_lines(trans, lines)
    return speaker.split, total, number


def _chapter_on_disk(task: ChapterTask) -> tuple[str, float, int] | None:
    """``(split, seconds, utterances)`` of an already complete chapter, or None."""
    trans = os.path.join(task.directory, f"{task.speaker.id}-{task.chapter}.trans.txt")
    if not os.path.exists(trans):
        return None
    with open(trans, encoding="utf-8") as handle:
        ids = [line.split(" ", 1)[0] for line in handle if line.strip()]
    seconds = sum(audio_info(os.path.join(task.directory, f"{i}.flac")).duration for i in ids)
    return task.speaker.split, seconds, len(ids)


def synthesize_corpus(out: str | os.PathLike, config: SynthConfig, workers: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Write the corpus described in the module docstring under ``out``.

    Args:
        out: output directory (created; may hold a previous, interrupted run of the same config).
        config: what to synthesize.
        workers: parallel worker processes (default: all CPUs).
        progress: called as ``progress(done_chapters, total_chapters)``.

    Raises:
        ValueError: ``out`` holds a corpus made with a different configuration.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    speakers = plan_speakers(config)
    claim_output(out / "synth.json", {"config": config.record(), "speakers": [asdict(s) for s in speakers]},
                 "a corpus synthesized")

    tasks = plan_chapters(config, out)
    references = plan_condition_chapters(config, out) if config.conditions else []
    derived = len(references) * (len(CONDITIONS) - 1)
    summary = SynthSummary(speakers=speakers)
    results: list[tuple[str, float, int]] = []
    total = len(tasks) + len(references) + derived

    def run(chapters: Sequence[ChapterTask]) -> None:
        todo = []
        for task in chapters:
            done = _chapter_on_disk(task)
            if done is None:
                todo.append(task)
            else:
                results.append(done)
                summary.skipped_chapters += 1
        if progress:
            progress(len(results), total)
        summary.synthesized_chapters += len(todo)
        if todo:
            count = max(1, min(workers or os.cpu_count() or 1, len(todo)))
            # a fresh process per chapter: espeak-ng's hidden state must start clean for determinism
            with fresh_pool(count) as pool:
                for result in pool.imap_unordered(_synthesize_chapter, todo):
                    results.append(result)
                    if progress:
                        progress(len(results), total)

    run(tasks + references)
    if references:
        # the other condition splits repeat the reference's sentences, known once it is written
        heldout = heldout_voices(config)
        index = {s.id: i for i, s in enumerate(s for s in speakers if s.split == config.train_split)}
        shifted = []
        for reference in references:
            texts = [text for _, text in _read_trans(reference)]
            shifted += [condition_chapter(reference, texts, condition, index[reference.speaker.id], heldout, out)
                        for condition in CONDITIONS[1:]]
        run(shifted)
        _write_conditions(out / "conditions.json", config, references, shifted)

    for split, seconds, count in results:
        summary.seconds[split] = summary.seconds.get(split, 0.0) + seconds
        summary.utterances[split] = summary.utterances.get(split, 0) + count
    _write_speakers_table(out / "SPEAKERS.TXT", speakers, config)
    return summary


def claim_output(meta_path: Path, meta: dict, made: str) -> None:
    """Write ``meta`` (with its ``"config"``) to ``meta_path``, or check that the one there has the same
    configuration, so that a rerun resumes the same corpus and never mixes two.

    Raises:
        ValueError: the directory holds output ``made`` (e.g. "a corpus synthesized") with another configuration.
    """
    if meta_path.exists():
        previous = json.loads(meta_path.read_text(encoding="utf-8"))
        if previous.get("config") != meta["config"]:
            raise ValueError(f"{meta_path.parent} holds {made} with {previous.get('config')}; "
                             "use another output directory or delete it to make a different one")
    else:
        write_lines(meta_path, [json.dumps(meta, indent=1)])


def _read_trans(task: ChapterTask) -> list[tuple[str, str]]:
    """``(utt_id, text)`` lines of a written chapter."""
    trans = os.path.join(task.directory, f"{task.speaker.id}-{task.chapter}.trans.txt")
    with open(trans, encoding="utf-8") as handle:
        return [tuple(line.rstrip("\n").split(" ", 1)) for line in handle if line.strip()]  # type: ignore[misc]


def _write_conditions(path: Path, config: SynthConfig, references: Sequence[ChapterTask],
                      shifted: Sequence[ChapterTask]) -> None:
    """``conditions.json``: what each condition split changes, its speakers and its settings."""
    splits = {}
    for condition in CONDITIONS:
        chapters = references if condition.name == REFERENCE_CONDITION else \
            [t for t in shifted if t.speaker.split == condition.name]
        entry: dict = {"changes": condition.changes, "description": condition.description,
                       "speakers": sorted({t.speaker.id for t in chapters}),
                       "utterances": sum(len(_read_trans(t)) for t in chapters)}
        if condition.rate_factor != 1.0:
            entry["rate_factor"] = condition.rate_factor
        if condition.pitch_to is not None:
            entry["pitch"] = list(condition.pitch_to)
        if condition.snr_db is not None:
            entry["snr_db"] = condition.snr_db
            entry["noise"] = "white Gaussian"
        if condition.heldout_voices:
            entry["voice_of"] = {str(r.speaker.id): t.speaker.id for r, t in
                                 zip(references, [t for t in shifted if t.speaker.split == condition.name])}
        splits[condition.name] = entry
    atomic_write_json(path, {
        "reference": REFERENCE_CONDITION, "training_split": config.train_split,
        "reference_minutes": config.reference_minutes(),
        "training_ranges": {"rate_words_per_minute": list(RATE_RANGE), "rate_jitter_per_utterance": 0.05,
                            "pitch": list(PITCH_RANGE)},
        "pairing": "every split holds the reference's utterances in order: same sentences, pauses, noise floor, "
                   "chapter and utterance numbers; test-voices-unseen has other speaker ids",
        "splits": splits,
    })


def write_lm_text(out: str | os.PathLike, sentences: int, seed: int = 0) -> Path:
    """Write ``sentences`` generated sentences, one per line, to ``out/lm-text.txt`` (atomically) for a
    word language model; returns the path. Seeded apart from every chapter's text (module docstring)."""
    from speechcl.data.text import SentenceGenerator

    if sentences < 1:
        raise ValueError(f"sentences must be >= 1, got {sentences}")
    generator = SentenceGenerator(2**31 + seed)
    path = Path(out) / "lm-text.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lines(path, [generator.sentence() for _ in range(sentences)])
    return path


def _write_speakers_table(path: Path, speakers: list[Speaker], config: SynthConfig) -> None:
    minutes = {split: m for split, m, _ in config.split_plan()}
    counts = {split: n for split, _, n in config.split_plan()}
    lines = [
        "; Synthetic speakers spoken by espeak-ng (speechcl synth), in LibriSpeech's SPEAKERS.TXT format.",
        "; NAME is the espeak-ng voice with its rate (words/min), pitch and range; MINUTES is the planned share.",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for s in speakers:
        share = minutes[s.split] / counts[s.split]
        lines.append(f"{s.id:<5}| {s.sex} | {s.split:<17}| {share:5.2f} | {s.voice} rate={s.rate} "
                     f"pitch={s.pitch} range={s.pitch_range}")
    write_lines(path, lines)
