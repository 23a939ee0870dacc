"""Batching and resuming of manifest evaluation."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from speechcl.asr.decode import GreedyDecoder
from speechcl.asr.evaluate import evaluate_split, split_logits
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


def test_audio_shorter_than_a_frame_decodes_to_nothing(recognizer, tmp_path):
    sizes = [200, 12_000]
    for i, n in enumerate(sizes):
        sf.write(tmp_path / f"{i}.wav", noise(n, seed=i).numpy(), 16_000)
    manifest = Manifest(str(tmp_path), ["0.wav", "1.wav"], sizes)
    for batch_size in (1, 2):
        result = evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), manifest, ["A", "B"],
                                tmp_path / f"out{batch_size}", "dev", {}, batch_size=batch_size, progress=False)
        assert result.hypotheses[0] == ""
        assert result.score.words.reference_length == 2


def test_precomputed_logits_decode_as_the_batched_model_does(recognizer, tmp_path):
    """split_logits (one model pass, per-item logits trimmed to their frames) feeds evaluate_split to the
    same hypotheses as decoding padded batches directly; audio shorter than a frame has no logits."""
    sizes = [200, 9_000, 16_000, 11_500]
    for i, n in enumerate(sizes):
        sf.write(tmp_path / f"{i}.wav", noise(n, seed=20 + i).numpy(), 16_000)
    manifest = Manifest(str(tmp_path), [f"{i}.wav" for i in range(len(sizes))], sizes)
    refs = ["A", "B C", "D", "E F G"]
    logits = split_logits(recognizer, manifest, batch_size=3, progress=False)
    assert logits[0] is None
    assert [x.shape[0] for x in logits[1:]] == [recognizer.num_frames(n) for n in sizes[1:]]
    decoder = GreedyDecoder(recognizer.dictionary)
    direct = evaluate_split(recognizer, decoder, manifest, refs, tmp_path / "a", "dev", {}, batch_size=4,
                            progress=False)
    cached = evaluate_split(recognizer, decoder, manifest, refs, tmp_path / "b", "dev", {}, batch_size=4,
                            progress=False, logits=logits)
    assert cached.hypotheses == direct.hypotheses and any(direct.hypotheses)
    assert cached.score == direct.score
    with pytest.raises(ValueError, match="3 logits for 4"):
        evaluate_split(recognizer, decoder, manifest, refs, tmp_path / "c", "dev", {}, logits=logits[:3])
