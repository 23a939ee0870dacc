"""The keyword-spotting corpus (``speechcl synth --keywords``) and its preparation."""

import hashlib
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcl.data.keywords import (
    COMMANDS,
    LABELS,
    SILENCE,
    SPLITS,
    UNKNOWN,
    KeywordConfig,
    background_noise,
    plan_keyword_speakers,
    synthesize_keywords,
    unknown_words,
)
from speechcl.data.labels import read_lines
from speechcl.data.manifest import read_manifest
from speechcl.data.prepare import prepare_keywords
from speechcl.data.synth import SynthConfig, plan_speakers

CONFIG = KeywordConfig(per_word=4, heldout_per_word=2, speakers=3, heldout_speakers=2, seed=5)


@pytest.fixture(scope="module")
def keywords(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kw") / "corpus"
    synthesize_keywords(out, CONFIG, workers=2)
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _clips(root: Path, split: str) -> list[dict[str, str]]:
    lines = (root / split / "clips.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_layout(keywords):
    assert LABELS == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_")
    assert sorted(p.name for p in keywords.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(SPLITS)
    for split in SPLITS:
        assert sorted(p.name for p in (keywords / split).iterdir() if p.is_dir()) == sorted(LABELS)
        for label in LABELS:
            files = sorted((keywords / split / label).glob("*.flac"))
            assert len(files) == CONFIG.clips_per_label(split)
            for f in files:
                speaker, number = f.stem.split("_")
                assert speaker.isdigit() and number.isdigit()
                info = sf.info(f)
                assert (info.frames, info.samplerate, info.channels, info.subtype) == (16000, 16000, 1, "PCM_16")
    assert CONFIG.clips_per_label("train") == 4 and CONFIG.clips_per_label("test") == 2
    assert KeywordConfig(per_word=7).clips_per_label("dev") == 3 and KeywordConfig(per_word=1).clips_per_label("dev") == 1


def test_speakers_seen_for_train_unseen_for_dev_and_test(keywords):
    on_disk = {split: {f.stem.split("_")[0] for f in (keywords / split).rglob("*.flac")} for split in SPLITS}
    assert len(on_disk["train"]) == 3 and len(on_disk["dev"]) == len(on_disk["test"]) == 2
    assert not on_disk["train"] & (on_disk["dev"] | on_disk["test"]) and not on_disk["dev"] & on_disk["test"]
    speakers = plan_keyword_speakers(CONFIG)
    voices = {split: {s.voice for s in speakers if s.split == split} for split in SPLITS}
    assert not voices["train"] & (voices["dev"] | voices["test"]) and not voices["dev"] & voices["test"]
    # the sentence corpus's voices for the same seed and counts
    synth = plan_speakers(SynthConfig(speakers=3, heldout_speakers=2, seed=5))
    assert [s.voice for s in speakers] == [s.voice for s in synth]


def test_clip_listing_and_content(keywords):
    others = set(unknown_words())
    assert not others & set(COMMANDS) and len(others) > 500
    for split in SPLITS:
        clips = _clips(keywords, split)
        assert sorted(c["path"] for c in clips) == sorted(str(p.relative_to(keywords))
                                                          for p in (keywords / split).rglob("*.flac"))
        assert Counter(c["label"] for c in clips) == {label: CONFIG.clips_per_label(split) for label in LABELS}
        for clip in clips:
            wave = sf.read(keywords / clip["path"], dtype="float64")[0]
            start, end = int(clip["speech_start"]), int(clip["speech_end"])
            assert clip["path"].split("/")[1] == clip["label"] and clip["path"].split("/")[2].startswith(clip["speaker"])
            rms = np.sqrt(np.mean(wave**2))
            if clip["label"] == SILENCE:
                assert (start, end) == (0, 0) and clip["heard"] in ("floor", "white", "pink", "brown", "hum")
                assert rms < 0.04
            else:
                assert clip["heard"] == clip["label"] if clip["label"] != UNKNOWN else clip["heard"] in others
                assert 0 <= start < end <= 16000 and end - start > 1000
                inside = np.sum(wave[start:end] ** 2) / np.sum(wave**2)
                assert inside > 0.9, clip  # the spoken word lies in its listed span
                assert np.abs(wave).max() > 0.1


def test_background_noise_levels_and_colours():
    rng = np.random.default_rng(0)
    spectra = {}
    for kind in ("white", "pink", "brown", "hum"):
        noise = background_noise(kind, 16000, 0.01, rng)
        assert noise.dtype == np.float32 and noise.shape == (16000,)
        assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(0.01, rel=1e-3)
        power = np.abs(np.fft.rfft(noise)) ** 2
        spectra[kind] = power[20:400].sum() / power[4000:8000].sum()  # low (20-400 Hz) over high (4-8 kHz)
    assert spectra["white"] < spectra["pink"] < spectra["brown"]
    with pytest.raises(ValueError, match="unknown noise kind"):
        background_noise("floor", 10, 0.1, rng)


def test_deterministic_and_resumable(keywords, tmp_path):
    first = _digest(keywords)
    other = tmp_path / "again"
    synthesize_keywords(other, CONFIG, workers=1)
    assert _digest(other) == first
    marker = sorted((other / ".progress").glob("train-*.tsv"))[0]
    lost = other / marker.read_text().splitlines()[0].split("\t")[0]
    marker.unlink()
    lost.unlink()
    summary = synthesize_keywords(other, CONFIG, workers=2)
    assert summary.synthesized_speakers == 1 and summary.skipped_speakers == 6
    assert _digest(other) == first
    with pytest.raises(ValueError, match="make a different one"):
        synthesize_keywords(other, replace(CONFIG, per_word=5))
    synthesize_keywords(tmp_path / "seed6", replace(CONFIG, seed=6), workers=2)
    assert _digest(tmp_path / "seed6") != first
    with pytest.raises(ValueError, match="at least one clip"):
        KeywordConfig(per_word=0)


def test_prepare_keywords(keywords, tmp_path):
    result = prepare_keywords(keywords, tmp_path)
    assert not result.report and result.items == {s: 12 * CONFIG.clips_per_label(s) for s in SPLITS}
    for split in SPLITS:
        manifest = read_manifest(tmp_path / f"{split}.tsv")
        assert Path(manifest.root) == keywords.resolve()
        assert manifest.paths == sorted(str(p.relative_to(keywords)) for p in (keywords / split).rglob("*.flac"))
        assert set(manifest.sizes) == {16000}
        kw = read_lines(tmp_path / f"{split}.kw")
        assert kw == [Path(p).parts[1] for p in manifest.paths]
    counts = [line.split() for line in read_lines(tmp_path / "dict.kw.txt")]
    assert sorted(s for s, _ in counts) == sorted(LABELS) and {int(c) for _, c in counts} == {CONFIG.per_word}
    only = prepare_keywords(keywords, tmp_path / "dev", splits=["dev"])
    assert list(only.items) == ["dev"]
    assert {line.split()[1] for line in read_lines(tmp_path / "dev" / "dict.kw.txt")} == {"2"}  # no train: all
    with pytest.raises(ValueError, match="not found"):
        prepare_keywords(keywords, tmp_path, splits=["valid"])
    with pytest.raises(ValueError, match="no keyword splits"):
        prepare_keywords(tmp_path / "dev", tmp_path / "x")


def test_prepare_keywords_reports_bad_files(keywords, tmp_path):
    root = tmp_path / "kw"
    shutil.copytree(keywords / "dev", root / "dev")
    bad = root / "dev" / "yes" / "999_0.flac"
    bad.write_bytes(b"not audio")
    sf.write(root / "dev" / "stray.flac", np.zeros(16000, np.float32), 16000)  # not in a label folder
    result = prepare_keywords(root, tmp_path / "out")
    reasons = {Path(r.path).name: r.reason for r in result.skipped()}
    assert set(reasons) == {"999_0.flac", "stray.flac"} and "label folder" in reasons["stray.flac"]
    assert result.items["dev"] == 24


def test_cli(tmp_path, capsys):
    from speechcl.cli import main

    out = tmp_path / "kw"
    assert main(["synth", str(out), "--keywords", "--per-word", "1", "--heldout-per-word", "1", "--speakers", "2",
                 "--heldout-speakers", "1", "--seed", "3", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train: 12 clips" in printed and "test: 12 clips" in printed
    assert main(["prepare", "keywords", str(out), str(tmp_path / "data")]) == 0
    assert len(read_lines(tmp_path / "data" / "train.kw")) == 12
    assert main(["synth", str(out), "--keywords", "--conditions"]) == 2
    assert "sentence corpora only" in capsys.readouterr().err
