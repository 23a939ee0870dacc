"""Probe drops under transformations (``speechcl analyze invariance --probe``): labels through the time map by
hand, identity drops exactly 0 with heads equal to ``speechcl probe``'s, determinism and the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import speechcl
from speechcl.analysis.invariance import CATALOGUE
from speechcl.analysis.probe import ProbeSet
from speechcl.analysis.probe_invariance import map_frame_labels, transform_tag, transformed_probe_set
from speechcl.cli import main
from tests.analysis.test_probe import write_probe_corpus

HOP, FIELD = 320, 400
TRANSFORMS = ("identity", "speed_0.9", "shift_20ms", "noise_white_0dB")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_probe_corpus(tmp_path_factory.mktemp("drop_corpus"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return speechcl.save_checkpoint(speechcl.Wav2Vec2ForPretraining(speechcl.preset("tiny")),
                                    tmp_path_factory.mktemp("tiny_drop"))


def _analyze(model: Path, corpus: Path, out: Path, *extra: str, tasks: tuple[str, ...] = ("phone", "speaker")) -> int:
    return main(["analyze", "invariance", "--model", str(model), "--output", str(out), "--probe", *tasks,
                 "--manifest-dir", str(corpus), "--train", "train", "--test", "test", "--epochs", "3",
                 "--batch-size", "4", "--device", "cpu", "--threads", "1", "--num-workers", "0", "--no-progress",
                 "--transforms", *TRANSFORMS, *extra])


def _results(out: Path) -> dict:
    result = json.loads((out / "results.json").read_text())
    result["settings"].pop("elapsed_seconds")
    return result


# --- labels through the time map, by hand -------------------------------------------------------------------

def test_speed_carries_frame_labels_through_the_time_map_by_hand():
    # Half speed (factor 0.5: scale 2): frame k of t(x) is centred on sample 320 k + 199.5 of t(x), i.e. on
    # (320 k + 199.5) / 2 of x, which is frame p = 0.5 k - 0.312 of x; the nearest frames are 0 0 1 1 2 2.
    frames, labels = map_frame_labels(np.array(["a", "b", "c"]), 6, 2.0, 0.0, HOP, FIELD)
    assert frames.tolist() == [0, 1, 2, 3, 4, 5]
    assert labels.tolist() == ["a", "a", "b", "b", "c", "c"]
    # Double speed (scale 0.5): p = 2 k + 0.623, the nearest frames are 1 3 5.
    frames, labels = map_frame_labels(np.array(list("abcdef")), 3, 0.5, 0.0, HOP, FIELD)
    assert frames.tolist() == [0, 1, 2] and labels.tolist() == ["b", "d", "f"]
    # A shift by one hop: frame k of t(x) is frame k - 1 of x; frame 0 (padded in) is not scored.
    frames, labels = map_frame_labels(np.array(list("abcd")), 4, 1.0, float(HOP), HOP, FIELD)
    assert frames.tolist() == [1, 2, 3] and labels.tolist() == ["a", "b", "c"]
    # No time change: every frame keeps its own label.
    frames, labels = map_frame_labels(np.arange(5), 5, 1.0, 0.0, HOP, FIELD)
    assert frames.tolist() == labels.tolist() == [0, 1, 2, 3, 4]


def test_transformed_set_keeps_the_scored_frames_with_their_mapped_labels():
    clean_features = [np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1)]
    clean = ProbeSet("test", clean_features, [np.array([7, 8, 9])], rows=[4])
    t_features = {4: np.arange(2 * 6 * 1, dtype=np.float32).reshape(2, 6, 1) + 100}  # half speed: 6 frames
    data = transformed_probe_set("phone", clean, t_features, 2.0, 0.0, HOP, FIELD)
    assert data.rows == [4] and data.targets[0].tolist() == [7, 7, 8, 8, 9, 9]
    np.testing.assert_array_equal(data.features[0], t_features[4])
    shifted = transformed_probe_set("phone", clean, {4: t_features[4][:, :3]}, 1.0, float(HOP), HOP, FIELD)
    assert shifted.targets[0].tolist() == [7, 8]
    np.testing.assert_array_equal(shifted.features[0], t_features[4][:, 1:3])
    assert len(transformed_probe_set("phone", clean, {4: None}, 1.0, 0.0, HOP, FIELD)) == 0


# --- end to end ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_identity_drops_exactly_zero_with_the_probes_own_heads(corpus, model_dir, tmp_path, one_thread):
    out = tmp_path / "drops"
    assert _analyze(model_dir, corpus, out) == 0
    result = _results(out)
    assert [p["task"] for p in result["probes"]] == ["phone", "speaker"]
    for layer in result["cosine"]:
        assert layer["identity"] == 1.0
    for probe in result["probes"]:
        assert probe["rows"] == ["0", "1", "2", "weighted_sum"]
        assert [row["identity"] for row in probe["drop"]] == [0.0] * 4
        assert [row["identity"] for row in probe["transformed"]] == probe["clean"]
        for row, clean, values in zip(probe["drop"], probe["clean"], probe["transformed"]):
            for label in TRANSFORMS:
                assert row[label] == pytest.approx(clean - values[label], abs=1e-12)  # accuracy: clean − t(x)
        assert any(row["noise_white_0dB"] != 0.0 for row in probe["drop"])  # 0 dB noise does change scores
        # the heads are exactly those `speechcl probe` trains with the same settings, on the same cache
        alone = tmp_path / f"probe_{probe['task']}"
        assert main(["probe", probe["task"], "--model", str(model_dir), "--manifest-dir", str(corpus), "--train",
                     "train", "--test", "test", "--output", str(alone), "--epochs", "3", "--batch-size", "4",
                     "--device", "cpu", "--threads", "1", "--num-workers", "0", "--no-progress"]) == 0
        reference = json.loads((alone / "results.json").read_text())
        assert probe["clean"] == [*reference["per_layer"].values(), reference["weighted_sum"]]
        assert probe["probe"]["weights"] == reference["weights"]
    phone = result["probes"][0]
    assert phone["units"]["identity"] == phone["units"]["clean"] == phone["probe"]["counts"]["test_units"]
    # a one-hop shift keeps each file's length and leaves out its first frame
    assert phone["units"]["shift_20ms"] == phone["units"]["clean"] - phone["probe"]["counts"]["test_utterances"]
    assert phone["units"]["speed_0.9"] > phone["units"]["clean"]  # slower audio: more frames, labels mapped
    assert result["probes"][1]["units"]["speed_0.9"] == 6
    table = (out / "results.md").read_text()
    assert "## phone probe: accuracy under each transformation" in table and "| weighted sum |" in table
    assert (out / "invariance_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_same_seed_same_drops_and_transformed_features_are_cached(corpus, model_dir, tmp_path, one_thread):
    first, second = tmp_path / "one", tmp_path / "two"
    assert _analyze(model_dir, corpus, first, tasks=("phone",)) == 0
    assert _analyze(model_dir, corpus, second, tasks=("phone",)) == 0
    a = _results(first)
    assert _results(second) == a
    cache = next((first / "cache").iterdir())
    names = sorted(p.name.split("-")[0] for p in cache.iterdir() if p.is_dir())
    assert names == ["test", "test@noise_white_0dB", "test@shift_20ms", "test@speed_0.9", "train"]
    assert not list(cache.glob("*.audio"))  # the transformed audio is removed once its features exist
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}
    assert _analyze(model_dir, corpus, first, tasks=("phone",)) == 0  # a rerun extracts nothing
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")} == stamps
    assert _results(first) == a
    assert _analyze(model_dir, corpus, second, "--seed", "1", tasks=("phone",)) == 0
    b = _results(second)
    noise = [row["noise_white_0dB"] for row in b["probes"][0]["transformed"]]
    assert noise != [row["noise_white_0dB"] for row in a["probes"][0]["transformed"]]
    assert [row["identity"] for row in b["probes"][0]["drop"]] == [0.0] * 4

    def features(root: Path, label: str, seed: int) -> list[np.ndarray]:
        directory = next((root / "cache").iterdir()) / f"test@{transform_tag(CATALOGUE[label], seed)}"
        return [np.load(p) for p in sorted(directory.rglob("*.npy"))]

    # the seed draws the noise (a new cache entry), while a transformation without randomness is unchanged
    noise = [features(root, "noise_white_0dB", seed) for root, seed in ((first, 0), (second, 1))]
    shift = [features(root, "shift_20ms", seed) for root, seed in ((first, 0), (second, 1))]
    assert len(noise[0]) == len(noise[1]) == len(shift[1]) == 6
    assert not any(np.array_equal(x, y) for x, y in zip(*noise))
    assert all(np.array_equal(x, y) for x, y in zip(*shift))


def test_cli_needs_the_probe_splits_or_an_input(model_dir, tmp_path, capsys):
    assert main(["analyze", "invariance", "--model", str(model_dir), "--output", str(tmp_path / "o"),
                 "--probe", "phone", "--train", "train"]) == 2
    assert "--probe needs --manifest-dir, --test" in capsys.readouterr().err
    assert main(["analyze", "invariance", "--model", str(model_dir), "--output", str(tmp_path / "o")]) == 2
    assert "give --input PATH, or --probe TASK" in capsys.readouterr().err
