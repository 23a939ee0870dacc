"""``speechcl cluster``: MFCC frames equal the encoder's frames, k-means is deterministic for a seed and labels are
nearest centres, label files line up with the manifests (odd lengths included), runs resume and refuse changed
settings, and a model whose frame rate differs from the labels' is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechcl.audio.io import load_audio
from speechcl.cluster import (
    KMeansConfig,
    MfccFeatures,
    ModelFeatures,
    assign_labels,
    cluster_manifests,
    fit_kmeans,
    match_frames,
    sample_items,
)
from speechcl.data.frame_labels import num_label_frames, read_frame_labels, read_label_info
from speechcl.data.manifest import Manifest, read_manifest, write_manifest
from speechcl.models.checkpoint import save_checkpoint
from speechcl.models.config import preset
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from tests.interop.cli_helper import run_verb

CONV = preset("base").conv_layers
LENGTHS = {"train": [16001, 12345, 9999, 20479, 7001, 8888, 14321], "valid": [10001, 5555, 399, 401]}


def _tone(n: int, seed: int) -> np.ndarray:
    """Alternating tones and noise: frames that k-means can tell apart."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    freq = np.where((t * 4).astype(int) % 2 == 0, 300 + 100 * (seed % 5), 1800)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    for split, lengths in LENGTHS.items():
        paths = []
        for i, n in enumerate(lengths):
            sf.write(root / f"{split}{i}.flac", _tone(n, i + 10 * len(split)), 16000)
            paths.append(f"{split}{i}.flac")
        write_manifest(root / f"{split}.tsv", Manifest(str(root), paths, list(lengths)))
    return root


def _km(k: int = 6, seed: int = 0) -> KMeansConfig:
    return KMeansConfig(num_clusters=k, seed=seed, n_init=2, batch_size=512)


def test_mfcc_frames_equal_the_encoder_frames_for_odd_lengths() -> None:
    from speechcl.models.wav2vec2 import Wav2Vec2Encoder

    mfcc = MfccFeatures(CONV)
    encoder = Wav2Vec2Encoder(preset("tiny")).eval()
    for n in [400, 401, 719, 720, 16000, 16001, 12345, 20479]:
        wave = torch.from_numpy(_tone(n, 1))
        feats = mfcc.one(wave)
        with torch.no_grad():
            frames = encoder(wave[None]).x.shape[1]
        assert feats.shape == (frames, 39) and feats.dtype == np.float32
    assert mfcc.one(torch.zeros(399)).shape == (0, 39)


def test_mfcc_window_t_is_the_receptive_field_of_frame_t() -> None:
    wave = torch.from_numpy(_tone(16001, 2))
    whole = MfccFeatures(CONV, deltas=0).one(wave)
    for t in (0, 7, 48):
        alone = MfccFeatures(CONV, deltas=0).one(wave[320 * t: 320 * t + 400])
        assert np.allclose(whole[t], alone[0], atol=1e-4)


def test_mfcc_at_10_ms_with_every_second_frame_kept_has_exactly_the_encoder_count() -> None:
    mfcc = MfccFeatures(CONV, deltas=1)
    assert (mfcc.shift, mfcc.step) == (160, 2)
    sizes = np.arange(400, 4000, 37)  # odd and even lengths on and off both grids
    fine = 1 + (sizes - 400) // 160
    assert ((fine + 1) // 2).tolist() == (1 + (sizes - 400) // 320).tolist() == num_label_frames(sizes, CONV).tolist()
    for n in (400, 559, 560, 719, 881, 12345, 16001):  # no frame dropped or repeated by match_frames
        assert mfcc.raw(torch.from_numpy(_tone(n, 4))).shape == (num_label_frames([n], CONV)[0], 26)
    info = mfcc.describe()
    assert (info["shift_samples"], info["frame_step"]) == (160, 2)


def test_deltas_are_taken_at_10_ms_so_they_span_plus_minus_20_ms() -> None:
    """Δ of kept frame t uses the 10 ms frames 2t-2 .. 2t+2: samples [320 t - 320, 320 t + 720) only (at a
    20 ms shift it would reach [320 t - 640, 320 t + 1040))."""
    wave = torch.from_numpy(_tone(16001, 5))
    t = 20
    changed = wave.clone()
    changed[: 320 * t - 320] = 0.5
    changed[320 * t + 720:] = -0.5
    mfcc = MfccFeatures(CONV, deltas=1)
    a, b = mfcc.one(wave), mfcc.one(changed)
    assert np.allclose(a[t], b[t], atol=1e-4)
    assert not np.allclose(a[t - 1, 13:], b[t - 1, 13:], atol=1e-3)  # its neighbour's Δ does see the change


def test_other_receptive_fields_are_padded_or_trimmed_to_the_encoder_count() -> None:
    assert match_frames(np.arange(6.0).reshape(3, 2), 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert match_frames(np.arange(6.0).reshape(3, 2), 2).tolist() == [[0, 1], [2, 3]]
    wide = [(8, 20, 5), *CONV[1:]]  # receptive field 450: fewer encoder frames than 25 ms windows
    narrow = [(8, 5, 5), *CONV[1:]]  # field 375: more
    for conv in (wide, narrow):
        for n in (390, 5555, 16001):
            assert MfccFeatures(conv).one(torch.from_numpy(_tone(n, 3))).shape[0] == num_label_frames([n], conv)[0]


def test_kmeans_is_deterministic_for_a_seed_and_labels_are_nearest_centres() -> None:
    x = np.random.default_rng(0).standard_normal((600, 5)).astype(np.float32) + np.repeat(np.eye(5) * 4, 120, 0)
    a, inertia = fit_kmeans(x, _km(5, seed=1))
    b, _ = fit_kmeans(x, _km(5, seed=1))
    c, _ = fit_kmeans(x, _km(5, seed=2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    labels = assign_labels(x, a)
    brute = torch.cdist(torch.from_numpy(x).double(), torch.from_numpy(a).double()).argmin(1).numpy()
    assert np.array_equal(labels, brute)
    assert inertia == pytest.approx(float(((x - a[labels]) ** 2).sum(1).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="only 600 frames were sampled for 700 clusters"):
        fit_kmeans(x, _km(700))


def test_sample_respects_fraction_and_frame_cap() -> None:
    frames = np.array([10, 0, 30, 20, 5, 40])
    assert 1 not in sample_items(frames, 1.0, None, 0) and len(sample_items(frames, 1.0, None, 0)) == 5
    assert len(sample_items(frames, 0.5, None, 0)) == 3
    capped = sample_items(frames, 1.0, 25, 0)
    assert sum(frames[capped[:-1]]) < 25 <= sum(frames[capped])
    assert sample_items(frames, 1.0, None, 4) == sample_items(frames, 1.0, None, 4) != sample_items(frames, 1.0, None, 5)


def test_label_files_line_up_with_manifests_and_encoder_frames(corpus: Path) -> None:
    summary = cluster_manifests(corpus, ["train", "valid"], MfccFeatures(CONV), _km(), "km", progress=False)
    assert summary.fitted and summary.labelled == ["train", "valid"]
    for split, lengths in LENGTHS.items():
        labels = read_frame_labels(corpus / f"{split}.km", read_manifest(corpus / f"{split}.tsv"), CONV)
        assert [len(t) for t in labels] == num_label_frames(lengths, CONV).tolist()
        assert all(t.min() >= 0 and t.max() < 6 for t in labels if len(t))
    lines = (corpus / "valid.km").read_text().split("\n")
    assert lines[2] == "" and len(lines[3].split()) == 1  # 399 samples: no frame; 401: one
    info = read_label_info(corpus, "km")
    assert (info["num_clusters"], info["features"], info["frame_stride"], info["receptive_field"]) == (6, "mfcc", 320, 400)
    assert info["fit"]["frames"] == int(num_label_frames(LENGTHS["train"], CONV).sum())
    assert set(info["splits"]) == {"train", "valid"} and info["seed"] == 0
    assert np.load(corpus / "km.centers.npy").shape == (6, 39)
    assert not (corpus / ".km.cluster").exists()


def test_labels_are_deterministic_given_the_seed(corpus: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(corpus, other)
    for root in (corpus, other):
        cluster_manifests(root, ["train"], MfccFeatures(CONV), _km(seed=4), "km", progress=False)
    assert (corpus / "train.km").read_text() == (other / "train.km").read_text()
    cluster_manifests(other, ["train"], MfccFeatures(CONV), _km(seed=5), "km5", progress=False)
    assert (corpus / "train.km").read_text() != (other / "train.km5").read_text()


def test_rerun_skips_done_work_and_changed_settings_are_refused(corpus: Path) -> None:
    cluster_manifests(corpus, ["train"], MfccFeatures(CONV), _km(), "km", progress=False)
    before = (corpus / "train.km").stat().st_mtime_ns
    again = cluster_manifests(corpus, ["train", "valid"], MfccFeatures(CONV), _km(), "km", progress=False)
    assert not again.fitted and again.skipped == ["train"] and again.labelled == ["valid"]
    assert (corpus / "train.km").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings .*num_clusters"):
        cluster_manifests(corpus, ["train"], MfccFeatures(CONV), _km(k=7), "km", progress=False)
    redone = cluster_manifests(corpus, ["train"], MfccFeatures(CONV), _km(k=7), "km", overwrite=True, progress=False)
    assert redone.fitted and read_label_info(corpus, "km")["num_clusters"] == 7
    assert not (corpus / "valid.km").exists()  # labels of the replaced run are gone


class _Interrupt(MfccFeatures):
    """Raises after ``budget`` calls (a killed run), counting what it computed."""

    def __init__(self, budget: int) -> None:
        super().__init__(CONV)
        self.budget, self.calls = budget, 0

    def __call__(self, waves, names):
        self.calls += 1
        if self.calls > self.budget:
            raise KeyboardInterrupt
        return super().__call__(waves, names)


def test_an_interrupted_run_resumes_from_its_cached_chunks(corpus: Path, tmp_path: Path) -> None:
    import shutil

    fresh = tmp_path / "fresh"
    shutil.copytree(corpus, fresh)
    cluster_manifests(fresh, ["train"], MfccFeatures(CONV), _km(), "km", chunk_size=2, progress=False)
    killed = _Interrupt(budget=5)  # 4 fit chunks, then one label chunk
    with pytest.raises(KeyboardInterrupt):
        cluster_manifests(corpus, ["train"], killed, _km(), "km", chunk_size=2, progress=False)
    assert len(list((corpus / ".km.cluster" / "labels").glob("train-*/chunk-*.npy"))) == 1
    resumed = _Interrupt(budget=100)
    cluster_manifests(corpus, ["train"], resumed, _km(), "km", chunk_size=2, progress=False)
    assert resumed.calls == 3  # the 3 label chunks left; the fit was done
    assert (corpus / "train.km").read_text() == (fresh / "train.km").read_text()


def test_an_interrupted_overwrite_run_resumes_when_rerun_with_overwrite(corpus: Path) -> None:
    cluster_manifests(corpus, ["train"], MfccFeatures(CONV), _km(), "km", chunk_size=2, progress=False)
    killed = _Interrupt(budget=2)  # new settings: the old run is replaced, then 2 of the 4 fit chunks
    with pytest.raises(KeyboardInterrupt):
        cluster_manifests(corpus, ["train"], killed, _km(k=7), "km", chunk_size=2, overwrite=True, progress=False)
    again = _Interrupt(budget=3)  # the 2 fit chunks left, then one label chunk
    with pytest.raises(KeyboardInterrupt):
        cluster_manifests(corpus, ["train"], again, _km(k=7), "km", chunk_size=2, overwrite=True, progress=False)
    resumed = _Interrupt(budget=100)
    summary = cluster_manifests(corpus, ["train"], resumed, _km(k=7), "km", chunk_size=2, overwrite=True,
                                progress=False)
    assert resumed.calls == 3 and not summary.fitted  # the 3 label chunks left; the fit was kept
    assert read_label_info(corpus, "km")["num_clusters"] == 7


def test_cached_label_chunks_of_a_changed_manifest_are_not_reused(corpus: Path) -> None:
    cluster_manifests(corpus, ["train", "valid"], MfccFeatures(CONV), _km(), "km", chunk_size=2, progress=False,
                      keep_cache=True)
    # valid re-prepared: other audio of the same length for its first item, so line and frame counts still match
    manifest = read_manifest(corpus / "valid.tsv")
    sf.write(corpus / "other0.flac", _tone(LENGTHS["valid"][0], 99)[::-1].copy(), 16000)
    write_manifest(corpus / "valid.tsv", Manifest(manifest.root, ["other0.flac", *manifest.paths[1:]], manifest.sizes))
    counting = _Interrupt(budget=100)
    summary = cluster_manifests(corpus, ["train", "valid"], counting, _km(), "km", chunk_size=2, progress=False)
    assert summary.labelled == ["valid"] and counting.calls == 2  # both chunks of valid computed again
    centres = np.load(corpus / "km.centers.npy")
    first = MfccFeatures(CONV).one(load_audio(corpus / "other0.flac", 16000)[0])
    expected = " ".join(map(str, assign_labels(first, centres).tolist()))
    assert (corpus / "valid.km").read_text().split("\n")[0] == expected


class _Terminate(MfccFeatures):
    """Sends itself SIGTERM during its ``at``-th call (a cluster taking the machine back)."""

    def __init__(self, at: int) -> None:
        super().__init__(CONV)
        self.at, self.calls = at, 0

    def __call__(self, waves, names):
        import os
        import signal

        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__call__(waves, names)


def test_sigterm_stops_after_the_current_chunk_and_a_rerun_continues(corpus: Path) -> None:
    from speechcl.utils.signals import Preempted

    with pytest.raises(Preempted, match="SIGTERM while labelling train"):
        cluster_manifests(corpus, ["train"], _Terminate(at=5), _km(), "km", chunk_size=2, progress=False)
    assert len(list((corpus / ".km.cluster" / "labels").glob("train-*/chunk-*.npy"))) == 1  # the chunk finished
    resumed = _Terminate(at=0)
    assert cluster_manifests(corpus, ["train"], resumed, _km(), "km", chunk_size=2, progress=False).labelled == ["train"]
    assert resumed.calls == 3


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(Wav2Vec2ForPretraining(preset("tiny")), tmp_path / "ckpt")


def test_model_layer_features_give_aligned_labels(corpus: Path, checkpoint: Path) -> None:
    source = ModelFeatures(checkpoint, layer=1)
    assert source.dim == 64
    cluster_manifests(corpus, ["train", "valid"], source, _km(4), "km2", progress=False)
    info = read_label_info(corpus, "km2")
    assert (info["features"], info["layer"], info["model"]) == ("model", 1, str(checkpoint.resolve()))
    labels = read_frame_labels(corpus / "valid.km2", read_manifest(corpus / "valid.tsv"), preset("tiny").conv_layers)
    assert [len(t) for t in labels] == num_label_frames(LENGTHS["valid"], CONV).tolist()


def test_a_model_with_another_frame_rate_is_an_error_naming_both_counts(corpus: Path, checkpoint: Path) -> None:
    other = [(0, 10, 5), (0, 3, 2), (0, 3, 2), (0, 3, 2), (0, 3, 2), (0, 2, 2)]  # stride 160
    source = ModelFeatures(checkpoint, layer=1, conv_layers=other)
    n = LENGTHS["train"][0]
    with pytest.raises(ValueError, match=rf"makes {num_label_frames([n], CONV)[0]} frames of .*train0\.flac \({n} "
                                         rf"samples\) but the labels must have {num_label_frames([n], other)[0]}"):
        cluster_manifests(corpus, ["train"], source, _km(4), "km2", progress=False)


def test_cli_writes_labels_and_reports_bad_arguments(corpus: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["cluster", str(corpus), "--splits", "train", "valid", "--num-clusters", "5", "--n-init", "2",
            "--threads", "1", "--no-progress"]
    assert run_verb("speechcl.cluster.commands", argv) == 0
    assert json.loads((corpus / "km.json").read_text())["num_clusters"] == 5
    assert "labelled train, valid" in capsys.readouterr().out
    assert run_verb("speechcl.cluster.commands", [*argv[:4], "--num-clusters", "5", "--model", "x"]) == 2
    assert "--features model needs --model CKPT and --layer" in capsys.readouterr().err
    assert run_verb("speechcl.cluster.commands", [*argv[:2], "--splits", "nope", "--num-clusters", "5"]) == 2
    assert "nope.tsv not found" in capsys.readouterr().err
