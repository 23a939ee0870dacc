"""Batching and resuming of manifest evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from speechcl.asr.decode import GreedyDecoder
from speechcl.asr.evaluate import Skipped, evaluate_split, split_logits
from speechcl.data.batching import length_sorted_batches
from speechcl.data.manifest import Manifest

from .conftest import noise


def test_evaluation_batches_longest_first_within_limits():
    sizes = [5, 50, 20, 40, 10, 30]
    batches = length_sorted_batches(sizes, max_batch_size=2, longest_first=True)
    assert batches == [[1, 3], [5, 2], [4, 0]]
    capped = length_sorted_batches(sizes, max_tokens=90, max_batch_size=8, longest_first=True)
    assert capped == [[1], [3, 5], [2, 4, 0]]  # 2 * 50 > 90; 3 * 30 > 90 would not fit; 3 * 20 <= 90
    assert sorted(i for b in capped for i in b) == list(range(6))
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(sizes, max_batch_size=0, longest_first=True)


class Interrupt(Exception):
    pass


class CountingDecoder(GreedyDecoder):
    """Greedy decoding that counts decoded rows and can fail after a number of batches."""

    def __init__(self, dictionary, fail_after: int | None = None) -> None:
        super().__init__(dictionary)
        self.rows = 0
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, logits, lengths=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupt
        self.calls += 1
        self.rows += logits.shape[0]
        return super().__call__(logits, lengths)


def test_interrupted_evaluation_resumes(recognizer, tmp_path):
    paths, sizes = [], []
    for i in range(5):
        n = 8_000 + 1_000 * i
        sf.write(tmp_path / f"{i}.wav", noise(n, seed=i).numpy(), 16_000)
        paths.append(f"{i}.wav")
        sizes.append(n)
    manifest = Manifest(str(tmp_path), paths, sizes)
    refs = ["A B", "C", "", "D E F", "G"]
    out = tmp_path / "out"
    settings = {"decoder": "greedy"}
    first = CountingDecoder(recognizer.dictionary, fail_after=1)
    with pytest.raises(Interrupt):
        evaluate_split(recognizer, first, manifest, refs, out, "dev", settings, batch_size=2, progress=False)
    assert (out / ".hyp.dev.partial.jsonl").is_file() and not (out / "hyp.dev.txt").exists()
    second = CountingDecoder(recognizer.dictionary)
    resumed = evaluate_split(recognizer, second, manifest, refs, out, "dev", settings, batch_size=2, progress=False)
    assert second.rows == 3  # the first batch (2 utterances) was not decoded again
    fresh = evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), manifest, refs, tmp_path / "fresh",
                           "dev", settings, batch_size=5, progress=False)
    assert resumed.hypotheses == fresh.hypotheses
    assert (out / "hyp.dev.txt").read_text().splitlines() == fresh.hypotheses
    assert json.loads((out / "result.dev.json").read_text())["wer"] == fresh.score.wer
    assert not (out / ".hyp.dev.partial.jsonl").exists()
    # other settings do not reuse a stale partial file
    stale = out / ".hyp.dev.partial.jsonl"
    stale.write_text(json.dumps({"fingerprint": "other"}) + "\n" + json.dumps({"index": 0, "text": "X"}) + "\n")
    again = evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), manifest, refs, out, "dev",
                           settings, batch_size=5, progress=False)
    assert again.hypotheses == fresh.hypotheses
    with pytest.raises(ValueError, match="aligned"):
        evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), manifest, refs[:2], out, "dev", settings)


def write_split(root, sizes, seed=0):
    """16 kHz noise files ``0.wav ...`` of ``sizes`` samples and their manifest."""
    for i, n in enumerate(sizes):
        sf.write(root / f"{i}.wav", noise(n, seed=seed + i).numpy(), 16_000)
    return Manifest(str(root), [f"{i}.wav" for i in range(len(sizes))], list(sizes))


def bad_rows(out, split="dev"):
    path = out / f"bad.{split}.tsv"
    return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []


def test_unusable_files_are_skipped_reported_and_the_rest_scored(recognizer, tmp_path):
    """0 samples and 399 samples are skipped alike (too little for one frame), 400 is decoded; unreadable
    and NaN files are skipped; the split is scored on the rest, whatever the batching."""
    sizes = [12_000, 399, 400, 9_000, 0, 10]
    manifest = write_split(tmp_path, sizes)
    nan = noise(8_000, seed=9).numpy()
    nan[100] = float("nan")
    sf.write(tmp_path / "nan.wav", nan, 16_000, subtype="FLOAT")
    (tmp_path / "junk.flac").write_bytes(b"fLaC and then nothing")
    manifest = Manifest(manifest.root, manifest.paths + ["nan.wav", "junk.flac", "gone.wav"],
                        sizes + [8_000, 5, 5])
    refs = ["A B", "C", "D", "E F", "G", "H", "I", "J", "K"]
    results = []
    for batch_size in (1, 4, 9):
        out = tmp_path / f"out{batch_size}"
        result = evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), manifest, refs, out, "dev", {},
                                batch_size=batch_size, progress=False)
        rows = bad_rows(out)
        assert [Path(path).name for path, _ in rows] == ["1.wav", "4.wav", "5.wav", "nan.wav", "junk.flac",
                                                         "gone.wav"]
        assert rows == [[manifest.full_path(i), reason] for i, (_, reason) in zip([1, 4, 5, 6, 7, 8], rows)]
        reasons = [reason for _, reason in rows]
        assert reasons[0].startswith("too short: 399 samples") and reasons[2].startswith("too short: 10 samples")
        assert "no samples" in reasons[1] and "NaN" in reasons[3] and "cannot read" in reasons[4]
        assert not any(reason.startswith(str(tmp_path)) for reason in reasons)  # the path is its own column
        assert result.skipped == [tuple(row) for row in rows]
        assert result.references == ["A B", "D", "E F"] and len(result.hypotheses) == 3
        assert (out / "hyp.dev.txt").read_text().splitlines() == result.hypotheses
        assert (out / "ref.dev.txt").read_text().splitlines() == result.references
        saved = json.loads((out / "result.dev.json").read_text())
        assert (saved["files"], saved["skipped"], saved["utterances"]) == (9, 6, 3)
        assert saved["words"]["reference_length"] == 5
        assert saved["audio_seconds"] == round((12_000 + 400 + 9_000) / 16_000, 3)
        assert sorted(p.name for p in out.iterdir()) == ["bad.dev.tsv", "hyp.dev.txt", "ref.dev.txt",
                                                         "result.dev.json"]  # no partial file left
        results.append(result)
    assert results[0].hypotheses == results[1].hypotheses == results[2].hypotheses


def test_a_rerun_without_bad_files_removes_the_old_report(recognizer, tmp_path):
    manifest = write_split(tmp_path, [9_000, 10])
    out = tmp_path / "out"
    decoder = GreedyDecoder(recognizer.dictionary)
    evaluate_split(recognizer, decoder, manifest, ["A", "B"], out, "dev", {}, progress=False)
    assert len(bad_rows(out)) == 1
    evaluate_split(recognizer, decoder, manifest.subset([0]), ["A"], out, "dev", {}, progress=False)
    assert not (out / "bad.dev.tsv").exists()


def test_a_split_with_no_usable_file_fails_clearly(recognizer, tmp_path):
    manifest = write_split(tmp_path, [10, 0])
    with pytest.raises(ValueError, match=r"none of its 2 files could be decoded \(reasons in .*bad\.dev\.tsv"):
        evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), manifest, ["A", "B"], tmp_path / "out",
                       "dev", {}, progress=False)
    assert len(bad_rows(tmp_path / "out")) == 2


def test_a_resumed_evaluation_remembers_skipped_files(recognizer, tmp_path, monkeypatch):
    """Skipped files are part of the partial records: a resumed run neither reads them again nor forgets
    to report them."""
    manifest = write_split(tmp_path, [16_000, 14_000, 15_500, 13_000, 12_000, 11_000])
    (tmp_path / "2.wav").write_bytes(b"")  # unreadable; in the first batch (0, 2) by its manifest length
    refs = ["A", "B", "C", "D", "E", "F"]
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        evaluate_split(recognizer, CountingDecoder(recognizer.dictionary, fail_after=1), manifest, refs, out,
                       "dev", {}, batch_size=2, progress=False)
    loaded = []
    real_load = recognizer.load
    monkeypatch.setattr(recognizer, "load", lambda path: loaded.append(Path(path).name) or real_load(path))
    resumed = evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), manifest, refs, out, "dev", {},
                             batch_size=2, progress=False)
    assert sorted(loaded) == ["1.wav", "3.wav", "4.wav", "5.wav"]  # the first batch is not read again
    assert [Path(p).name for p, _ in resumed.skipped] == ["2.wav"] and len(bad_rows(out)) == 1
    assert json.loads((out / "result.dev.json").read_text())["skipped"] == 1
    fresh = evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), manifest, refs, tmp_path / "fresh",
                           "dev", {}, batch_size=6, progress=False)
    assert resumed.hypotheses == fresh.hypotheses and resumed.skipped == fresh.skipped
    assert resumed.score == fresh.score


def test_precomputed_logits_decode_as_the_batched_model_does(recognizer, tmp_path):
    """split_logits (one model pass, per-item logits trimmed to their frames) feeds evaluate_split to the
    same hypotheses as decoding padded batches directly; audio shorter than a frame is skipped."""
    sizes = [200, 9_000, 16_000, 11_500]
    manifest = write_split(tmp_path, sizes, seed=20)
    refs = ["A", "B C", "D", "E F G"]
    logits = split_logits(recognizer, manifest, batch_size=3, progress=False)
    assert isinstance(logits[0], Skipped) and logits[0].reason.startswith("too short: 200 samples")
    assert [x.shape[0] for x in logits[1:]] == [recognizer.num_frames(n) for n in sizes[1:]]
    decoder = GreedyDecoder(recognizer.dictionary)
    direct = evaluate_split(recognizer, decoder, manifest, refs, tmp_path / "a", "dev", {}, batch_size=4,
                            progress=False)
    cached = evaluate_split(recognizer, decoder, manifest, refs, tmp_path / "b", "dev", {}, batch_size=4,
                            progress=False, logits=logits)
    assert cached.hypotheses == direct.hypotheses and any(direct.hypotheses)
    assert cached.score == direct.score and cached.skipped == direct.skipped and len(direct.skipped) == 1
    with pytest.raises(ValueError, match="3 logits for 4"):
        evaluate_split(recognizer, decoder, manifest, refs, tmp_path / "c", "dev", {}, logits=logits[:3])
