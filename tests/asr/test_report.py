"""``speechcl report``: the results table and its example utterances, over hand-built experiment folders
(and one decode folder written by the real ``evaluate_split``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import soundfile as sf

from speechcl.asr.decode import GreedyDecoder
from speechcl.asr.evaluate import evaluate_split, update_summary
from speechcl.asr.report import (
    DecodedSplit,
    collect_row,
    example_positions,
    examples_markdown,
    markdown_table,
    pick_examples,
    read_decoded,
)
from speechcl.cli import main

from .conftest import noise

REFS = [f"UTTERANCE NUMBER {i}" for i in range(10)]


def write_manifest(data: Path, split: str, names: list[str]) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / f"{split}.tsv").write_text(f"{data / 'audio'}\n" + "".join(f"spk/{n}.flac\t16000\n" for n in names))


def make_experiment(root: Path, name: str, hyps: dict[str, list[str]], refs: dict[str, list[str]] | None = None,
                    bad: dict[str, list[str]] | None = None, wer: float = 0.5) -> Path:
    """A fine-tuning exp_dir with config.yaml and decode/{summary.json, ref.S.txt, hyp.S.txt, bad.S.tsv}."""
    exp = root / name
    data = root / "data"
    decode = exp / "decode"
    decode.mkdir(parents=True)
    (exp / "config.yaml").write_text(f"data:\n  manifest_dir: {data}\n  train_subset: train-10m\nmodel:\n  init: ''\n")
    refs = refs or {split: REFS[: len(h)] for split, h in hyps.items()}
    summary = {}
    for split, lines in hyps.items():
        (decode / f"hyp.{split}.txt").write_text("".join(f"{line}\n" for line in lines))
        (decode / f"ref.{split}.txt").write_text("".join(f"{line}\n" for line in refs[split]))
        summary[split] = {"split": split, "wer": wer, "cer": wer / 2, "utterances": len(lines)}
    for split, paths in (bad or {}).items():
        (decode / f"bad.{split}.tsv").write_text("".join(f"{data / 'audio' / p}\tcannot read\n" for p in paths))
    (decode / "summary.json").write_text(json.dumps(summary))
    return exp


@pytest.fixture
def two_systems(tmp_path: Path) -> tuple[Path, Path]:
    write_manifest(tmp_path / "data", "dev-clean", [f"d{i}" for i in range(4)])
    write_manifest(tmp_path / "data", "test-clean", [f"utt-{i}" for i in range(10)])
    good = [r.replace("NUMBER", "NUMBR") for r in REFS]
    bad = ["" if i % 2 else "UTTERANCE" for i in range(10)]
    a = make_experiment(tmp_path, "a", {"dev-clean": REFS[:4], "test-clean": good}, wer=0.1)
    b = make_experiment(tmp_path, "b", {"dev-clean": REFS[:4], "test-clean": bad}, wer=0.9)
    return a, b


def test_table_rows_and_markdown_still_hold(two_systems: tuple[Path, Path]) -> None:
    a, b = two_systems
    rows = [collect_row(a), collect_row(b, system="scratch")]
    assert rows[0].system == "a" and rows[1].system == "scratch" and rows[0].pretrain_minutes == 0.0
    assert math.isnan(rows[0].labeled_minutes)  # no train-10m.tsv
    assert list(rows[0].scores) == ["dev-clean", "test-clean"]
    assert rows[1].scores["test-clean"] == {"wer": 0.9, "cer": 0.45}
    table = markdown_table(rows).splitlines()
    assert table[0] == "| system | pretraining min | labeled min | dev-clean WER | dev-clean CER | test-clean WER " \
                       "| test-clean CER |"
    assert table[2] == "| a | 0.0 | nan | 10.0 | 5.0 | 10.0 | 5.0 |"
    assert table[3].startswith("| scratch | 0.0 | nan | 90.0 | 45.0 |")


def test_positions_are_evenly_spaced_distinct_and_bounded() -> None:
    assert example_positions(10, 3) == [1, 5, 8]
    assert example_positions(10, 1) == [5]
    assert example_positions(4, 10) == [0, 1, 2, 3]
    assert example_positions(0, 3) == []
    for total in range(1, 30):
        for count in range(total + 3):
            positions = example_positions(total, count)
            assert len(set(positions)) == len(positions) == min(total, count)
            assert positions == sorted(positions) and all(0 <= p < total for p in positions)
    with pytest.raises(ValueError, match="-1"):
        example_positions(5, -1)


def test_examples_take_ids_from_the_manifest_and_score_each_hypothesis(two_systems: tuple[Path, Path]) -> None:
    a, b = two_systems
    decoded = [read_decoded(a, None, "test-clean", "pre"), read_decoded(b, a.parent / "b" / "decode", "test-clean")]
    assert decoded[0].ids == [f"utt-{i}" for i in range(10)] and decoded[1].system == "b"
    examples = pick_examples(decoded, 3)
    assert [e.utterance for e in examples] == ["utt-1", "utt-5", "utt-8"]
    first = examples[0]
    assert first.reference == "UTTERANCE NUMBER 1"
    (pre, pre_cer, pre_hyp), (sys_b, b_cer, b_hyp) = first.hypotheses
    assert (pre, pre_hyp, sys_b, b_hyp) == ("pre", "UTTERANCE NUMBR 1", "b", "")
    assert pre_cer == pytest.approx(1 / 18) and b_cer == 1.0
    assert examples[2].hypotheses[1] == ("b", pytest.approx(9 / 18), "UTTERANCE")
    text = examples_markdown(examples, "test-clean", 10)
    assert text.splitlines()[:6] == ["## Examples: test-clean (3 of 10 utterances, evenly spaced)", "", "```",
                                     "utt-1", "REF: UTTERANCE NUMBER 1", "pre (CER 5.6%): UTTERANCE NUMBR 1"]
    assert "b (CER 100.0%):\n" in text and text.endswith("```\n")


def test_skipped_files_are_left_out_of_the_ids(tmp_path: Path) -> None:
    write_manifest(tmp_path / "data", "dev", ["u0", "u1", "u2", "u3"])
    exp = make_experiment(tmp_path, "a", {"dev": ["X", "Y"]}, bad={"dev": ["spk/u0.flac", "spk/u2.flac"]})
    assert read_decoded(exp, None, "dev").ids == ["u1", "u3"]


@pytest.mark.parametrize("case", ["no manifest", "other manifest"])
def test_without_a_matching_manifest_the_ids_are_line_numbers(tmp_path: Path, case: str) -> None:
    if case == "other manifest":
        write_manifest(tmp_path / "data", "dev", ["u0", "u1", "u2"])
    exp = make_experiment(tmp_path, "a", {"dev": ["X", "Y"]})
    assert read_decoded(exp, None, "dev").ids == ["#1", "#2"]


def test_an_empty_hypothesis_line_is_kept(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path, "a", {"dev": ["", "Y", ""]})
    decoded = read_decoded(exp, None, "dev")
    assert decoded.hypotheses == ["", "Y", ""] and len(decoded.references) == 3


def test_systems_with_other_utterances_are_an_error(tmp_path: Path) -> None:
    base = DecodedSplit("a", "dev", ["u1", "u2", "u3"], ["A", "B", "C"], ["A", "B", "C"])
    with pytest.raises(ValueError, match=r"system b lacks 2 of the 3 utterances system a decoded \(e.g. u2\)"):
        pick_examples([base, DecodedSplit("b", "dev", ["u1"], ["A"], ["A"])], 1)
    with pytest.raises(ValueError, match="system c has 1 utterances that a has not"):
        pick_examples([base, DecodedSplit("c", "dev", ["u1", "u2", "u3", "u4"], list("ABCD"), list("ABCD"))], 1)
    with pytest.raises(ValueError, match=r"system d has another reference for 1 utterances \(e.g. u3\)"):
        pick_examples([base, DecodedSplit("d", "dev", ["u1", "u2", "u3"], list("ABX"), list("ABC"))], 1)
    with pytest.raises(ValueError, match=">= 0, got -2"):
        pick_examples([base], -2)
    assert pick_examples([base], 0) == []


def test_a_split_that_was_not_decoded_is_an_error(two_systems: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match=r"system a: split 'test-other' was not decoded .*dev-clean, test-clean"):
        read_decoded(two_systems[0], None, "test-other")


def test_misaligned_transcript_files_are_an_error(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path, "a", {"dev": ["X", "Y"]}, refs={"dev": ["X"]})
    with pytest.raises(ValueError, match="ref.dev.txt has 1 lines but .*hyp.dev.txt 2"):
        read_decoded(exp, None, "dev")


def test_examples_of_a_real_evaluate_output_folder(recognizer, tmp_path: Path) -> None:
    """The ids line up with what ``evaluate_split`` scored when it skipped a file."""
    audio, data = tmp_path / "audio", tmp_path / "data"
    audio.mkdir()
    names = ["s-0", "s-1", "s-2", "s-3"]
    for i, name in enumerate(names):
        sf.write(audio / f"{name}.wav", noise(4_000 + 800 * i, seed=i).numpy(), 16_000)
    (audio / "s-1.wav").write_bytes(b"not audio")
    data.mkdir()
    (data / "dev.tsv").write_text(f"{audio}\n" + "".join(f"{n}.wav\t{4_000 + 800 * i}\n" for i, n in enumerate(names)))
    from speechcl.data.manifest import read_manifest

    exp = make_experiment(tmp_path, "sys", {})
    (exp / "decode" / "summary.json").unlink()
    refs = ["A B", "C D", "E", "F G H"]
    result = evaluate_split(recognizer, GreedyDecoder(recognizer.dictionary), read_manifest(data / "dev.tsv"),
                            refs, exp / "decode", "dev", {}, progress=False)
    update_summary(exp / "decode", [result])
    decoded = read_decoded(exp, None, "dev")
    assert decoded.ids == ["s-0", "s-2", "s-3"]
    assert decoded.references == ["A B", "E", "F G H"] and decoded.hypotheses == result.hypotheses


def test_cli_prints_and_writes_table_and_examples(two_systems: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    a, b = two_systems
    out = tmp_path / "results.md"
    argv = ["report", str(a), str(b), "--names", "pretrained", "scratch", "--examples", "2", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    table, examples = printed.split("\n\n## Examples: test-clean (2 of 10 utterances, evenly spaced)\n")
    assert table.startswith("| system |") and table.count("\n") == 3
    assert examples.splitlines()[1:5] == ["```", "utt-2", "REF: UTTERANCE NUMBER 2",
                                          "pretrained (CER 5.6%): UTTERANCE NUMBR 2"]
    assert "scratch (CER 50.0%): UTTERANCE" in examples and "utt-7" in examples
    assert main(["report", str(a), "--examples", "1", "--examples-split", "dev-clean"]) == 0
    assert "## Examples: dev-clean (1 of 4 utterances" in capsys.readouterr().out
    assert main(["report", str(a), str(b)]) == 0
    assert "Examples" not in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "message"), [
    (["--examples", "-1"], "--examples must be 0 or more utterances, got -1"),
    (["--examples", "1", "--examples-split", "train"], "system a: split 'train' was not decoded"),
])
def test_cli_bad_examples_exit_2(two_systems: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                 extra: list[str], message: str) -> None:
    out = tmp_path / "results.md"
    assert main(["report", *map(str, two_systems), "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_cli_systems_with_other_utterances_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_manifest(tmp_path / "data", "dev", ["u0", "u1", "u2"])
    a = make_experiment(tmp_path, "a", {"dev": ["X", "Y", "Z"]})
    b = make_experiment(tmp_path, "b", {"dev": ["X", "Y"]})  # ids #1, #2: not the manifest's
    assert main(["report", str(a), str(b), "--examples", "1"]) == 2
    assert "system b lacks 3 of the 3 utterances system a decoded" in capsys.readouterr().err


def test_cli_a_system_without_the_default_split_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The default split is the first system's last one; a system that did not decode it is named."""
    a = make_experiment(tmp_path, "a", {"dev": ["X"], "test": ["Y"]})
    b = make_experiment(tmp_path, "b", {"dev": ["X"]})
    assert main(["report", str(a), str(b), "--examples", "1"]) == 2
    assert "system b: split 'test' was not decoded" in capsys.readouterr().err
    assert main(["report", str(b), str(a), "--examples", "1"]) == 0
    assert "## Examples: dev (1 of 1 utterances" in capsys.readouterr().out
