"""The fuzzed folder (speechcl.testing.fuzz) through ``evaluate``, ``transcribe`` and ``align``: no job dies
of one bad file, every bad file is named with its reason, the good ones are still decoded, nothing
half-written is left behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from speechcl.audio.io import AudioError, audio_info
from speechcl.models.checkpoint import save_checkpoint
from speechcl.testing.fuzz import write_fuzzed_folder

from .test_cli import main

WORDS = ["THE", "CAT", "SAT", "ON", "A", "MAT", "DOG", "RAN"]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, tiny_ctc, dictionary):
    """The fuzzed folder, a manifest of every file in it with transcripts, and a labelled CTC checkpoint."""
    root = tmp_path_factory.mktemp("fuzz")
    audio = root / "audio"
    verdicts = write_fuzzed_folder(audio, seed=3)
    names = sorted(verdicts)
    lines = [str(audio)]
    for name in names:
        try:
            size = audio_info(audio / name).num_samples()
        except AudioError:
            size = 0
        lines.append(f"{name}\t{size}")
    data = root / "data"
    data.mkdir()
    (data / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    transcripts = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 3)) for i in range(len(names))]
    (data / "dev.wrd").write_text("\n".join(transcripts) + "\n")
    model = save_checkpoint(tiny_ctc, root / "ctc", extra={"labels": dictionary.symbols})
    return root, audio, data, model, verdicts


def test_evaluate_skips_and_names_every_bad_file_and_scores_the_rest(fuzzed, capsys):
    root, audio, data, model, verdicts = fuzzed
    good = sorted(name for name, verdict in verdicts.items() if verdict == "ok")
    bad = sorted(name for name, verdict in verdicts.items() if verdict != "ok")
    assert len(bad) >= 8 and len(good) >= 8
    out = root / "eval"
    assert main(["evaluate", "--model", str(model), "--manifest", str(data / "dev.tsv"), "--output", str(out),
                 "--batch-size", "4", "--quiet", "--device", "cpu"]) == 0
    rows = [line.split("\t") for line in (out / "bad.dev.tsv").read_text(encoding="utf-8").splitlines()]
    assert sorted(Path(path).relative_to(audio).as_posix() for path, _ in rows) == bad
    assert all(reason.strip() for _, reason in rows)
    too_short = {Path(p).name for p, reason in rows if reason.startswith("too short")}
    assert too_short == {name for name in bad if verdicts[name] == "too-short"}
    assert len((out / "hyp.dev.txt").read_text(encoding="utf-8").splitlines()) == len(good)
    result = json.loads((out / "result.dev.json").read_text())
    assert (result["files"], result["skipped"], result["utterances"]) == (len(verdicts), len(bad), len(good))
    assert all(math.isfinite(result[k]) for k in ("wer", "cer", "audio_seconds"))
    summary = json.loads((out / "summary.json").read_text())["dev"]
    assert (summary["files"], summary["skipped"]) == (len(verdicts), len(bad))
    captured = capsys.readouterr()
    assert f"{len(bad)} files skipped, scored on {len(good)} of {len(verdicts)}" in captured.out
    for name in bad:
        assert f"skipped {audio / name}: " in captured.err
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["bad.dev.tsv", "hyp.dev.txt", "ref.dev.txt",
                                                     "result.dev.json", "summary.json"]


def test_transcribe_names_bad_files_on_stderr_and_transcribes_the_others(fuzzed, capsys):
    _, audio, _, model, verdicts = fuzzed
    names = sorted(verdicts)
    assert main(["transcribe", "--model", str(model), *[str(audio / n) for n in names], "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    printed = [line.split("\t")[0] for line in captured.out.splitlines()]
    assert printed == [str(audio / n) for n in names if verdicts[n] == "ok"]
    errors = captured.err.splitlines()
    assert len(errors) == len(names) - len(printed)
    for name in names:
        if verdicts[name] != "ok":
            (line,) = [e for e in errors if e.startswith(f"speechcl transcribe: skipped {audio / name}: ")]
            assert line.split(": ", 2)[2].startswith("too short") == (verdicts[name] == "too-short")
    good = [str(audio / n) for n in names if verdicts[n] == "ok"][:2]
    assert main(["transcribe", "--model", str(model), *good, "--device", "cpu"]) == 0


def test_align_reports_bad_audio_and_bad_transcripts_without_a_traceback(fuzzed, capsys, tmp_path):
    _, audio, _, model, verdicts = fuzzed
    good = str(audio / "good_0.flac")
    for name in ("nan.wav", "one_sample.wav", "truncated.flac"):
        assert main(["align", "--model", str(model), str(audio / name), "THE CAT", "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"speechcl align: cannot use {audio / name}: ") and len(err.splitlines()) == 1
    latin1 = tmp_path / "transcript.txt"
    latin1.write_bytes("CAF\xc9 OLÉ".encode("latin-1"))
    assert main(["align", "--model", str(model), good, str(latin1), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(latin1) in err and "not valid UTF-8" in err and "Traceback" not in err
    # a transcript given as text, longer than a file name may be: not mistaken for a path
    assert main(["align", "--model", str(model), good, " ".join(["THE CAT SAT"] * 40), "--device", "cpu"]) == 2
    assert "frames" in capsys.readouterr().err


def test_evaluate_tuning_on_a_split_with_bad_files(fuzzed, capsys):
    """The tuning split's bad files are left out of the grid's scores and reported like any split's."""
    pytest.importorskip("flashlight.lib.text.decoder")
    root, audio, data, model, verdicts = fuzzed
    arpa = root / "lm.arpa"
    (root / "lm.txt").write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) + "\n")
    assert main(["lm", "build", "--text", str(root / "lm.txt"), "--order", "2", "--out", str(arpa)]) == 0
    out = root / "tuned"
    assert main(["evaluate", "--model", str(model), "--manifest", str(data / "dev.tsv"), "--output", str(out),
                 "--beam", "4", "--lm", str(arpa), "--lm-weight", "0", "1", "--quiet", "--device", "cpu"]) == 0
    bad = sorted(name for name, verdict in verdicts.items() if verdict != "ok")
    rows = (out / "bad.dev.tsv").read_text(encoding="utf-8").splitlines()
    assert sorted(Path(row.split("\t")[0]).relative_to(audio).as_posix() for row in rows) == bad
    record = json.loads((out / "tune.json").read_text())
    result = json.loads((out / "result.dev.json").read_text())
    assert record["best"]["wer"] == result["wer"] and result["skipped"] == len(bad)
    assert "chose lm_weight" in capsys.readouterr().out
