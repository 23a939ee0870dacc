"""The tuning library called from Python: the choice in tune.json is reused while every input is unchanged
and made again when one changes; the summary of a multi-split evaluation keeps earlier splits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import soundfile as sf

from speechcl.asr import tuning
from speechcl.asr.evaluate import SplitResult, update_summary
from speechcl.asr.lm import build_lm
from speechcl.asr.score import score
from speechcl.asr.tuning import decoder_settings, file_signature, tune_split, tuning_fingerprint
from speechcl.data.manifest import Manifest
from speechcl.models.checkpoint import save_checkpoint

from .conftest import noise

REFERENCES = ["THE CAT SAT", "A DOG RAN ON THE MAT", "HELLO"]
GRID = {"lm_weights": [0.0, 2.0], "word_scores": [-1.0, 1.0]}


@pytest.fixture()
def inputs(tmp_path, tiny_ctc, dictionary):
    """A saved model, a three-utterance split and a bigram LM, in ``tmp_path``."""
    audio = tmp_path / "audio"
    audio.mkdir()
    sizes = [16_000, 24_000, 12_000]
    for i, size in enumerate(sizes):
        sf.write(audio / f"{i}.flac", noise(size, seed=20 + i).numpy(), 16_000)
    manifest = Manifest(str(audio), [f"{i}.flac" for i in range(3)], sizes)
    text = tmp_path / "train.wrd"
    text.write_text("THE CAT SAT ON THE MAT\nA DOG RAN\nHELLO THE DOG\n")
    lm = tmp_path / "lm.arpa"
    build_lm(text, lm, order=2)
    model = save_checkpoint(tiny_ctc, tmp_path / "ctc", extra={"labels": dictionary.symbols})
    return {"model_path": model, "manifest": manifest, "lm": lm, "out": tmp_path / "eval"}


def _touch(path: Path) -> None:
    """A rewritten file: the same bytes, a later modification time."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_tuning_is_reused_until_an_input_file_changes(inputs, recognizer, monkeypatch):
    pytest.importorskip("flashlight.lib.text.decoder")
    manifest, out = inputs["manifest"], inputs["out"]

    def tune():
        return tune_split(recognizer, manifest, REFERENCES, "dev", out, model_path=inputs["model_path"],
                          lm=inputs["lm"], beam=4, progress=False, **GRID)

    first = tune()
    assert not first.reused and len(first.points) == 4 and len(first.logits) == 3
    assert (first.lm_weight, first.word_score) == (first.best.lm_weight, first.best.word_score)
    assert first.best.score.wer == min(p.score.wer for p in first.points)
    record = json.loads((out / "tune.json").read_text())
    assert record["best"]["lm_weight"] == first.lm_weight and len(record["grid"]) == 4

    calls = []
    real_split_logits = tuning.split_logits
    monkeypatch.setattr(tuning, "split_logits", lambda *a, **k: calls.append(1) or real_split_logits(*a, **k))
    again = tune()
    assert again.reused and again.logits is None and again.points == [] and calls == []  # the model did not run
    assert (again.lm_weight, again.word_score) == (first.lm_weight, first.word_score)

    _touch(inputs["lm"])  # a rebuilt LM
    assert not tune().reused and calls == [1]
    assert tune().reused and calls == [1]
    _touch(inputs["model_path"] / "model.safetensors")  # retrained weights in the same checkpoint folder
    assert not tune().reused and calls == [1, 1]


@pytest.mark.parametrize("change", ["model", "lm", "lexicon", "references", "manifest", "grid", "blank_penalties",
                                    "metric", "split", "beam"])
def test_the_fingerprint_changes_with_every_input(inputs, tmp_path, change):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("CAT C A T |\n")
    args = {"model_path": inputs["model_path"], "manifest": inputs["manifest"], "references": list(REFERENCES),
            "split": "dev", "beam": 4, "lm": inputs["lm"], "lexicon": lexicon, **GRID}
    before = tuning_fingerprint(**args)
    assert tuning_fingerprint(**args) == before
    if change == "model":
        _touch(inputs["model_path"] / "config.json")
    elif change == "lm":
        inputs["lm"].write_text(inputs["lm"].read_text() + "\n")
    elif change == "lexicon":
        _touch(lexicon)
    elif change == "references":
        args["references"][2] = "HELLO THERE"
    elif change == "manifest":
        args["manifest"] = inputs["manifest"].subset([0, 1])
    elif change == "grid":
        args["word_scores"] = [-1.0, 0.0]
    elif change == "blank_penalties":
        args["blank_penalties"] = [0.0, 1.0]
    elif change == "metric":
        args["metric"] = "cer"
    elif change == "split":
        args["split"] = "test"
    else:
        args["beam"] = 8
    assert tuning_fingerprint(**args) != before


def test_file_signature_covers_every_file_of_a_folder(inputs):
    files = file_signature(inputs["model_path"])
    assert sorted(Path(f[0]).name for f in files) == ["config.json", "model.safetensors"]
    assert file_signature(inputs["lm"]) == [[str(inputs["lm"]), inputs["lm"].stat().st_size,
                                             inputs["lm"].stat().st_mtime_ns]]


def test_greedy_decoding_cannot_be_tuned(inputs, recognizer):
    with pytest.raises(ValueError, match="beam search"):
        tune_split(recognizer, inputs["manifest"], REFERENCES, "dev", inputs["out"],
                   model_path=inputs["model_path"], progress=False, **GRID)
    assert decoder_settings() == {"decoder": "greedy"}
    assert decoder_settings(blank_penalty=1.5) == {"decoder": "greedy", "blank_penalty": 1.5}
    assert decoder_settings(lm="x.arpa")["beam"] == 50


def test_greedy_decoding_tunes_the_blank_penalty_on_cer(inputs, recognizer):
    """Greedy decoding with several blank penalties: every one is scored, the lowest CER wins, tune.json
    records it with the metric, and a rerun reads it back. The random model emits more letters than the
    references have (CER over 100%), so a negative penalty, favouring blank, wins."""
    penalties = [0.0, -3.0, -30.0]
    outcome = tune_split(recognizer, inputs["manifest"], REFERENCES, "dev", inputs["out"], lm_weights=[0.0],
                         word_scores=[0.0], blank_penalties=penalties, metric="cer",
                         model_path=inputs["model_path"], progress=False)
    assert [p.blank_penalty for p in outcome.points] == penalties
    cers = [p.score.cer for p in outcome.points]
    assert outcome.best.score.cer == min(cers) and outcome.blank_penalty == penalties[cers.index(min(cers))]
    assert outcome.blank_penalty != 0.0 and outcome.best.score.cer < outcome.points[0].score.cer
    record = json.loads((inputs["out"] / "tune.json").read_text())
    assert record["metric"] == "cer" and record["best"]["blank_penalty"] == outcome.blank_penalty
    again = tune_split(recognizer, inputs["manifest"], REFERENCES, "dev", inputs["out"], lm_weights=[0.0],
                       word_scores=[0.0], blank_penalties=penalties, metric="cer",
                       model_path=inputs["model_path"], progress=False)
    assert again.reused and again.blank_penalty == outcome.blank_penalty
    with pytest.raises(ValueError, match="unknown tuning metric 'ser'"):
        tune_split(recognizer, inputs["manifest"], REFERENCES, "dev", inputs["out"], lm_weights=[0.0],
                   word_scores=[0.0], blank_penalties=penalties, metric="ser", model_path=inputs["model_path"])


def test_update_summary_adds_splits_and_keeps_earlier_ones(tmp_path):
    def result(split: str, hyp: str) -> SplitResult:
        return SplitResult(split, score(["A B"], [hyp]), [hyp], ["A B"], 1.0, 0.1)

    update_summary(tmp_path, [result("dev", "A B"), result("test", "A")])
    summary = update_summary(tmp_path, [result("dev", "A C")])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert sorted(summary) == ["dev", "test"]
    assert summary["dev"]["wer"] == 0.5 and summary["test"]["wer"] == 0.5  # dev replaced, test kept
