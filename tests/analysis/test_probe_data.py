"""Probe labels: frame labels must match the model's frame count, speakers come from paths, holdouts."""

from __future__ import annotations

from pathlib import Path

import pytest

import speechcl
from speechcl.analysis.probe_data import (
    evenly_spaced,
    holdout_split,
    read_phone_frames,
    read_speakers,
    read_symbols,
    speaker_of_path,
)
from speechcl.data.manifest import Manifest, write_manifest
from speechcl.models.feature_encoder import num_frames

CONV = speechcl.preset("tiny").conv_layers
# Lengths around frame boundaries: 400 samples is the first frame, every 320 more adds one; odd lengths too.
SIZES = [400, 719, 720, 16000, 16001, 12345]


def _manifest(tmp_path: Path, sizes=SIZES) -> tuple[Manifest, Path]:
    manifest = Manifest("/data", [f"s/1{i}/2/1{i}-2-{i:04d}.flac" for i in range(len(sizes))], list(sizes))
    path = tmp_path / "train.tsv"
    write_manifest(path, manifest)
    return manifest, path


def test_frame_counts_at_boundaries():
    # floor((L - 400) / 320) + 1 for the wav2vec 2.0 geometry, by hand
    assert [num_frames(n, CONV) for n in SIZES] == [1, 1, 2, 49, 49, 38]


def test_phone_frames_aligned_with_model_frames(tmp_path):
    manifest, tsv = _manifest(tmp_path)
    lines = [" ".join(["sil"] + ["a"] * (num_frames(n, CONV) - 1)) for n in SIZES]
    (tmp_path / "train.phn_frames").write_text("\n".join(lines) + "\n")
    labels = read_phone_frames(tmp_path / "train.phn_frames", manifest, tsv, CONV)
    assert [len(row) for row in labels] == [num_frames(n, CONV) for n in SIZES]
    assert labels[3][:2] == ["sil", "a"]


@pytest.mark.parametrize("delta", [-1, 1])
def test_phone_frames_mismatch_names_file_line_and_counts(tmp_path, delta):
    manifest, tsv = _manifest(tmp_path)
    counts = [num_frames(n, CONV) for n in SIZES]
    counts[4] += delta  # line 5: 16001 samples make 49 frames
    (tmp_path / "train.phn_frames").write_text("\n".join(" ".join(["a"] * c) for c in counts) + "\n")
    with pytest.raises(ValueError) as err:
        read_phone_frames(tmp_path / "train.phn_frames", manifest, tsv, CONV)
    message = str(err.value)
    assert "train.phn_frames:5:" in message
    assert f"{49 + delta} phone labels" in message and "49 frames" in message and "16001 samples" in message


def test_label_file_line_count_must_match_manifest(tmp_path):
    manifest, tsv = _manifest(tmp_path)
    (tmp_path / "train.phn_frames").write_text("a\n")
    with pytest.raises(ValueError, match=r"has 1 lines but .*train\.tsv lists 6 files"):
        read_phone_frames(tmp_path / "train.phn_frames", manifest, tsv, CONV)


def test_speakers_from_librispeech_paths_or_spk_file(tmp_path):
    manifest, tsv = _manifest(tmp_path)
    assert read_speakers(tmp_path, "train", manifest, tsv) == [f"1{i}" for i in range(len(SIZES))]
    (tmp_path / "train.spk").write_text("".join(f"spk{i % 2}\n" for i in range(len(SIZES))))
    assert read_speakers(tmp_path, "train", manifest, tsv) == [f"spk{i % 2}" for i in range(len(SIZES))]
    assert speaker_of_path("a/b/utterance.wav") is None
    odd = Manifest("/data", ["x/utterance.wav"], [16000])
    with pytest.raises(ValueError, match="cannot tell the speaker"):
        read_speakers(tmp_path / "nowhere", "train", odd, tsv)


def test_read_symbols(tmp_path):
    (tmp_path / "dict.kw.txt").write_text("yes 4\nno 3\n")
    assert read_symbols(tmp_path / "dict.kw.txt") == ["yes", "no"]
    (tmp_path / "dict.kw.txt").write_text("yes 4\nno\n")
    with pytest.raises(ValueError, match=r"dict\.kw\.txt:2"):
        read_symbols(tmp_path / "dict.kw.txt")


def test_holdout_is_per_group_and_deterministic():
    groups = ["a"] * 5 + ["b"] * 2 + ["c"] * 10
    train, test = holdout_split(groups, 0.2)
    assert sorted(train + test) == list(range(len(groups)))
    assert test == [2, 7 + 2, 7 + 7]  # the 3rd of a, none of b (two items), the 3rd and 8th of c
    assert holdout_split(groups, 0.2) == (train, test)


def test_evenly_spaced():
    assert evenly_spaced(10, 4) == [0, 2, 5, 7]
    assert evenly_spaced(3, None) == [0, 1, 2] == evenly_spaced(3, 5)
