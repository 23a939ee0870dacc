"""``speechcl compare`` on hand-built method folders: each cell comes from the file it reports, what is missing
is '-' with a note, and a malformed file is an error that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechcl.analysis import compare
from speechcl.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_pretrain(folder: Path, updates: int, seconds: float, threads: int | None, log: list[dict],
                   cpu_seconds: float | None = None) -> None:
    result = {"num_updates": updates, "epoch": 0, "train_seconds": seconds, "valid": {"loss": 1.0}, "best": 1.0}
    if cpu_seconds is not None:
        result["train_cpu_seconds"] = cpu_seconds
    write_json(folder / "train_result.json", result)
    if threads is not None:
        (folder / "config.yaml").write_text(f"exp_dir: x\ntrainer:\n  threads: {threads}\n  max_update: 100\n")
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in log))


def probe_result(task: str, per_layer: list[float], weighted: float, best: int, chance: float,
                 metric: str = "accuracy") -> dict:
    return {"task": task, "metric": metric, "higher_is_better": metric == "accuracy", "chance": chance,
            "per_layer": {str(i): v for i, v in enumerate(per_layer)}, "weighted_sum": weighted,
            "best_layer": best, "train_value": {}, "weights": [], "counts": {}, "settings": {}}


def invariance_result(first: dict, last: dict) -> dict:
    labels = list(first)
    return {"model": "m", "layers": [0, 1, 2], "transforms": [{"label": label} for label in labels],
            "cosine": [first, {k: 0.5 for k in labels}, last], "cka": []}


def summary(dev: tuple[float, float], test: tuple[float, float]) -> dict:
    return {"dev-clean": {"wer": dev[0], "cer": dev[1], "utterances": 4},
            "test-clean": {"wer": test[0], "cer": test[1], "utterances": 3}}


TRAIN_LOG = [  # log_interval 10, then a resume from update 10 that logs update 20 again
    {"split": "train", "step": 10, "loss": 4.0, "audio_s_per_s": 30.0},
    {"split": "valid", "step": 10, "loss": 5.0},
    {"split": "train", "step": 20, "loss": 3.0, "audio_s_per_s": 999.0},
    {"split": "warning", "message": "something"},
    {"split": "train", "step": 20, "loss": 3.0, "audio_s_per_s": 20.0},
    {"split": "valid", "step": 20, "loss": 4.0},
    {"split": "train", "step": 25, "loss": 2.5, "audio_s_per_s": 40.0},
    {"split": "valid", "step": 25, "loss": 2.5},
]


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """wav2vec2: everything; hubert: pretraining only (its audio logged exactly); random: an empty folder;
    notes: a folder that is no method."""
    root = tmp_path / "exp"
    w = root / "wav2vec2"
    write_pretrain(w / "pretrain", 25, 600.0, 2, TRAIN_LOG)
    write_json(w / "probes/phone/results.json", probe_result("phone", [0.30, 0.42, 0.40], 0.45, 1, 0.103))
    write_json(w / "probes/ctc/results.json", probe_result("ctc", [0.9, 0.7, 0.8], 0.65, 1, 1.0, metric="cer"))
    write_json(w / "invariance/results.json", invariance_result(
        {"identity": 1.0, "noise": 0.6, "speed": 0.4, "pitch": None},
        {"identity": 1.0, "noise": 0.9, "speed": 0.7, "pitch": 0.8}))
    write_json(w / "finetune/decode/summary.json", summary((0.95, 0.41), (0.96, 0.435)))
    write_json(w / "finetune/decode_lm/summary.json", summary((0.49, 0.28), (0.562, 0.323)))
    write_pretrain(root / "hubert" / "pretrain", 4, 30.0, 1,
                   [{"split": "train", "step": 2, "loss": 7.0, "audio_s_per_s": 5.0, "audio_seconds": 32.0},
                    {"split": "train", "step": 4, "loss": 6.0, "audio_s_per_s": 5.0, "audio_seconds": 40.0}],
                   cpu_seconds=42.0)
    (root / "random").mkdir()
    (root / "notes").mkdir()
    return root


def table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (by method) of the first markdown table of ``text``."""
    rows, seen = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            seen = True
        elif seen:
            break
    return rows[0], {row[0]: row[1:] for row in rows[2:]}


def test_cells_come_from_their_files(experiment):
    results = [compare.collect_method(experiment / m, m) for m in ("wav2vec2", "hubert", "random")]
    head, rows = table(compare.markdown(results))
    assert head == ["method", "pretrain wall min", "CPU min", "updates", "audio h seen",
                    "phone acc best (layer)", "phone acc weighted", "ctc CER best (layer)", "ctc CER weighted",
                    "invariance cos first / last", "dev-clean CER %", "test-clean CER %", "test-clean WER %",
                    "test-clean WER % (LM)"]
    assert list(rows) == ["wav2vec2", "hubert", "random"]
    # 600 s on 2 threads; 25 updates; audio: rates 30 (10 updates), 20 (the resumed line: 10), 40 (5), averaged over
    # updates, times the wall time
    audio_hours = (30 * 10 + 20 * 10 + 40 * 5) / 25 * 600 / 3600
    assert rows["wav2vec2"][:4] == ["10.0", "20.0", "25", f"≈{audio_hours:.2f}"]
    # probes: best layer's score with its index, and the weighted sum (ctc: lowest CER is best)
    assert rows["wav2vec2"][4:8] == ["0.420 (1)", "0.450", "0.700 (1)", "0.650"]
    # invariance: mean cosine without identity and without what was not measured, first / last hidden state
    assert rows["wav2vec2"][8] == f"{(0.6 + 0.4) / 2:.2f} / {(0.9 + 0.7 + 0.8) / 3:.2f}"
    # greedy dev/test CER and test WER, LM test WER, in percent
    assert rows["wav2vec2"][9:] == ["41.0", "43.5", "96.0", "56.2"]
    # hubert logged its audio: exact, no ≈; 30 s of wall time on one thread, but its measured CPU time (42 s) is
    # what the CPU column shows
    assert rows["hubert"][:4] == ["0.5", "0.7", "4", f"{72 / 3600:.2g}"]
    assert rows["hubert"][4:] == ["-"] * 9
    assert rows["random"] == ["-"] * 13


def test_missing_pieces_are_noted(experiment):
    text = compare.markdown([compare.collect_method(experiment / m, m) for m in ("wav2vec2", "hubert", "random")])
    missing = text.split("## Missing")[1]
    for note in ("hubert: no probes/phone/results.json", "hubert: no probes/ctc/results.json",
                 "hubert: no invariance/results.json", "hubert: no finetune/decode/summary.json",
                 "hubert: no finetune/decode_lm/summary.json", "random: no pretrain/train_result.json",
                 "random: no probes/phone/results.json"):
        assert note in missing
    assert "wav2vec2:" not in missing
    assert "speaker" not in text and "keyword" not in text  # no method has them: no columns, no notes
    assert "Chance levels: phone 0.103, ctc 1.000." in text
    inv_head, inv_rows = table(text.split("## Invariance")[1])
    assert inv_head == ["method", "noise", "speed", "pitch"]
    assert inv_rows == {"wav2vec2": ["0.60 / 0.90", "0.40 / 0.70", "- / 0.80"]}


def test_a_folder_that_is_not_there(tmp_path):
    result = compare.collect_method(tmp_path / "moco", "moco")
    assert result.pretraining is None and result.notes == [f"moco: no folder {tmp_path / 'moco'}"]


def test_audio_seen():
    assert compare.audio_seen({}, 0, 5.0) == (0.0, True)
    assert compare.audio_seen({}, 3, 5.0) == (None, False)
    exact = {"train": {"audio_seconds": ([1, 2], [10.0, 6.0]), "audio_s_per_s": ([1, 2], [1.0, 1.0])}}
    assert compare.audio_seen(exact, 2, 5.0) == (16.0, True)
    rates = {"train": {"audio_s_per_s": ([4, 6], [10.0, 40.0])}}
    assert compare.audio_seen(rates, 6, 60.0) == (pytest.approx((10 * 4 + 40 * 2) / 6 * 60), False)


def test_discover_methods(experiment):
    (experiment / "zeta" / "finetune").mkdir(parents=True)
    (experiment / "alpha" / "probes").mkdir(parents=True)
    assert compare.discover_methods(experiment) == ["wav2vec2", "hubert", "alpha", "zeta"]


def test_relative_curves(experiment):
    runs = compare.relative_curves([compare.collect_method(experiment / m, m) for m in ("wav2vec2", "hubert")])
    assert [name for name, _ in runs] == ["wav2vec2", "hubert"]
    curves = dict(runs)
    assert curves["wav2vec2"]["valid"]["loss / first"] == ([10, 20, 25], [1.0, 0.8, 0.5])
    assert curves["wav2vec2"]["train"]["loss / first"] == ([10, 20, 25], [1.0, 0.75, 0.625])
    assert "valid" not in curves["hubert"]  # no validation logged


@pytest.mark.parametrize("path, content, message", [
    ("wav2vec2/probes/phone/results.json", "{not json", "is not valid JSON"),
    ("wav2vec2/probes/phone/results.json", json.dumps({"task": "phone"}), "has no 'metric'"),
    ("wav2vec2/probes/phone/results.json",
     json.dumps(probe_result("phone", [0.1, 0.2], 0.2, 7, 0.1)), "best_layer 7 is not one of the probed layers"),
    ("wav2vec2/pretrain/train_result.json", json.dumps({"num_updates": 3}), "has no 'train_seconds'"),
    ("wav2vec2/pretrain/train_result.json", json.dumps([1, 2]), "should be a JSON object"),
    ("wav2vec2/pretrain/train_result.json", json.dumps({"num_updates": 3, "train_seconds": 5.0,
                                                         "train_cpu_seconds": -1.0}), "train_cpu_seconds -1.0"),
    ("wav2vec2/pretrain/config.yaml", "trainer: [unclosed", "is not valid YAML"),
    ("wav2vec2/finetune/decode/summary.json", json.dumps({"dev-clean": {"wer": "high", "cer": 0.1}}),
     "dev-clean.wer should be a number"),
    ("wav2vec2/finetune/decode_lm/summary.json", json.dumps({"test-clean": {"wer": 0.5}}), "has no 'cer'"),
    ("wav2vec2/invariance/results.json", json.dumps({"layers": [0, 1], "cosine": [{}], "transforms": [{}]}),
     "cosine has 1 rows for 2 layers"),
])
def test_a_malformed_file_is_named(experiment, capsys, path, content, message):
    (experiment / path).write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        compare.collect_method(experiment / "wav2vec2")
    assert str(experiment / path) in str(err.value)
    assert main(["compare", str(experiment)]) == 2
    assert str(experiment / path) in capsys.readouterr().err
    assert not (experiment / "results.md").exists()


def test_cli_writes_the_table_and_figures(experiment, tmp_path, capsys):
    out = tmp_path / "report" / "table.md"
    assert main(["compare", str(experiment), "--methods", "wav2vec2", "hubert", "random", "moco",
                 "--output", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out
    _, rows = table(text)
    assert list(rows) == ["wav2vec2", "hubert", "random", "moco"]
    assert f"moco: no folder {experiment / 'moco'}" in text
    for name in (compare.CURVES_PNG, compare.PROBES_PNG, compare.INVARIANCE_PNG):
        assert (out.parent / name).read_bytes().startswith(PNG)
    assert not list(out.parent.glob("*.tmp")) and not list(out.parent.glob(".*"))


def test_cli_defaults_and_nothing_to_plot(experiment, capsys):
    for m in ("wav2vec2", "hubert"):
        (experiment / m / "pretrain" / "log.jsonl").unlink()
    assert main(["compare", str(experiment)]) == 0
    text = (experiment / "results.md").read_text()
    assert list(table(text)[1]) == ["wav2vec2", "hubert"]  # the method folders, in the recipe's order
    assert "wav2vec2: no pretrain/log.jsonl" in text
    assert "Not plotted (nothing to show yet): curves." in text
    assert not (experiment / compare.CURVES_PNG).exists()
    assert (experiment / compare.PROBES_PNG).exists() and (experiment / compare.INVARIANCE_PNG).exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "holds no method folders" in capsys.readouterr().err
