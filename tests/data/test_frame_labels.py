"""Frame labels in pretraining batches: each line checked against its item's encoder frames, crops on the frame
grid so labels stay aligned with the audio (odd lengths included), ``labels`` padded with -100."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechcl.data.dataset import FRAME_LABEL_PAD, AudioDataset, crop_offset
from speechcl.data.frame_labels import format_line, num_label_frames, read_frame_labels
from speechcl.data.manifest import Manifest, read_manifest, write_manifest
from speechcl.models.config import preset
from speechcl.models.feature_encoder import conv_output_lengths
from speechcl.models.wav2vec2 import Wav2Vec2Encoder
from speechcl.utils.io import atomic_write_json

CONV = preset("tiny").conv_layers
SCALE = 2.0 ** -20  # sample i holds i · 2^-20 exactly in float32: a crop's first sample tells its offset
LENGTHS = [16001, 12345, 9999, 20479, 7001]  # odd, off the 320-sample grid


def _corpus(root: Path, lengths: list[int] = LENGTHS) -> tuple[Path, list[np.ndarray]]:
    """Float WAVs whose samples count up, a manifest, and frame labels = the frame index (so any shift shows)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(lengths):
        sf.write(root / f"u{i}.wav", (np.arange(n) * SCALE).astype(np.float32), 16000, subtype="FLOAT")
    write_manifest(root / "train.tsv", Manifest(str(root), [f"u{i}.wav" for i in range(len(lengths))], list(lengths)))
    frames = num_label_frames(lengths, CONV)
    labels = [np.arange(f) for f in frames]
    (root / "train.km").write_text("".join(format_line(t) + "\n" for t in labels))
    return root, labels


def _dataset(root: Path, **kwargs) -> AudioDataset:
    return AudioDataset.from_files(root / "train.tsv", frame_label_path=root / "train.km", conv_layers=CONV, **kwargs)


def _offset(wave: torch.Tensor) -> int:
    return int(round(float(wave[0]) / SCALE))


def test_label_counts_follow_the_encoder_for_odd_lengths() -> None:
    encoder = Wav2Vec2Encoder(preset("tiny")).eval()
    for n in [400, 401, 719, 720, *LENGTHS]:
        with torch.no_grad():
            frames = encoder(torch.randn(1, n) * 0.1).x.shape[1]
        assert num_label_frames([n], CONV)[0] == frames == int(conv_output_lengths(torch.tensor([n]), CONV)[0])


def test_item_crops_stay_on_the_frame_grid_with_their_labels(tmp_path: Path) -> None:
    root, labels = _corpus(tmp_path)
    ds = _dataset(root, max_sample_size=6401, random_crop=True, seed=3)
    offsets = set()
    for epoch in range(6):
        for index in range(len(ds)):
            item = ds[(index, epoch)]
            start = _offset(item["source"])
            offsets.add(start)
            assert start % 320 == 0 and item["source"].numel() == 6401
            assert torch.equal(item["source"], torch.arange(start, start + 6401, dtype=torch.float32) * SCALE)
            frames = int(num_label_frames([6401], CONV)[0])
            assert item["frame_labels"].tolist() == list(range(start // 320, start // 320 + frames))
    assert len(offsets) > 5  # the offsets do move


def test_batch_crop_to_shortest_keeps_alignment(tmp_path: Path) -> None:
    root, _ = _corpus(tmp_path)
    ds = _dataset(root, random_crop=True, seed=1)  # pad=False: every item cropped to the shortest (7001)
    for epoch in range(4):
        batch = ds.collater([ds[(i, epoch)] for i in range(len(ds))])
        frames = int(num_label_frames([7001], CONV)[0])
        assert batch["source"].shape == (5, 7001) and batch["labels"].shape == (5, frames)
        for row in range(5):
            start = _offset(batch["source"][row])
            assert start % 320 == 0
            assert batch["labels"][row].tolist() == list(range(start // 320, start // 320 + frames))
        assert any(_offset(batch["source"][row]) > 0 for row in range(5))


def test_padded_batch_labels_match_the_encoder_frames_and_pad_with_minus_100(tmp_path: Path) -> None:
    root, labels = _corpus(tmp_path)
    ds = _dataset(root, pad=True)
    batch = ds.collater([ds[i] for i in range(len(ds))])
    encoder = Wav2Vec2Encoder(preset("tiny")).eval()
    with torch.no_grad():
        out = encoder(batch["source"], batch["padding_mask"])
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == out.x.shape[:2]
    for row, n in enumerate(LENGTHS):
        valid = int(out.lengths[row])
        assert valid == num_label_frames([n], CONV)[0]
        assert batch["labels"][row, :valid].tolist() == labels[row].tolist()
        assert (batch["labels"][row, valid:] == FRAME_LABEL_PAD).all()


def test_a_line_with_the_wrong_count_names_file_line_and_both_counts(tmp_path: Path) -> None:
    root, labels = _corpus(tmp_path)
    lines = (root / "train.km").read_text().splitlines()
    lines[2] = lines[2] + " 7"
    (root / "train.km").write_text("\n".join(lines) + "\n")
    expected = int(num_label_frames([LENGTHS[2]], CONV)[0])
    with pytest.raises(ValueError, match=rf"train\.km line 3 \(u2\.wav, 9999 samples\): {expected + 1} labels but "
                                         rf"the encoder makes {expected} frames"):
        read_frame_labels(root / "train.km", read_manifest(root / "train.tsv"), CONV)
    (root / "train.km").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(ValueError, match="has 3 lines but its manifest has 5 items"):
        _dataset(root)
    (root / "train.km").unlink()
    with pytest.raises(FileNotFoundError, match="speechcl cluster"):
        _dataset(root)


def test_without_frame_labels_crops_are_drawn_as_before(tmp_path: Path) -> None:
    for length, size, seed, epoch, index in [(16001, 6401, 3, 0, 1), (99999, 32000, 1, 5, 7), (500, 499, 0, 2, 3)]:
        old = int(np.random.default_rng([seed, epoch, index, 0]).integers(0, length - size + 1))
        assert crop_offset(length, size, seed, epoch, index) == old
    root, _ = _corpus(tmp_path)
    plain = AudioDataset.from_files(root / "train.tsv", max_sample_size=6401, seed=3)
    assert "labels" not in plain.collater([plain[0], plain[1]])
    assert any(_offset(plain[(i, e)]["source"]) % 320 for i in range(5) for e in range(3))  # any sample offset


def test_pretraining_loader_reads_labels_and_checks_their_frame_formula(tmp_path: Path) -> None:
    from speechcl.data.frame_labels import frame_geometry, manifest_digest
    from speechcl.training.pretrain import DataConfig, build_loader

    root, _ = _corpus(tmp_path)
    atomic_write_json(root / "km.json", {"num_clusters": 50, **frame_geometry(CONV),
                                         "splits": {"train": {"manifest": manifest_digest(root / "train.tsv")}}})
    data = DataConfig(manifest_dir=str(root), max_sample_size=8000, min_sample_size=0, max_tokens=40000,
                      num_workers=0, frame_labels="km")
    batch = next(iter(build_loader(data, "train", True, conv_layers=CONV)))
    assert batch["labels"].shape == (batch["source"].shape[0], int(num_label_frames([batch["source"].shape[1]], CONV)[0]))
    other = [(512, 10, 4), *CONV[1:]]  # stride 256: another frame rate
    with pytest.raises(ValueError, match="stride 320 .* makes frames of stride 256"):
        build_loader(data, "train", True, conv_layers=other)
    with pytest.raises(ValueError, match="conv_layers"):
        build_loader(data, "train", True)



def test_pretraining_loader_refuses_labels_of_another_manifest_or_an_unfinished_split(tmp_path: Path) -> None:
    from speechcl.data.frame_labels import frame_geometry, manifest_digest
    from speechcl.training.pretrain import DataConfig, build_loader

    root, _ = _corpus(tmp_path)
    data = DataConfig(manifest_dir=str(root), max_sample_size=8000, min_sample_size=0, max_tokens=40000,
                      num_workers=0, frame_labels="km")
    info = {"num_clusters": 50, **frame_geometry(CONV), "splits": {"valid": {"manifest": "0" * 16}}}
    atomic_write_json(root / "km.json", info)
    with pytest.raises(ValueError, match=r"km\.json has no finished split 'train'.*re-run speechcl cluster "
                                         r".* --splits train --ext km"):
        build_loader(data, "train", True, conv_layers=CONV)
    info["splits"]["train"] = {"manifest": manifest_digest(root / "train.tsv")}
    atomic_write_json(root / "km.json", info)
    build_loader(data, "train", True, conv_layers=CONV)
    # the manifest rewritten (same lengths, so line and frame counts still match): another digest
    manifest = read_manifest(root / "train.tsv")
    write_manifest(root / "train.tsv", Manifest(manifest.root, [f"./{p}" for p in manifest.paths], manifest.sizes))
    with pytest.raises(ValueError, match=r"labels of 'train' were made for another version of .*train\.tsv.*"
                                         r"re-run speechcl cluster .* --splits train"):
        build_loader(data, "train", True, conv_layers=CONV)


def test_label_info_without_a_frame_formula_is_an_error() -> None:
    from speechcl.data.frame_labels import check_label_geometry, frame_geometry

    check_label_geometry(frame_geometry(CONV), CONV, "km.json")
    for info in ({"num_clusters": 5}, {"num_clusters": 5, "conv_layers": "320"}, {"conv_layers": [[400]]}):
        with pytest.raises(ValueError, match=r"km\.json records no frame formula .*re-run speechcl cluster"):
            check_label_geometry(info, CONV, "km.json")
