import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
import soundfile as sf

from speechcl.data.synth import (
    DEV_SPLIT,
    TEST_SPLIT,
    SynthConfig,
    plan_chapters,
    plan_speakers,
    synthesize_corpus,
    write_lm_text,
)
from speechcl.data.text import SentenceGenerator, build_vocabulary

from .conftest import SMALL

TINY = SynthConfig(minutes=0.3, speakers=2, dev_minutes=0.15, test_minutes=0.15, heldout_speakers=1, seed=11,
                   chapter_minutes=0.2)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_audio_format(corpus):
    splits = sorted(p.name for p in corpus.iterdir() if p.is_dir())
    assert splits == sorted([SMALL.train_split, DEV_SPLIT, TEST_SPLIT])
    for split in splits:
        chapters = list((corpus / split).glob("*/*"))
        assert chapters
        for chapter in chapters:
            speaker = chapter.parent.name
            trans = chapter / f"{speaker}-{chapter.name}.trans.txt"
            lines = trans.read_text().splitlines()
            ids = [line.split(" ", 1)[0] for line in lines]
            flacs = sorted(p.stem for p in chapter.glob("*.flac"))
            assert sorted(ids) == flacs
            for utt_id in ids:
                assert re.fullmatch(rf"{speaker}-{chapter.name}-\d{{4}}", utt_id)
            for line in lines:
                text = line.split(" ", 1)[1]
                assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", text)
                assert 4 <= len(text.split()) <= 25
            info = sf.info(chapter / f"{ids[0]}.flac")
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
    assert (corpus / "SPEAKERS.TXT").exists() and (corpus / "synth.json").exists()


def test_durations_follow_minutes(corpus):
    for split, minutes in ((SMALL.train_split, SMALL.minutes), (DEV_SPLIT, SMALL.dev_minutes)):
        seconds = sum(sf.info(p).duration for p in (corpus / split).rglob("*.flac"))
        assert minutes * 60 <= seconds <= minutes * 60 + 40  # overshoot < one utterance per chapter


def test_heldout_speakers_are_disjoint(corpus):
    speakers = plan_speakers(SMALL)
    by_split = {}
    for s in speakers:
        by_split.setdefault(s.split, []).append(s)
    assert {k: len(v) for k, v in by_split.items()} == {SMALL.train_split: 4, DEV_SPLIT: 2, TEST_SPLIT: 2}
    ids = [s.id for s in speakers]
    voices = [s.voice for s in speakers]
    assert len(set(ids)) == len(ids) and len(set(voices)) == len(voices)
    on_disk = {split: {p.name for p in (corpus / split).iterdir()} for split in by_split}
    assert on_disk[SMALL.train_split].isdisjoint(on_disk[DEV_SPLIT] | on_disk[TEST_SPLIT])
    assert on_disk[DEV_SPLIT].isdisjoint(on_disk[TEST_SPLIT])
    for s in speakers:
        assert 130 <= s.rate <= 200 and 30 <= s.pitch <= 70 and s.voice.startswith("en")


def test_voices_are_varied():
    speakers = plan_speakers(SynthConfig(speakers=40, heldout_speakers=8))
    assert len({s.voice.split("+")[0] for s in speakers}) >= 6  # accents
    assert len({s.voice.split("+")[1] for s in speakers}) >= 20  # variants
    assert {s.sex for s in speakers} == {"M", "F"}


def test_deterministic_and_resumable(tmp_path):
    synthesize_corpus(tmp_path / "a", TINY, workers=2)
    synthesize_corpus(tmp_path / "b", TINY, workers=1)
    first = _digest(tmp_path / "a")
    assert first == _digest(tmp_path / "b")  # same bytes, whatever the worker count
    # interrupt: one chapter lost its transcript (written last) and an audio file
    trans = sorted((tmp_path / "a").rglob("*.trans.txt"))[0]
    trans.unlink()
    next(trans.parent.glob("*.flac")).unlink()
    summary = synthesize_corpus(tmp_path / "a", TINY, workers=2)
    assert summary.skipped_chapters == len(list((tmp_path / "a").rglob("*.trans.txt"))) - 1
    assert _digest(tmp_path / "a") == first
    other = _digest_audio(synthesize_corpus, tmp_path / "c", replace(TINY, seed=12))
    assert other != {k: v for k, v in first.items() if k.endswith(".flac")}


def _digest_audio(synth, out, config):
    synth(out, config, workers=2)
    return {k: v for k, v in _digest(out).items() if k.endswith(".flac")}


def test_refuses_other_config_in_same_dir(tmp_path):
    synthesize_corpus(tmp_path / "a", replace(TINY, minutes=0.05, dev_minutes=0, test_minutes=0), workers=1)
    with pytest.raises(ValueError, match="different one"):
        synthesize_corpus(tmp_path / "a", replace(TINY, minutes=0.1, dev_minutes=0, test_minutes=0), workers=1)


@pytest.mark.parametrize("kwargs", [{"minutes": -1}, {"speakers": 0}, {"train_split": "dev-clean"}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)


def test_text_generator():
    words = build_vocabulary().words()
    assert len(words) >= 2000
    assert all(re.fullmatch(r"[A-Z']+", w) for w in words)
    gen_a, gen_b = SentenceGenerator(3), SentenceGenerator(3)
    a = [gen_a.sentence() for _ in range(300)]
    assert a == [gen_b.sentence() for _ in range(300)]
    assert a != [SentenceGenerator(4).sentence() for _ in range(300)]
    lengths = [len(s.split()) for s in a]
    assert min(lengths) >= 4 and max(lengths) <= 25 and len(set(lengths)) > 15
    assert len(set(a)) == len(a)
    assert len({w for s in a for w in s.split()}) > 600


def test_cli_synth(tmp_path, capsys):
    from speechcl.cli import main

    out = tmp_path / "c"
    code = main(["synth", str(out), "--minutes", "0.2", "--speakers", "2", "--dev-minutes", "0.1",
                 "--test-minutes", "0", "--heldout-speakers", "1", "--seed", "5", "--workers", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "train-clean-100:" in printed and "dev-clean:" in printed and "min of audio per second" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["dev-clean", "train-clean-100"]
    assert not (out / "lm-text.txt").exists()
    assert main(["synth", str(out), "--minutes", "0.3"]) == 2  # another config into the same directory
    assert main(["synth", str(out), "--minutes", "0.2", "--speakers", "2", "--dev-minutes", "0.1",
                 "--test-minutes", "0", "--heldout-speakers", "1", "--seed", "5", "--lm-sentences", "30"]) == 0
    assert len((out / "lm-text.txt").read_text().splitlines()) == 30
    assert "was complete already" in capsys.readouterr().out  # the rerun synthesized nothing


def test_lm_text_is_seeded_apart_from_the_utterances(tmp_path, corpus):
    path = write_lm_text(tmp_path, 400, seed=0)
    lines = path.read_text().splitlines()
    assert len(lines) == 400 and all(4 <= len(line.split()) <= 25 for line in lines)
    assert write_lm_text(tmp_path / "again", 400, seed=0).read_text() == path.read_text()
    assert write_lm_text(tmp_path / "other", 400, seed=1).read_text() != path.read_text()
    spoken = {line.split(" ", 1)[1] for f in corpus.rglob("*.trans.txt") for line in f.read_text().splitlines()}
    assert spoken and not spoken & set(lines)  # no utterance's sentence is LM text
    assert all(task.text_seed < 2**31 for task in plan_chapters(SMALL, corpus))  # the LM seed is 2**31 + seed
    with pytest.raises(ValueError, match="sentences must be >= 1"):
        write_lm_text(tmp_path, 0)
