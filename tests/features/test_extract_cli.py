"""``speechcl extract`` end to end: mixed corpora, manifests, resumption, formats, shards, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import speechcl
from speechcl.audio import resampled_length
from speechcl.features import extract_to_directory, iter_shard_features
from speechcl.features.writers import NpyWriter, ShardWriter
from speechcl.models.feature_encoder import conv_output_lengths
from tests.features.conftest import CORPUS, write_corpus
from tests.interop.cli_helper import run_verb

ROOT = Path(__file__).resolve().parents[2]


def extract(*argv: str) -> int:
    return run_verb("speechcl.features.commands", ["extract", *argv, "--no-progress"])


def expected_frames(cfg, rel: str) -> int:
    _, sr, _, seconds = next(f for f in CORPUS if f[0] == rel)
    samples = resampled_length(int(seconds * sr), sr, 16000)
    return int(conv_output_lengths(torch.tensor([samples]), cfg.conv_layers)[0])


def npy_outputs(directory: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(directory).with_suffix("").as_posix(): np.load(p) for p in directory.rglob("*.npy")}


@pytest.mark.parametrize("chunking", [[], ["--chunk-seconds", "0.5", "--overlap-seconds", "0.1"]],
                         ids=["whole", "chunked"])
def test_directory_of_mixed_rates_and_channels(tmp_path, corpus, tiny_model_dir, chunking):
    cfg = speechcl.load_model(tiny_model_dir).cfg
    out = tmp_path / "feats"
    assert extract("--model", str(tiny_model_dir), "--input", str(corpus), "--output", str(out), *chunking) == 0
    got = npy_outputs(out)
    assert sorted(got) == sorted(str(Path(rel).with_suffix("")) for rel, *_ in CORPUS)
    for rel, *_ in CORPUS:
        feats = got[str(Path(rel).with_suffix(""))]
        assert feats.dtype == np.float32 and feats.shape == (expected_frames(cfg, rel), 64)
        assert np.isfinite(feats).all()


def test_several_layers_manifest_and_scp(tmp_path, corpus, tiny_model_dir):
    cfg = speechcl.load_model(tiny_model_dir).cfg
    manifest = tmp_path / "train.tsv"
    lines = [str(corpus)] + [f"{rel}\t{resampled_length(int(s * sr), sr, 16000)}" for rel, sr, _, s in CORPUS[:3]]
    manifest.write_text("\n".join(lines) + "\n")
    assert extract("--model", str(tiny_model_dir), "--input", str(manifest), "--output", str(tmp_path / "m"),
                   "--layers", "0,2") == 0
    got = npy_outputs(tmp_path / "m")
    assert len(got) == 3 and got["a/one"].shape == (2, expected_frames(cfg, "a/one.wav"), 64)

    scp = tmp_path / "wav.scp"
    scp.write_text(f"utt1 {corpus / 'a/one.wav'}\nspk2/utt2 {corpus / 'b/four.wav'}\n")
    assert extract("--model", str(tiny_model_dir), "--input", str(scp), "--output", str(tmp_path / "s"),
                   "--layers", "all") == 0
    got_scp = npy_outputs(tmp_path / "s")
    assert sorted(got_scp) == ["spk2/utt2", "utt1"] and got_scp["utt1"].shape[0] == 3
    # the same file gives the same features whatever the input list
    assert np.allclose(got_scp["utt1"][[0, 2]], got["a/one"], atol=1e-5)


def test_piped_scp_is_rejected(tmp_path, tiny_model_dir, capsys):
    scp = tmp_path / "wav.scp"
    scp.write_text("utt1 sox in.flac -t wav - |\n")
    assert extract("--model", str(tiny_model_dir), "--input", str(scp), "--output", str(tmp_path / "o")) == 2
    assert "piped command" in capsys.readouterr().err


def test_unreadable_and_short_inputs_are_reported(tmp_path, tiny_model_dir, capsys):
    root = write_corpus(tmp_path / "c", CORPUS[:2])
    (root / "broken.wav").write_bytes(b"RIFF not really a wav file")
    sf.write(root / "short.wav", np.zeros(200, dtype=np.float32), 16000)
    out = tmp_path / "o"
    assert extract("--model", str(tiny_model_dir), "--input", str(root), "--output", str(out)) == 1
    captured = capsys.readouterr()
    assert "broken.wav" in captured.err and "too short" in captured.err
    assert "extracted 2, skipped 0 already done, failed 2 of 4 inputs" in captured.out
    assert len((out / "failed.tsv").read_text().splitlines()) == 2
    assert sorted(npy_outputs(out)) == ["a/one", "a/two"]


def test_interrupted_run_resumes_without_recomputing(tmp_path, corpus, tiny_model_dir, monkeypatch):
    out = tmp_path / "o"
    original = NpyWriter.write
    calls = []

    def failing_write(self, key, features):
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(key)
        original(self, key, features)

    monkeypatch.setattr(NpyWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        extract_to_directory(tiny_model_dir, corpus, out, max_tokens=20_000, progress=False)
    monkeypatch.setattr(NpyWriter, "write", original)
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    assert len(first) == 3
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    time.sleep(0.01)
    summary = extract_to_directory(tiny_model_dir, corpus, out, max_tokens=20_000, progress=False)
    assert (summary.skipped, summary.extracted, summary.failed) == (3, len(CORPUS) - 3, [])
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    resumed = npy_outputs(out)
    fresh = extract_to_directory(tiny_model_dir, corpus, tmp_path / "fresh", max_tokens=20_000, progress=False)
    assert fresh.extracted == len(CORPUS)
    for key, array in npy_outputs(tmp_path / "fresh").items():
        assert np.allclose(resumed[key], array, atol=1e-5)


def test_killed_subprocess_resumes(tmp_path, corpus, tiny_model_dir):
    """A real SIGKILL mid-run: every output on disk is complete, and the rerun only adds the rest."""
    out = tmp_path / "o"
    script = (
        "import sys, time\n"
        "from speechcl.features.writers import NpyWriter\n"
        "original = NpyWriter.write\n"
        "def slow(self, key, features):\n"
        "    original(self, key, features)\n"
        "    time.sleep(1.0)\n"
        "NpyWriter.write = slow\n"
        "from tests.interop.cli_helper import run_verb\n"
        "sys.exit(run_verb('speechcl.features.commands', sys.argv[1:]))\n"
    )
    argv = ["extract", "--model", str(tiny_model_dir), "--input", str(corpus), "--output", str(out),
            "--no-progress", "--num-workers", "0", "--max-tokens", "20000"]
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.npy"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    assert 2 <= len(first) < len(CORPUS)
    for path in first:
        np.load(path)  # complete and loadable
    assert extract("--model", str(tiny_model_dir), "--input", str(corpus), "--output", str(out)) == 0
    assert len(list(out.rglob("*.npy"))) == len(CORPUS)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())


def test_changed_settings_are_refused(tmp_path, corpus, tiny_model_dir, capsys):
    out = tmp_path / "o"
    assert extract("--model", str(tiny_model_dir), "--input", str(corpus / "six.wav"), "--output", str(out)) == 0
    assert json.loads((out / "extract_config.json").read_text())["layers"] == ["last"]
    assert extract("--model", str(tiny_model_dir), "--input", str(corpus / "six.wav"), "--output", str(out),
                   "--layers", "1") == 2
    assert "layers differ" in capsys.readouterr().err
    assert extract("--model", str(tiny_model_dir), "--input", str(corpus / "six.wav"), "--output", str(out),
                   "--layers", "1", "--overwrite") == 0
    assert np.load(out / "six.npy").shape[1] == 64


def test_shards_split_the_work(tmp_path, corpus, tiny_model_dir, monkeypatch):
    out = tmp_path / "o"
    for i in range(2):
        assert extract("--model", str(tiny_model_dir), "--input", str(corpus), "--output", str(out),
                       "--shard", f"{i}/2") == 0
    assert len(npy_outputs(out)) == len(CORPUS)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    summary = extract_to_directory(tiny_model_dir, corpus, out, shard=(1, 2), progress=False)
    assert summary.inputs == len(CORPUS) // 2 and summary.skipped == summary.inputs


def test_group_norm_model_and_sharded_npy_format(tmp_path, corpus, groupnorm_model_dir, monkeypatch):
    ref_dir, shard_dir = tmp_path / "npy", tmp_path / "shards"
    assert extract("--model", str(groupnorm_model_dir), "--input", str(corpus), "--output", str(ref_dir),
                   "--layers", "1,last") == 0
    reference = npy_outputs(ref_dir)
    # interrupted after one shard of ~2 utterances was written; the rerun appends the rest
    flush = ShardWriter.flush
    count = []

    def failing_flush(self):
        if count:
            raise KeyboardInterrupt("simulated interruption")
        count.append(1)
        flush(self)

    monkeypatch.setattr(ShardWriter, "flush", failing_flush)
    argv = ["--model", str(groupnorm_model_dir), "--input", str(corpus), "--output", str(shard_dir),
            "--layers", "1,last", "--format", "shards", "--shard-size-mb", "0.02"]
    with pytest.raises(KeyboardInterrupt):
        extract(*argv)
    monkeypatch.setattr(ShardWriter, "flush", flush)
    first = dict(iter_shard_features(shard_dir))
    assert 0 < len(first) < len(CORPUS)
    assert extract(*argv) == 0
    got = dict(iter_shard_features(shard_dir))
    assert sorted(got) == sorted(reference)
    for key, array in got.items():
        assert array.shape == reference[key].shape and array.shape[0] == 2
        assert np.allclose(array, reference[key], atol=1e-5)


def test_hdf5_format(tmp_path, corpus, tiny_model_dir):
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "o"
    assert extract("--model", str(tiny_model_dir), "--input", str(corpus), "--output", str(out),
                   "--format", "hdf5") == 0
    assert extract("--model", str(tiny_model_dir), "--input", str(corpus), "--output", str(out),
                   "--format", "hdf5") == 0  # all skipped
    datasets = []
    with h5py.File(out / "features.h5") as f:
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert all(f[name].attrs["complete"] for name in datasets)
        three = f["a/deep/three"][()]
    assert sorted(datasets) == sorted(str(Path(rel).with_suffix("")) for rel, *_ in CORPUS)
    assert np.allclose(three, np.load(_npy(tmp_path, corpus, tiny_model_dir) / "a/deep/three.npy"), atol=1e-5)


def _npy(tmp_path, corpus, model_dir) -> Path:
    out = tmp_path / "npy"
    assert extract("--model", str(model_dir), "--input", str(corpus), "--output", str(out)) == 0
    return out


def test_normalize_follows_the_checkpoint(tmp_path, corpus, tiny_model_dir):
    from speechcl.features import FeatureExtractor

    model = speechcl.load_model(tiny_model_dir)
    speechcl.save_checkpoint(model, tmp_path / "m", extra={"normalize": True})
    assert extract("--model", str(tmp_path / "m"), "--input", str(corpus / "six.wav"), "--output", str(tmp_path / "o")) == 0
    assert json.loads((tmp_path / "o" / "extract_config.json").read_text())["normalize"] is True
    expected = FeatureExtractor(model, normalize=True).extract_file(corpus / "six.wav")
    assert np.allclose(np.load(tmp_path / "o" / "six.npy"), expected.numpy(), atol=1e-5)
    assert extract("--model", str(tmp_path / "m"), "--input", str(corpus / "six.wav"), "--output", str(tmp_path / "p"),
                   "--no-normalize") == 0
    assert not np.allclose(np.load(tmp_path / "p" / "six.npy"), expected.numpy(), atol=1e-3)
