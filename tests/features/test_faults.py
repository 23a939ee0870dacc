"""``speechcl extract`` under faults: the fuzzed folder in every format, non-finite model output, overwrite,
SIGTERM (resumable stop, exit 75) and SIGKILL of an HDF5 run (``features.h5`` stays readable)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from speechcl.features import extract_to_directory, iter_shard_features
from speechcl.features.extractor import FeatureExtractor
from speechcl.features.writers import NpyWriter, read_shard_index
from speechcl.testing.fuzz import write_fuzzed_folder
from speechcl.utils.signals import EXIT_PREEMPTED, Preempted
from tests.features.conftest import CORPUS, write_corpus
from tests.interop.cli_helper import run_verb

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ("npy", "shards", "hdf5")
ONE_FILE_PER_BATCH = ["--max-tokens", "20000", "--num-workers", "0"]


def extract(*argv: str) -> int:
    return run_verb("speechcl.features.commands", ["extract", *argv, "--no-progress"])


def read_outputs(directory: Path, fmt: str) -> dict[str, np.ndarray]:
    """Every complete output of an extraction folder, by key."""
    if fmt == "npy":
        return {p.relative_to(directory).with_suffix("").as_posix(): np.load(p) for p in directory.rglob("*.npy")}
    if fmt == "shards":
        return dict(iter_shard_features(directory))
    h5py = pytest.importorskip("h5py")
    out = {}
    with h5py.File(directory / "features.h5", "r") as handle:
        handle.visititems(lambda name, node: out.__setitem__(name, node[()])
                          if isinstance(node, h5py.Dataset) and node.attrs["complete"] else None)
    return out


def leftovers(directory: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes."""
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


def assert_consistent(directory: Path, fmt: str) -> None:
    """Nothing half-written, no index row or virtual dataset without its data, no orphaned data file."""
    assert not leftovers(directory)
    if fmt == "shards":
        rows = read_shard_index(directory)
        assert len({key for key, *_ in rows}) == len(rows)  # one row per key
        named = {shard for _, shard, _, _ in rows}
        assert all((directory / shard).is_file() for shard in named)
        assert {f"shards/{p.name}" for p in (directory / "shards").glob("*.npy")} == named
    if fmt == "hdf5":
        h5py = pytest.importorskip("h5py")
        named = set()
        with h5py.File(directory / "features.h5", "r") as handle:
            handle.visititems(lambda name, node: named.update(s.file_name for s in node.virtual_sources())
                              if isinstance(node, h5py.Dataset) else None)
        assert all((directory / name).is_file() for name in named)
        assert {f"features.parts/{p.name}" for p in (directory / "features.parts").iterdir()} == named


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzed")
    return root, write_fuzzed_folder(root, seed=5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_folder_extracts_every_good_file_and_names_every_bad_one(tmp_path, fuzzed, tiny_model_dir, fmt,
                                                                        capsys):
    if fmt == "hdf5":
        pytest.importorskip("h5py")
    root, verdicts = fuzzed
    good = {str(Path(name).with_suffix("")) for name, verdict in verdicts.items() if verdict == "ok"}
    bad = sorted(name for name, verdict in verdicts.items() if verdict != "ok")
    out = tmp_path / "o"
    assert extract("--model", str(tiny_model_dir), "--input", str(root), "--output", str(out), "--format", fmt,
                   "--shard-size-mb", "0.05") == 1
    rows = [line.split("\t") for line in (out / "failed.tsv").read_text(encoding="utf-8").splitlines()]
    assert sorted(Path(path).relative_to(root).as_posix() for path, _ in rows) == bad
    assert all(reason and not reason.startswith(str(root)) for _, reason in rows)
    captured = capsys.readouterr()
    for name in bad:
        assert f"skipped {root / name}: " in captured.err
    assert "Traceback" not in captured.err
    outputs = read_outputs(out, fmt)
    assert set(outputs) == good
    assert all(np.isfinite(array).all() and array.shape[-1] == 64 and array.shape[0] > 0 for array in outputs.values())
    assert_consistent(out, fmt)


def test_non_finite_features_are_reported_not_written(tmp_path, corpus, tiny_model_dir, monkeypatch):
    original = FeatureExtractor.extract

    def broken_for_long_inputs(self, waves):
        feats = original(self, waves)
        return [f.fill_(float("nan")) if w.shape[0] > 24_000 else f for w, f in zip(waves, feats)]

    monkeypatch.setattr(FeatureExtractor, "extract", broken_for_long_inputs)
    out = tmp_path / "o"
    summary = extract_to_directory(tiny_model_dir, corpus, out, max_tokens=20_000, num_workers=0, progress=False)
    long_ones = sorted(str(corpus / rel) for rel, sr, _, seconds in CORPUS if seconds > 1.5)  # six.wav: 1.61 s
    assert sorted(path for path, _ in summary.failed) == long_ones
    assert all(reason.startswith("model produced non-finite features") for _, reason in summary.failed)
    assert summary.extracted == len(CORPUS) - len(long_ones)
    written = read_outputs(out, "npy")
    assert "six" not in written and len(written) == summary.extracted
    assert all(np.isfinite(a).all() for a in written.values())
    assert (out / "failed.tsv").read_text().count("non-finite") == len(long_ones)


@pytest.mark.parametrize("fmt", ["shards", "hdf5"])
def test_overwrite_replaces_the_old_entries(tmp_path, corpus, tiny_model_dir, fmt):
    """--overwrite writes each key again: one index row (or dataset) per key, pointing at the new data; data
    files no key uses any more are gone."""
    if fmt == "hdf5":
        pytest.importorskip("h5py")
    out = tmp_path / "o"
    argv = ["--model", str(tiny_model_dir), "--output", str(out), "--format", fmt, "--shard-size-mb", "0.02"]
    assert extract(*argv, "--input", str(corpus)) == 0
    first = read_outputs(out, fmt)
    data_dir = out / ("shards" if fmt == "shards" else "features.parts")
    before = {p.name for p in data_dir.iterdir()}
    assert extract(*argv, "--input", str(corpus), "--overwrite") == 0
    again = read_outputs(out, fmt)
    assert sorted(again) == sorted(first) and len(again) == len(CORPUS)
    if fmt == "shards":
        assert len(read_shard_index(out)) == len(CORPUS)
    assert not before & {p.name for p in data_dir.iterdir()}  # every old shard / part was superseded
    assert_consistent(out, fmt)
    # overwriting one input replaces its entry only
    assert extract(*argv, "--input", str(corpus / "six.wav"), "--overwrite") == 0
    once_more = read_outputs(out, fmt)
    assert sorted(once_more) == sorted(first)
    for key, array in once_more.items():
        np.testing.assert_allclose(array, first[key], atol=1e-5)
    assert_consistent(out, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sigterm_stops_after_the_batch_with_resumable_outputs(tmp_path, corpus, tiny_model_dir, fmt, monkeypatch,
                                                             capsys):
    """A signal during the run (here sent to ourselves after the second output): the run stops after that
    batch with exit 75, what it extracted is saved (buffers flushed), and a rerun completes it to the same
    features as an uninterrupted run."""
    if fmt == "hdf5":
        pytest.importorskip("h5py")
    argv = ["--model", str(tiny_model_dir), "--input", str(corpus), "--format", fmt, *ONE_FILE_PER_BATCH]
    assert extract(*argv, "--output", str(tmp_path / "fresh")) == 0
    fresh = read_outputs(tmp_path / "fresh", fmt)
    writer_class = {"npy": "NpyWriter", "shards": "ShardWriter", "hdf5": "Hdf5Writer"}[fmt]
    from speechcl.features import writers

    original = getattr(writers, writer_class).write
    written = []

    def write_then_signal(self, key, features):
        original(self, key, features)
        written.append(key)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(getattr(writers, writer_class), "write", write_then_signal)
    out = tmp_path / "o"
    capsys.readouterr()
    assert extract(*argv, "--output", str(out)) == EXIT_PREEMPTED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SIGTERM" in err and "rerun the same command" in err
    assert len(written) == 2 and sorted(read_outputs(out, fmt)) == sorted(written)  # the buffer was saved
    assert_consistent(out, fmt)
    monkeypatch.setattr(getattr(writers, writer_class), "write", original)
    assert extract(*argv, "--output", str(out)) == 0
    resumed = read_outputs(out, fmt)
    assert sorted(resumed) == sorted(fresh)
    for key, array in resumed.items():
        np.testing.assert_array_equal(array, fresh[key])
    assert_consistent(out, fmt)


def test_library_raises_preempted(tmp_path, corpus, tiny_model_dir, monkeypatch):
    original = NpyWriter.write

    def write_then_signal(self, key, features):
        original(self, key, features)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(NpyWriter, "write", write_then_signal)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match="SIGINT with 1 of 6 inputs done") as stop:
        extract_to_directory(tiny_model_dir, corpus, tmp_path / "o", max_tokens=20_000, num_workers=0,
                             progress=False)
    assert stop.value.signum == signal.SIGINT
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


_SLOW_EXTRACT = """
import sys, time
import h5py
from speechcl.features.extractor import FeatureExtractor
from tests.interop.cli_helper import run_verb

def slowly(real, seconds):
    def slow(*args, **kwargs):
        out = real(*args, **kwargs)
        time.sleep(seconds)
        return out
    return slow

FeatureExtractor.extract = slowly(FeatureExtractor.extract, 0.2)
h5py.Group.create_dataset = slowly(h5py.Group.create_dataset, 0.1)  # slow HDF5 writes: kills land mid-write
h5py.Group.create_virtual_dataset = slowly(h5py.Group.create_virtual_dataset, 0.1)
sys.exit(run_verb("speechcl.features.commands", sys.argv[1:]))
"""


def _popen_extract(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SLOW_EXTRACT, "extract", *argv, "--no-progress"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _parts(out: Path) -> int:
    parts = out / "features.parts"
    return len(list(parts.glob("part-*.h5"))) if parts.is_dir() else 0


def test_hdf5_run_killed_then_stopped_then_resumed(tmp_path, tiny_model_dir):
    """A real process, SIGKILLed while HDF5 files are being written: features.h5 could be read all along and
    still opens, every dataset it lists reads back as an uninterrupted run wrote it. The next run, SIGTERMed mid-run with its features
    still buffered, exits 75 after saving them. A last run completes the file to the uninterrupted one."""
    pytest.importorskip("h5py")
    corpus = write_corpus(tmp_path / "c", [(f"u{i:02d}.wav", 16_000, 1, 0.3 + 0.02 * i) for i in range(12)])
    argv = ["--model", str(tiny_model_dir), "--input", str(corpus), "--format", "hdf5", *ONE_FILE_PER_BATCH]
    assert extract(*argv, "--output", str(tmp_path / "fresh")) == 0
    fresh = read_outputs(tmp_path / "fresh", "hdf5")
    out = tmp_path / "o"
    argv += ["--output", str(out)]

    proc = _popen_extract([*argv, "--shard-size-mb", "0.001"])  # a part file per input
    deadline = time.monotonic() + 60
    reads = 0
    while proc.poll() is None and time.monotonic() < deadline and _parts(out) < 2:
        if (out / "features.h5").exists():  # readable while the run adds to it: never written in place
            reads += bool(read_outputs(out, "hdf5"))
        time.sleep(0.01)  # two parts: features.h5 lists the first
    time.sleep(random.Random(0).uniform(0.0, 0.25))
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    killed = read_outputs(out, "hdf5")  # opens, and every dataset it lists reads back
    assert 0 < len(killed) < len(fresh) and reads > 0
    for key, array in killed.items():
        np.testing.assert_array_equal(array, fresh[key])

    config = (out / "extract_config.json").stat().st_ino
    proc = _popen_extract(argv)  # the default part size: nothing is written before the end
    while proc.poll() is None and time.monotonic() < deadline and (out / "extract_config.json").stat().st_ino == config:
        time.sleep(0.01)  # rewritten (atomically) once the model is loaded, just before the work starts
    time.sleep(0.6)  # a few batches of 0.2 s each are done
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "rerun the same command to continue" in err and "Traceback" not in err
    stopped = read_outputs(out, "hdf5")
    assert len(killed) < len(stopped) < len(fresh)
    assert_consistent(out, "hdf5")

    assert extract(*argv) == 0
    assert_same_outputs(read_outputs(out, "hdf5"), fresh)
    assert_consistent(out, "hdf5")


def test_a_lost_hdf5_part_is_extracted_again(tmp_path, corpus, tiny_model_dir):
    pytest.importorskip("h5py")
    out = tmp_path / "o"
    argv = ["--model", str(tiny_model_dir), "--input", str(corpus), "--output", str(out), "--format", "hdf5",
            "--shard-size-mb", "0.001", *ONE_FILE_PER_BATCH]
    assert extract(*argv) == 0
    first = read_outputs(out, "hdf5")
    sorted((out / "features.parts").iterdir())[2].unlink()
    assert extract(*argv) == 0
    assert_same_outputs(read_outputs(out, "hdf5"), first)
    assert_consistent(out, "hdf5")


def assert_same_outputs(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, array in got.items():
        np.testing.assert_array_equal(array, expected[key])


def test_a_shard_index_with_repeated_keys_is_repaired(tmp_path):
    """An index in which a key appears twice (the later row is the newer one) keeps one row per key."""
    from speechcl.features.writers import INDEX_HEADER, ShardWriter

    writer = ShardWriter(tmp_path, shard_bytes=1)
    writer.write("a", np.zeros((2, 3), np.float32))
    writer.write("b", np.ones((1, 3), np.float32))
    writer.close()
    rows = (tmp_path / "index.tsv").read_text().splitlines()[1:]
    (tmp_path / "index.tsv").write_text("\n".join([INDEX_HEADER, rows[0], rows[1], rows[0].replace(
        "features-00000", "features-00001")]) + "\n")  # a stale row for "a", then a newer one
    writer = ShardWriter(tmp_path, shard_bytes=1)
    writer.write("c", np.full((1, 3), 2.0, np.float32))
    writer.close()
    got = dict(iter_shard_features(tmp_path))
    assert sorted(got) == ["a", "b", "c"] and len(read_shard_index(tmp_path)) == 3
    assert [shard for key, shard, *_ in read_shard_index(tmp_path) if key == "a"] == ["shards/features-00001.npy"]


def test_writers_clean_up_what_a_killed_run_left(tmp_path):
    """Unlisted data files and temporary files of this writer go at start-up; another shard's stay."""
    h5py = pytest.importorskip("h5py")
    from speechcl.features.writers import Hdf5Writer, ShardWriter

    writer = Hdf5Writer(tmp_path, part_bytes=1)
    writer.write("a", np.zeros((2, 3), np.float32))
    writer.close()
    parts = tmp_path / "features.parts"
    with h5py.File(parts / "part-00007.h5", "w") as handle:  # written, but features.h5 never listed it
        handle.create_dataset("b", data=np.ones((1, 3), np.float32))
    debris = [parts / ".part-00008.h5.x1.tmp", tmp_path / ".features.h5.x2.tmp", tmp_path / "shards" /
              ".features-00003.npy.x3.tmp", tmp_path / ".index.tsv.x4.tmp"]
    others = [tmp_path / ".features.shard1of2.h5.y.tmp", tmp_path / "shards" / ".features.shard1of2-00000.npy.y.tmp",
              tmp_path / ".index.shard1of2.tsv.y.tmp"]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "features-00004.npy").write_bytes(b"unlisted")
    for path in debris + others:
        path.write_bytes(b"half")
    Hdf5Writer(tmp_path)
    ShardWriter(tmp_path)
    assert sorted(p.name for p in parts.iterdir()) == ["part-00000.h5"]
    assert not any(p.exists() for p in debris) and all(p.exists() for p in others)
    assert not (tmp_path / "shards" / "features-00004.npy").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_inside_a_planned_batch_is_bit_exact(tmp_path, tiny_model_dir, fmt, monkeypatch):
    """A rerun whose done outputs split a planned batch runs that batch whole, as planned, and writes only
    its missing outputs: every array equals the uninterrupted run's bit for bit; batches (and chunked files)
    whose outputs all exist are not run again."""
    if fmt == "hdf5":
        pytest.importorskip("h5py")
    from speechcl.features.extract import make_writer

    corpus = write_corpus(tmp_path / "c", [(f"u{i}.wav", 16_000, 1, 0.305 + 0.02 * i) for i in range(10)])
    # u7..u9 are chunked (a batch each); u0..u6 (4880..6800 samples) are batched [u6 u5] [u4 u3 u2] [u1 u0]
    argv = ["--model", str(tiny_model_dir), "--input", str(corpus), "--format", fmt, "--max-tokens", "20000",
            "--chunk-seconds", "0.43", "--overlap-seconds", "0.1", "--num-workers", "0"]
    assert extract(*argv, "--output", str(tmp_path / "fresh")) == 0
    fresh = read_outputs(tmp_path / "fresh", fmt)
    out = tmp_path / "o"
    out.mkdir()
    (out / "extract_config.json").write_bytes((tmp_path / "fresh" / "extract_config.json").read_bytes())
    writer = make_writer(fmt, out)
    for key in ("u9", "u8", "u6", "u5", "u4"):  # u7 (chunked) is missing, and u3 u2 of a batch begun
        writer.write(key, fresh[key])
    writer.close()
    original = FeatureExtractor.extract
    ran: list[int] = []

    def counting(self, waves):
        ran.append(len(waves))
        return original(self, waves)

    monkeypatch.setattr(FeatureExtractor, "extract", counting)
    assert extract(*argv, "--output", str(out)) == 0
    assert_same_outputs(read_outputs(out, fmt), fresh)
    assert sorted(ran) == [1, 2, 3]  # u7; [u4 u3 u2]; [u1 u0] (re-batching u3..u0 would give [u3 u2 u1] [u0])
    assert_consistent(out, fmt)
