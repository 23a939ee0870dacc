"""``speechcl probe`` end to end on a generated corpus: every task, determinism, the feature cache, errors.

The corpus is made of tone segments: each utterance is a few segments, each a sine at the frequency of
its "phone" (a, b, c) or near-silence (sil), on top of a hum at its speaker's frequency. Frame labels are
taken at each model frame's centre, so they are exact ground truth; the letters are the segments' phones,
and the keyword is the first phone's name.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import speechcl
from speechcl.analysis.probe import ProbeConfig, ProbeSet, chance_level, run_probe
from speechcl.analysis.probe_data import TASKS
from speechcl.cli import main
from speechcl.data.manifest import Manifest, write_manifest
from speechcl.models.feature_encoder import conv_geometry, num_frames

SR = 16000
PHONES = {"a": 500.0, "b": 1100.0, "c": 2300.0}
KEYWORDS = {"a": "alpha", "b": "bravo", "c": "charlie"}
SPLITS = {"train": (("11", "22", "33"), 4), "test": (("11", "22", "33"), 2), "dev": (("44", "55"), 2)}
HUM = {"11": 110.0, "22": 180.0, "33": 260.0, "44": 140.0, "55": 220.0}
CONV = speechcl.preset("tiny").conv_layers


def _utterance(rng: np.random.Generator, speaker: str) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    segments, start = [], 0
    labels = ["sil", *rng.choice(list(PHONES), size=int(rng.integers(2, 4))), "sil"]
    for label in labels:
        length = int(rng.integers(int(0.08 * SR), int(0.2 * SR)))
        segments.append((start, start + length, str(label)))
        start += length
    t = np.arange(start) / SR
    wave = 0.1 * np.sin(2 * np.pi * HUM[speaker] * t) + 0.002 * rng.standard_normal(start)
    for s, e, label in segments:
        if label != "sil":
            wave[s:e] += 0.5 * np.sin(2 * np.pi * PHONES[label] * t[s:e])
    return wave.astype(np.float32), segments


def _frame_labels(segments: list[tuple[int, int, str]], samples: int) -> list[str]:
    hop, field = conv_geometry(CONV)
    out = []
    for frame in range(num_frames(samples, CONV)):
        centre = frame * hop + field // 2
        out.append(next(label for s, e, label in segments if s <= centre < e))
    return out


def write_probe_corpus(root: Path, seed: int = 0) -> Path:
    """Audio under ``root/audio``, manifests and every task's labels under ``root/manifests``."""
    rng = np.random.default_rng(seed)
    audio, out = root / "audio", root / "manifests"
    out.mkdir(parents=True)
    for split, (speakers, count) in SPLITS.items():
        manifest = Manifest(str(audio))
        phn, ltr, kw = [], [], []
        for speaker in speakers:
            for utt in range(count):
                rel = f"{split}/{speaker}/7/{speaker}-7-{utt:04d}.{'flac' if utt % 2 else 'wav'}"
                wave, segments = _utterance(rng, speaker)
                (audio / rel).parent.mkdir(parents=True, exist_ok=True)
                sf.write(audio / rel, wave, SR)
                manifest.paths.append(rel)
                manifest.sizes.append(len(wave))
                phn.append(" ".join(_frame_labels(segments, len(wave))))
                spoken = [label for _, _, label in segments if label != "sil"]
                ltr.append(" ".join(label.upper() for label in spoken) + " |")
                kw.append(KEYWORDS[spoken[0]])
        write_manifest(out / f"{split}.tsv", manifest)
        for suffix, lines in (("phn_frames", phn), ("ltr", ltr), ("kw", kw)):
            (out / f"{split}.{suffix}").write_text("".join(f"{line}\n" for line in lines))
    (out / "dict.phn.txt").write_text("sil 1\na 1\nb 1\nc 1\n")
    (out / "dict.ltr.txt").write_text("A 1\nB 1\nC 1\n| 1\n")
    (out / "dict.kw.txt").write_text("alpha 1\nbravo 1\ncharlie 1\n_silence_ 1\n")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_probe_corpus(tmp_path_factory.mktemp("probe_corpus"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return speechcl.save_checkpoint(speechcl.Wav2Vec2ForPretraining(speechcl.preset("tiny")),
                                    tmp_path_factory.mktemp("tiny"))


def _probe(task: str, model: Path, corpus: Path, out: Path, *extra: str, test: str = "test") -> int:
    return main(["probe", task, "--model", str(model), "--manifest-dir", str(corpus), "--train", "train",
                 "--test", test, "--output", str(out), "--epochs", "3", "--batch-size", "4", "--device", "cpu",
                 "--threads", "1", "--num-workers", "0", "--no-progress", *extra])


def _by_hand_chance(task: str, corpus: Path) -> float:
    if task == "ctc":
        return 1.0  # empty hypotheses delete every reference character
    if task == "speaker":
        train = [Path(p).name.split("-")[0] for p in (corpus / "train.tsv").read_text().split()[1::2]]
        test = [Path(p).name.split("-")[0] for p in (corpus / "test.tsv").read_text().split()[1::2]]
    else:
        suffix = {"phone": "phn_frames", "keyword": "kw"}[task]
        train = (corpus / f"train.{suffix}").read_text().split()
        test = (corpus / f"test.{suffix}").read_text().split()
    counts = Counter(train)
    top = max(counts.values())
    shares = {test.count(label) / len(test) for label, n in counts.items() if n == top}
    assert len(shares) == 1  # ties between majority classes would not change the chance level
    return shares.pop()


@pytest.mark.parametrize("task", TASKS)
def test_each_task_end_to_end(task, corpus, model_dir, tmp_path, one_thread):
    out = tmp_path / task
    assert _probe(task, model_dir, corpus, out) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["task"] == task and result["train"] == "train" and result["test"] == "test"
    assert result["metric"] == ("cer" if task == "ctc" else "accuracy")
    assert result["higher_is_better"] == (task != "ctc")
    assert list(result["per_layer"]) == list(result["train_value"]) == ["0", "1", "2"]
    assert len(result["weights"]) == result["num_hidden_states"] == 3
    assert sum(result["weights"]) == pytest.approx(1.0, abs=1e-6)
    values = [*result["per_layer"].values(), *result["train_value"].values(), result["weighted_sum"]]
    assert all(0.0 <= v <= (5.0 if task == "ctc" else 1.0) for v in values)
    assert result["chance"] == pytest.approx(_by_hand_chance(task, corpus), abs=1e-12)
    assert result["counts"]["train_utterances"] == 12 and result["counts"]["test_utterances"] == 6
    if task == "phone":
        frames = len((corpus / "test.phn_frames").read_text().split())
        assert result["counts"]["test_units"] == frames
    assert result["settings"]["epochs"] == 3 and result["settings"]["seed"] == 0
    assert (out / f"{task}_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert "| weighted sum |" in table and table.count("\n| ") >= 5
    assert len(list((out / "cache").glob("*/train/**/*.npy"))) == 12


def test_same_seed_same_numbers_and_cache_is_reused(corpus, model_dir, tmp_path, one_thread):
    first, second = tmp_path / "one", tmp_path / "two"
    assert _probe("phone", model_dir, corpus, first, "--layers", "0,2") == 0
    assert _probe("phone", model_dir, corpus, second, "--layers", "0,2") == 0
    a = json.loads((first / "results.json").read_text())
    b = json.loads((second / "results.json").read_text())
    assert a == b
    assert list(a["per_layer"]) == ["0", "2"]
    cached = sorted((first / "cache").rglob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert _probe("phone", model_dir, corpus, first, "--layers", "0,2") == 0  # a rerun extracts nothing
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert json.loads((first / "results.json").read_text()) == a
    assert _probe("phone", model_dir, corpus, second, "--layers", "0,2", "--seed", "1") == 0
    assert json.loads((second / "results.json").read_text())["per_layer"] != a["per_layer"]


def test_features_in_cache_are_every_hidden_state(corpus, model_dir, tmp_path, one_thread):
    out = tmp_path / "cache_check"
    cfg = ProbeConfig("keyword", str(model_dir), str(corpus), "train", "test", str(out), epochs=1,
                      num_workers=0, progress=False, max_utterances=3)
    run_probe(cfg)
    rel = (corpus / "test.tsv").read_text().splitlines()[1].split("\t")[0]
    (cached,) = (out / "cache").glob(f"*/test/{Path(rel).with_suffix('.npy')}")
    model = speechcl.load_model(model_dir)
    wave, _ = sf.read(corpus.parent / "audio" / rel, dtype="float32")
    ref = model.extract_features(torch.from_numpy(wave)[None]).hidden_states
    torch.testing.assert_close(torch.from_numpy(np.load(cached)), torch.stack(ref)[:, 0], rtol=0, atol=1e-5)


def test_speaker_probe_holdout_and_unseen_speakers(corpus, model_dir, tmp_path, capsys, one_thread):
    assert _probe("speaker", model_dir, corpus, tmp_path / "unseen", test="dev") == 2
    assert "none of the 2 speakers of dev appears in train" in capsys.readouterr().err
    assert _probe("speaker", model_dir, corpus, tmp_path / "held", test="train") == 0
    result = json.loads((tmp_path / "held" / "results.json").read_text())
    # 4 utterances per speaker, 0.2 held out: the 3rd of each speaker is the test set
    assert result["counts"]["train_utterances"] == 9 and result["counts"]["test_utterances"] == 3
    assert result["chance"] == pytest.approx(1 / 3)


def test_phone_labels_that_do_not_fit_the_model_are_refused(corpus, model_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    lines = (bad / "test.phn_frames").read_text().splitlines()
    lines[1] += " sil"
    (bad / "test.phn_frames").write_text("\n".join(lines) + "\n")
    assert _probe("phone", model_dir, bad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "test.phn_frames:2:" in err and "phone labels, but the model makes" in err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(("task", "floor"), [("phone", 0.8), ("speaker", 0.99), ("ctc", None)])
def test_probes_learn_the_generated_ground_truth(task, floor, corpus, model_dir, tmp_path, one_thread):
    """Tones are linearly separable even through a random tiny model: trained heads beat chance by far."""
    assert _probe(task, model_dir, corpus, tmp_path / task, "--epochs", "30") == 0
    result = json.loads((tmp_path / task / "results.json").read_text())
    if floor is None:  # CER: well below the empty output's 1.0
        assert max(result["per_layer"].values()) < 0.6 and result["weighted_sum"] < 0.6
    else:
        assert result["chance"] < 0.5
        assert min(result["per_layer"].values()) > floor and result["weighted_sum"] > floor


def test_chance_is_the_share_of_the_training_majority_in_test():
    frames = [np.zeros((1, 1, 1), np.float32)] * 3
    train = ProbeSet("train", frames, [np.array([0, 0, 1]), np.array([0, 2]), np.array([0])])  # majority 0
    test = ProbeSet("test", frames[:2], [np.array([1, 1, 1, 0]), np.array([2])])  # test's own majority is 1
    assert chance_level("phone", train, test) == pytest.approx(1 / 5)
    train_utt = ProbeSet("train", frames, [2, 2, 1])
    test_utt = ProbeSet("test", frames, [1, 1, 2])
    assert chance_level("keyword", train_utt, test_utt) == pytest.approx(1 / 3)
    ctc = ProbeSet("test", frames[:1], [[4, 5]], texts=["AB C"])
    assert chance_level("ctc", train, ctc) == 1.0


def test_a_transformers_directory_probes_like_the_speechcl_checkpoint(corpus, model_dir, tmp_path, one_thread):
    from speechcl.interop.export import export_to_transformers

    hf = export_to_transformers(speechcl.load_model(model_dir), tmp_path / "hf")
    assert _probe("keyword", model_dir, corpus, tmp_path / "ours") == 0
    assert _probe("keyword", hf, corpus, tmp_path / "theirs") == 0
    ours = json.loads((tmp_path / "ours" / "results.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "results.json").read_text())
    assert {k: v for k, v in ours.items() if k != "model"} == {k: v for k, v in theirs.items() if k != "model"}
    assert [p.name for p in (tmp_path / "ours" / "cache").iterdir()] != [p.name for p in (tmp_path / "theirs" / "cache").iterdir()]


def test_test_labels_the_training_classes_lack_count_as_errors(corpus, model_dir, tmp_path, capsys, one_thread):
    odd = tmp_path / "odd"
    shutil.copytree(corpus, odd)
    lines = (odd / "test.phn_frames").read_text().splitlines()
    first = lines[0].split()
    lines[0] = " ".join(["zz"] * 3 + first[3:])  # a phone neither the dictionary nor training has
    (odd / "test.phn_frames").write_text("\n".join(lines) + "\n")
    assert _probe("phone", model_dir, odd, tmp_path / "out", "--epochs", "30") == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["counts"]["test_frames_of_classes_not_in_training"] == 3
    assert _probe("phone", model_dir, corpus, tmp_path / "ref", "--epochs", "30") == 0
    reference = json.loads((tmp_path / "ref" / "results.json").read_text())
    frames = result["counts"]["test_units"]
    assert first[:3] == ["sil"] * 3  # frames the heads get right on the unchanged corpus ...
    for layer, value in result["per_layer"].items():  # ... are now all wrong: the same heads lose 1 to 3 hits
        lost = round((reference["per_layer"][layer] - value) * frames)
        assert 1 <= lost <= 3
    (odd / "train.kw").write_text((odd / "train.kw").read_text().replace("alpha", "delta", 1))
    assert _probe("keyword", model_dir, odd, tmp_path / "kw") == 2
    assert "train.kw:" in capsys.readouterr().err
