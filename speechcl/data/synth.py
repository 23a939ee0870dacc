"""A synthetic speech corpus in LibriSpeech's layout, spoken by espeak-ng.

``synthesize_corpus(out, SynthConfig(...))`` writes::

    OUT/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac   16 kHz mono 16-bit FLAC
    OUT/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt       "<utt-id> TRANSCRIPT" lines
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

LM text: the counterpart of LibriSpeech's ``librispeech-lm-norm.txt``, sentences of the same generator
from a seed no chapter uses (chapter seeds are below ``2**31``), so the language model knows the domain
(grammar, vocabulary, names) but not the dev/test sentences.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from speechcl.audio.io import SAMPLE_RATE, audio_info, write_audio
from speechcl.utils.io import write_lines

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
    """

    minutes: float = 60.0
    speakers: int = 40
    dev_minutes: float = 5.0
    test_minutes: float = 5.0
    heldout_speakers: int = 8
    seed: int = 0
    train_split: str = DEFAULT_TRAIN_SPLIT
    chapter_minutes: float = 2.0

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
    """One chapter to synthesize in one worker process."""

    speaker: Speaker
    chapter: int
    seconds: float
    text_seed: int
    directory: str


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
                id=ids[position], split=split, sex=sex, voice=voice, rate=rng.randint(130, 200),
                pitch=rng.randint(30, 70), pitch_range=rng.randint(20, 80), gain=round(rng.uniform(0.35, 0.9), 3),
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


def _synthesize_chapter(task: ChapterTask) -> tuple[str, float, int]:
    """Worker: synthesize one chapter into ``task.directory``; returns ``(split, seconds, utterances)``."""
    import torch

    from speechcl.audio.io import resample
    from speechcl.data.espeak import Espeak
    from speechcl.data.text import SentenceGenerator

    torch.set_num_threads(1)
    engine = Espeak()
    texts = SentenceGenerator(task.text_seed)
    jitter = random.Random(task.text_seed + 1)
    noise = np.random.default_rng(task.text_seed + 2)
    speaker = task.speaker
    os.makedirs(task.directory, exist_ok=True)
    lines, total, number = [], 0.0, 0
    while total < task.seconds:
        text = texts.sentence()
        rate = max(80, round(speaker.rate * jitter.uniform(0.95, 1.05)))
        raw = engine.synthesize(text, speaker.voice, rate, speaker.pitch, speaker.pitch_range, seed=number)
        if raw.size == 0:
            raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {speaker.voice}")
        wave = torch.from_numpy(raw.astype(np.float32) / 32768.0)
        wave = resample(wave, engine.sample_rate, SAMPLE_RATE)
        wave = wave * (speaker.gain / max(float(wave.abs().max()), 1e-4))
        # pauses at both ends (espeak-ng leaves almost none) and a faint noise floor, as in read speech
        lead, trail = (round(jitter.uniform(0.1, 0.4) * SAMPLE_RATE) for _ in range(2))
        wave = torch.nn.functional.pad(wave, (lead, trail))
        wave = wave + speaker.noise * torch.from_numpy(noise.standard_normal(wave.numel()).astype(np.float32))
        utt_id = f"{speaker.id}-{task.chapter}-{number:04d}"
        write_audio(os.path.join(task.directory, f"{utt_id}.flac"), wave, SAMPLE_RATE)
        lines.append(f"{utt_id} {text}")
        total += wave.numel() / SAMPLE_RATE
        number += 1
    write_lines(os.path.join(task.directory, f"{speaker.id}-{task.chapter}.trans.txt"), lines)
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
    meta = {"config": asdict(config), "speakers": [asdict(s) for s in speakers]}
    meta_path = out / "synth.json"
    if meta_path.exists():
        previous = json.loads(meta_path.read_text(encoding="utf-8"))
        if previous.get("config") != meta["config"]:
            raise ValueError(f"{out} holds a corpus synthesized with {previous.get('config')}; "
                             "use another output directory or delete it to synthesize a different one")
    else:
        write_lines(meta_path, [json.dumps(meta, indent=1)])

    tasks = plan_chapters(config, out)
    summary = SynthSummary(speakers=speakers)
    results: list[tuple[str, float, int]] = []
    todo = []
    for task in tasks:
        done = _chapter_on_disk(task)
        if done is None:
            todo.append(task)
        else:
            results.append(done)
            summary.skipped_chapters += 1
    if progress:
        progress(len(results), len(tasks))
    summary.synthesized_chapters = len(todo)
    if todo:
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        # a fresh process per chapter: espeak-ng's hidden state must start clean for determinism
        with mp.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
            for result in pool.imap_unordered(_synthesize_chapter, todo):
                results.append(result)
                if progress:
                    progress(len(results), len(tasks))

    for split, seconds, count in results:
        summary.seconds[split] = summary.seconds.get(split, 0.0) + seconds
        summary.utterances[split] = summary.utterances.get(split, 0) + count
    _write_speakers_table(out / "SPEAKERS.TXT", speakers, config)
    return summary


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
