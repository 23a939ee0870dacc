"""End to end through the ``speechcl`` command: evaluate, transcribe, align and lm build on real files.

The tiny models are randomly initialised, so transcripts are garbage; what is checked is that every
output is well-formed, files of any rate and channel count work, and empty hypotheses are scored.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from speechcl.asr import commands
from speechcl.audio.io import audio_info
from speechcl.data.labels import write_dict
from speechcl.models.checkpoint import save_checkpoint

from .conftest import LETTERS, noise


def main(argv: list[str]) -> int:
    """``speechcl.cli.main`` restricted to this package's verbs (other packages' verbs may be in flux)."""
    parser = argparse.ArgumentParser(prog="speechcl")
    commands.register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


TRANSCRIPTS = ["THE CAT SAT", "A DOG RAN ON THE MAT", "HELLO"]
FILES = [("a.flac", 16_000, 1, 1.2), ("b.wav", 8_000, 2, 2.0), ("c.wav", 22_050, 1, 0.8)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_ctc, dictionary):
    root = tmp_path_factory.mktemp("cli")
    audio = root / "audio"
    audio.mkdir()
    lines = [str(audio)]
    for i, (name, rate, channels, seconds) in enumerate(FILES):
        n = int(rate * seconds)
        wave = noise(n * channels, seed=10 + i).numpy().reshape(n, channels)
        sf.write(audio / name, wave, rate)
        lines.append(f"{name}\t{audio_info(audio / name).num_samples()}")
    data = root / "data"
    data.mkdir()
    (data / "dev.tsv").write_text("\n".join(lines) + "\n")
    (data / "dev.wrd").write_text("\n".join(TRANSCRIPTS) + "\n")
    (data / "train.wrd").write_text("THE CAT SAT ON THE MAT\nA DOG RAN\nHELLO THE DOG\n")
    write_dict(data / "dict.ltr.txt", [(s, 10) for s in LETTERS])

    labelled = save_checkpoint(tiny_ctc, root / "ctc", extra={"labels": dictionary.symbols})
    blank_model = type(tiny_ctc)(tiny_ctc.cfg, tiny_ctc.vocab_size)
    blank_model.load_state_dict(tiny_ctc.state_dict())
    with torch.no_grad():
        blank_model.head.bias[0] = 1e4  # emits only blanks: empty hypotheses
    unlabelled = save_checkpoint(blank_model, root / "blank")
    return root, data, labelled, unlabelled


def test_evaluate_greedy_writes_well_formed_outputs(corpus, capsys):
    root, data, model, _ = corpus
    out = root / "eval-greedy"
    assert main(["evaluate", "--model", str(model), "--manifest", str(data / "dev.tsv"),
                 "--output", str(out), "--batch-size", "2", "--quiet", "--device", "cpu"]) == 0
    hyps = (out / "hyp.dev.txt").read_text().splitlines()
    refs = (out / "ref.dev.txt").read_text().splitlines()
    assert refs == TRANSCRIPTS and len(hyps) == 3
    result = json.loads((out / "result.dev.json").read_text())
    assert result["utterances"] == 3 and result["words"]["reference_length"] == 10
    assert result["wer"] >= 0 and result["cer"] >= 0 and result["settings"]["decoder"] == "greedy"
    assert json.loads((out / "summary.json").read_text())["dev"]["wer"] == result["wer"]
    assert not list(out.glob(".*partial*"))
    assert "dev\tWER" in capsys.readouterr().out


def test_evaluate_scores_empty_hypotheses_with_dict_next_to_manifest(corpus):
    root, data, _, blank = corpus
    out = root / "eval-blank"
    assert main(["evaluate", "--model", str(blank), "--manifest", str(data / "dev.tsv"),
                 "--labels", str(data / "dev.wrd"), "--output", str(out), "--quiet", "--device", "cpu"]) == 0
    assert (out / "hyp.dev.txt").read_text() == "\n\n\n"
    result = json.loads((out / "result.dev.json").read_text())
    assert result["wer"] == 1.0 and result["cer"] == 1.0 and result["words"]["deletions"] == 10


def test_evaluate_on_another_corpus_uses_the_checkpoint_labels(corpus, tmp_path):
    """A corpus's own dict.ltr.txt (other counts, other order) must not override or clash with the labels
    the checkpoint was fine-tuned with; only an explicit --dict is checked against them."""
    root, data, model, _ = corpus
    other = tmp_path / "other"
    other.mkdir()
    (other / "dev.tsv").write_text((data / "dev.tsv").read_text())
    (other / "dev.wrd").write_text((data / "dev.wrd").read_text())
    write_dict(other / "dict.ltr.txt", [(s, 10) for s in reversed(LETTERS)])
    assert main(["evaluate", "--model", str(model), "--manifest", str(other / "dev.tsv"),
                 "--output", str(tmp_path / "o"), "--quiet", "--device", "cpu"]) == 0
    assert main(["evaluate", "--model", str(model), "--manifest", str(other / "dev.tsv"), "--dict",
                 str(other / "dict.ltr.txt"), "--output", str(tmp_path / "o2"), "--quiet", "--device", "cpu"]) == 2


def test_evaluate_without_dictionary_fails_with_a_clear_message(corpus, tmp_path, capsys):
    root, data, _, blank = corpus
    manifest = tmp_path / "dev.tsv"
    manifest.write_text((data / "dev.tsv").read_text())
    assert main(["evaluate", "--model", str(blank), "--manifest", str(manifest), "--labels",
                 str(data / "dev.wrd"), "--output", str(tmp_path / "o"), "--quiet", "--device", "cpu"]) == 2
    assert "--dict" in capsys.readouterr().err


def test_lm_build_then_beam_evaluate(corpus, capsys):
    pytest.importorskip("flashlight.lib.text.decoder")
    root, data, model, _ = corpus
    arpa, lexicon = root / "lm.arpa", root / "lexicon.txt"
    assert main(["lm", "build", "--text", str(data / "train.wrd"), "--order", "3", "--out", str(arpa),
                 "--lexicon-out", str(lexicon), "--dict", str(data / "dict.ltr.txt")]) == 0
    assert "THE T H E |" in lexicon.read_text().splitlines()
    assert "wrote" in capsys.readouterr().out
    out = root / "eval-lm"
    assert main(["evaluate", "--model", str(model), "--manifest", str(data / "dev.tsv"), "--output", str(out),
                 "--beam", "8", "--lm", str(arpa), "--lexicon", str(lexicon), "--lm-weight", "1",
                 "--word-score", "-0.5", "--quiet", "--device", "cpu"]) == 0
    vocabulary = set(" ".join(TRANSCRIPTS + ["THE CAT SAT ON THE MAT A DOG RAN HELLO"]).split())
    for hyp in (out / "hyp.dev.txt").read_text().splitlines():
        assert set(hyp.split()) <= vocabulary  # lexicon-constrained output
    assert json.loads((out / "result.dev.json").read_text())["settings"]["beam"] == 8


def test_transcribe_any_rate_and_long_files(corpus, capsys):
    root, _, model, _ = corpus
    audio = sorted((root / "audio").iterdir())
    long_file = root / "long.wav"
    sf.write(long_file, noise(44_100 * 5, seed=99).numpy(), 44_100)
    assert main(["transcribe", "--model", str(model), *map(str, audio), str(long_file),
                 "--chunk-seconds", "2", "--overlap-seconds", "0.5", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [*map(str, audio), str(long_file)]
    assert all(len(line.split("\t")) == 2 for line in lines)
    broken = root / "broken.wav"
    broken.write_bytes(b"not audio")
    assert main(["transcribe", "--model", str(model), str(broken), str(audio[0]), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "broken.wav" in captured.err and captured.out.startswith(str(audio[0]))


def test_align_outputs_word_times(corpus, capsys, tmp_path):
    root, _, model, _ = corpus
    audio = root / "audio" / "b.wav"  # 2 s stereo at 8 kHz
    transcript = tmp_path / "b.txt"
    transcript.write_text("a dog ran\n")
    assert main(["align", "--model", str(model), str(audio), str(transcript), "--device", "cpu"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == ["A", "DOG", "RAN"]
    times = np.array([[float(r[1]), float(r[2])] for r in rows])
    assert (times[:, 0] < times[:, 1]).all() and (times[1:, 0] >= times[:-1, 1]).all()
    assert times.min() >= 0 and times.max() <= 2.0
    out = tmp_path / "b.json"
    assert main(["align", "--model", str(model), str(audio), "HELLO", "--format", "json",
                 "--output", str(out), "--device", "cpu"]) == 0
    (item,) = json.loads(out.read_text())
    assert item["word"] == "HELLO" and 0 <= item["start"] < item["end"] <= 2.0


def test_verbs_are_registered_with_the_speechcl_command():
    from speechcl import cli

    assert "speechcl.asr.commands" in cli._COMMAND_MODULES


def test_evaluate_tunes_lm_weight_and_word_score_on_one_split(corpus, capsys, tmp_path):
    """Several --lm-weight/--word-score values: the --tune-on split chooses them (tune.json), every split
    is decoded with the choice exactly as a run given only those values, and a rerun reuses the choice."""
    pytest.importorskip("flashlight.lib.text.decoder")
    root, data, model, _ = corpus
    arpa = root / "lm-tune.arpa"
    assert main(["lm", "build", "--text", str(data / "train.wrd"), "--order", "2", "--out", str(arpa)]) == 0
    test = tmp_path / "test.tsv"
    test.write_text((data / "dev.tsv").read_text())
    (tmp_path / "test.wrd").write_text((data / "dev.wrd").read_text())
    common = ["evaluate", "--model", str(model), "--beam", "8", "--lm", str(arpa), "--quiet", "--device", "cpu"]
    manifests = ["--manifest", str(test), str(data / "dev.tsv")]
    out = tmp_path / "tuned"
    capsys.readouterr()
    assert main(common + manifests + ["--output", str(out), "--lm-weight", "0", "1", "3",
                                      "--word-score", "-1", "1", "--tune-on", "dev"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("tune dev\tlm_weight") == 6 and "chose lm_weight" in printed
    record = json.loads((out / "tune.json").read_text())
    assert record["split"] == "dev" and len(record["grid"]) == 6
    best = record["best"]
    assert best["wer"] == min(p["wer"] for p in record["grid"])
    settings = json.loads((out / "result.dev.json").read_text())["settings"]
    assert (settings["lm_weight"], settings["word_score"], settings["tuned_on"]) == (
        best["lm_weight"], best["word_score"], "dev")
    assert json.loads((out / "result.dev.json").read_text())["wer"] == best["wer"]
    single = tmp_path / "single"
    assert main(common + manifests + ["--output", str(single), "--lm-weight", str(best["lm_weight"]),
                                      "--word-score", str(best["word_score"])]) == 0
    for split in ("dev", "test"):
        assert (single / f"hyp.{split}.txt").read_text() == (out / f"hyp.{split}.txt").read_text()
    capsys.readouterr()
    assert main(common + manifests + ["--output", str(out), "--lm-weight", "0", "1", "3",
                                      "--word-score", "-1", "1", "--tune-on", "dev"]) == 0
    assert "tune dev" not in capsys.readouterr().out  # the recorded choice is reused
    os.utime(arpa, ns=(arpa.stat().st_atime_ns, arpa.stat().st_mtime_ns + 10**9))  # a rebuilt LM
    assert main(common + manifests + ["--output", str(out), "--lm-weight", "0", "1", "3",
                                      "--word-score", "-1", "1", "--tune-on", "dev"]) == 0
    assert "chose lm_weight" in capsys.readouterr().out  # tuned again


def test_evaluate_tunes_the_blank_penalty_of_greedy_decoding_on_cer(corpus, capsys, tmp_path):
    """Greedy decoding with several --blank-penalty values and --tune-metric cer: the dev split chooses the
    penalty with the lowest CER, the results record it, and decoding equals a run given only that value."""
    _, data, model, _ = corpus
    common = ["evaluate", "--model", str(model), "--manifest", str(data / "dev.tsv"), "--quiet", "--device", "cpu"]
    out = tmp_path / "tuned"
    capsys.readouterr()
    assert main(common + ["--output", str(out), "--blank-penalty", "0", "4", "40", "--tune-metric", "cer"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("tune dev\tblank_penalty") == 3 and "lm_weight" not in printed
    record = json.loads((out / "tune.json").read_text())
    assert record["metric"] == "cer" and record["best"]["cer"] == min(p["cer"] for p in record["grid"])
    chosen = record["best"]["blank_penalty"]
    assert f"chose blank_penalty {chosen:g} (CER" in printed
    result = json.loads((out / "result.dev.json").read_text())
    assert result["settings"]["decoder"] == "greedy" and result["settings"]["tuned_by"] == "cer"
    assert result["settings"].get("blank_penalty", 0.0) == chosen and result["cer"] == record["best"]["cer"]
    single = tmp_path / "single"
    assert main(common + ["--output", str(single), "--blank-penalty", str(chosen)]) == 0
    assert (single / "hyp.dev.txt").read_text() == (out / "hyp.dev.txt").read_text()
    plain = tmp_path / "plain"
    assert main(common + ["--output", str(plain), "--blank-penalty", "40"]) == 0
    assert json.loads((plain / "result.dev.json").read_text())["settings"]["blank_penalty"] == 40.0


@pytest.mark.parametrize("extra, message", [
    (["--lm-weight", "1", "2"], "add --lm"),
    (["--beam", "4", "--lm-weight", "1", "2", "--tune-on", "nope"], "none of the manifests"),
    (["--beam", "4", "--tune-on", "dev"], "needs several"),
    (["--blank-penalty", "0", "1", "--word-score", "0", "1"], "add --lm"),
])
def test_evaluate_tuning_errors(corpus, capsys, tmp_path, extra, message):
    root, data, model, _ = corpus
    assert main(["evaluate", "--model", str(model), "--manifest", str(data / "dev.tsv"), "--output",
                 str(tmp_path / "o"), "--quiet", "--device", "cpu", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "1e999"])
def test_a_non_finite_blank_penalty_is_refused(corpus, capsys, tmp_path, value):
    _, data, model, _ = corpus
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(model), "--manifest", str(data / "dev.tsv"), "--output", str(tmp_path / "o"),
              "--quiet", "--device", "cpu", "--blank-penalty", "0", value])
    assert exit_info.value.code == 2
    assert f"--blank-penalty: must be a finite number, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
