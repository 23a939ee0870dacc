"""Condition-shifted test splits of the synthetic corpus (``speechcl synth --conditions``)."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcl.data.alignments import SIL, alignment_path, read_alignments
from speechcl.data.labels import read_lines
from speechcl.data.prepare import prepare_librispeech
from speechcl.data.synth import (
    CONDITIONS,
    PITCH_RANGE,
    REFERENCE_CONDITION,
    TEST_SPLIT,
    SynthConfig,
    plan_speakers,
    synthesize_corpus,
)

CONFIG = SynthConfig(minutes=0.2, speakers=2, dev_minutes=0, test_minutes=0.1, heldout_speakers=1, seed=4,
                     chapter_minutes=0.5, conditions=True, condition_minutes=0.15)
NAMES = [c.name for c in CONDITIONS]


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conditions") / "corpus"
    synthesize_corpus(out, CONFIG, workers=2)
    return out


def _utterances(root: Path, split: str) -> list[tuple[str, str, Path]]:
    """``(utt_id, text, flac)`` of a split, ordered by (chapter, utterance number)."""
    out = []
    for trans in (root / split).rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            out.append((utt_id, text, trans.parent / f"{utt_id}.flac"))
    return sorted(out, key=lambda u: u[0].split("-", 1)[1])


def _wave(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float64")[0]


def test_splits_and_description(shifted):
    splits = {p.name for p in shifted.iterdir() if p.is_dir()}
    assert splits == {CONFIG.train_split, TEST_SPLIT, *NAMES}
    assert NAMES == ["test-voices-seen", "test-voices-unseen", "test-fast", "test-slow", "test-high-pitch",
                     "test-noisy"]
    info = json.loads((shifted / "conditions.json").read_text())
    assert info["reference"] == REFERENCE_CONDITION and list(info["splits"]) == NAMES
    assert [info["splits"][n]["changes"] for n in NAMES] == ["nothing", "voice", "rate", "rate", "pitch", "noise"]
    speakers = plan_speakers(CONFIG)
    train = sorted(s.id for s in speakers if s.split == CONFIG.train_split)
    test = sorted(s.id for s in speakers if s.split == TEST_SPLIT)
    for name in NAMES:
        entry = info["splits"][name]
        assert entry["speakers"] == (test if name == "test-voices-unseen" else train)
        assert entry["utterances"] == len(_utterances(shifted, name)) > 0
    assert info["splits"]["test-noisy"]["snr_db"] == 10.0
    assert info["splits"]["test-fast"]["rate_factor"] > 1 > info["splits"]["test-slow"]["rate_factor"]
    assert set(info["splits"]["test-voices-unseen"]["voice_of"].values()) == set(test)
    seconds = sum(sf.info(f).duration for _, _, f in _utterances(shifted, REFERENCE_CONDITION))
    assert CONFIG.condition_minutes * 60 <= seconds <= CONFIG.condition_minutes * 60 + 40


def test_every_split_repeats_the_reference(shifted):
    reference = _utterances(shifted, REFERENCE_CONDITION)
    for name in NAMES[1:]:
        other = _utterances(shifted, name)
        assert [t for _, t, _ in other] == [t for _, t, _ in reference]
        same_ids = [u[0].split("-", 1)[1] for u in other] == [u[0].split("-", 1)[1] for u in reference]
        assert same_ids  # chapter and utterance numbers match
        if name != "test-voices-unseen":
            assert [u[0] for u in other] == [u[0] for u in reference]
        for (_, _, a), (_, _, b) in zip(reference, other):
            assert _wave(a).tobytes() != _wave(b).tobytes()
        for trans in (shifted / name).rglob("*.trans.txt"):  # with alignments, like every split
            assert set(read_alignments(alignment_path(trans))) == {line.split(" ")[0]
                                                                  for line in trans.read_text().splitlines()}


def test_noisy_is_the_reference_plus_noise_at_the_stated_snr(shifted):
    for (utt_id, _, clean), (_, _, noisy) in zip(_utterances(shifted, REFERENCE_CONDITION),
                                                 _utterances(shifted, "test-noisy")):
        x, y = _wave(clean), _wave(noisy)
        assert x.size == y.size
        alignment = read_alignments(alignment_path(next(clean.parent.glob("*.trans.txt"))))[utt_id]
        start = next(p.start for p in alignment.phones if p.label != SIL)
        end = max(p.end for p in alignment.phones if p.label != SIL)
        snr = 10 * np.log10(np.mean(x[start:end] ** 2) / np.mean((y - x) ** 2))
        assert 8.5 < snr < 11.5, snr  # 10 dB over the spoken part (pauses at both ends make it a little higher)


def _speech_seconds(root: Path, split: str) -> float:
    total = 0
    for trans in (root / split).rglob("*.trans.txt"):
        for alignment in read_alignments(alignment_path(trans)).values():
            total += sum(p.end - p.start for p in alignment.phones if p.label != SIL)
    return total / 16000


def _median_f0(root: Path, split: str) -> float:
    """Median autocorrelation pitch over the longest vowels (espeak-ng vowel mnemonics hold a vowel letter)."""
    f0 = []
    for utt_id, _, flac in _utterances(root, split):
        wave = _wave(flac)
        alignment = read_alignments(alignment_path(next(flac.parent.glob("*.trans.txt"))))[utt_id]
        vowels = sorted((p for p in alignment.phones if p.label[0] in "aeiouAEIOUV@3" and p.end - p.start > 1200),
                        key=lambda p: p.start - p.end)[:5]
        for p in vowels:
            seg = wave[p.start:p.end] - wave[p.start:p.end].mean()
            ac = np.correlate(seg, seg, "full")[seg.size - 1:]
            low, high = 16000 // 500, 16000 // 60  # 60-500 Hz
            f0.append(16000 / (low + int(np.argmax(ac[low:high]))))
    return float(np.median(f0))


def test_rate_and_pitch_change_as_stated(shifted):
    seen = _speech_seconds(shifted, REFERENCE_CONDITION)
    assert _speech_seconds(shifted, "test-fast") < 0.8 * seen
    assert _speech_seconds(shifted, "test-slow") > 1.2 * seen
    assert _median_f0(shifted, "test-high-pitch") > 1.2 * _median_f0(shifted, REFERENCE_CONDITION)


def test_main_splits_unchanged_by_conditions(shifted, tmp_path):
    plain = tmp_path / "plain"
    synthesize_corpus(plain, replace(CONFIG, conditions=False, condition_minutes=None), workers=2)

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for split in (CONFIG.train_split, TEST_SPLIT) for p in sorted((root / split).rglob("*")) if p.is_file()}

    assert digest(plain) == digest(shifted)
    record = json.loads((plain / "synth.json").read_text())["config"]
    assert "conditions" not in record and "condition_minutes" not in record  # as before conditions existed
    assert json.loads((shifted / "synth.json").read_text())["config"]["conditions"] is True
    assert (plain / "SPEAKERS.TXT").read_bytes() == (shifted / "SPEAKERS.TXT").read_bytes()


def test_prepare_handles_condition_splits(shifted, tmp_path):
    result = prepare_librispeech(shifted, tmp_path)
    assert not result.report
    for name in NAMES:
        n = result.items[name]
        assert len(read_lines(tmp_path / f"{name}.phn_frames")) == len(read_lines(tmp_path / f"{name}.spk")) == n
    assert read_lines(tmp_path / "test-noisy.phn") == read_lines(tmp_path / f"{REFERENCE_CONDITION}.phn")


def test_resume_and_config_checks(shifted, tmp_path):
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(shifted, out)
    trans = sorted((out / "test-fast").rglob("*.trans.txt"))[0]
    flac = next(trans.parent.glob("*.flac"))
    before = flac.read_bytes()
    trans.unlink()
    flac.unlink()
    summary = synthesize_corpus(out, CONFIG, workers=1)
    assert summary.synthesized_chapters == 1 and flac.read_bytes() == before
    with pytest.raises(ValueError, match="held-out"):
        SynthConfig(conditions=True, dev_minutes=0, test_minutes=0)
    with pytest.raises(ValueError, match="condition_minutes"):
        SynthConfig(conditions=True, condition_minutes=0)
    assert PITCH_RANGE == (30, 70)


def test_cli_conditions(tmp_path, capsys):
    from speechcl.cli import main

    out = tmp_path / "c"
    assert main(["synth", str(out), "--minutes", "0.1", "--speakers", "1", "--dev-minutes", "0", "--test-minutes",
                 "0.05", "--heldout-speakers", "1", "--seed", "2", "--conditions", "--condition-minutes", "0.05",
                 "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{name}:" in printed for name in NAMES)
    assert (out / "conditions.json").exists()
