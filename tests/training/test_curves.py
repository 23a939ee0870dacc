"""Training curves: ``read_log`` over hand-written ``log.jsonl`` files, ``curves_png`` and ``speechcl curves``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from speechcl.cli import main
from speechcl.training.curves import curves_png, parse_metric, read_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_log(exp: Path, lines: list[dict | str]) -> Path:
    exp.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line) + "\n") for line in lines)
    (exp / "log.jsonl").write_text(text)
    return exp


def pretrain_log(exp: Path, scale: float = 1.0) -> Path:
    lines: list[dict | str] = []
    for step in (10, 20, 30, 40):
        lines.append({"split": "train", "step": step, "loss": scale * 5.0 / step, "lr": 1e-4})
        if step % 20 == 0:
            lines.append({"split": "valid", "step": step, "loss": scale * 4.0 / step, "accuracy": step / 50,
                          "best": scale * 4.0 / step})
    return write_log(exp, lines)


def test_curves_are_sorted_by_split_and_metric(tmp_path: Path) -> None:
    curves = read_log(pretrain_log(tmp_path / "a"))
    assert set(curves) == {"train", "valid"}
    assert curves["train"]["loss"] == ([10, 20, 30, 40], [0.5, 0.25, 5.0 / 30, 0.125])
    assert curves["valid"]["accuracy"] == ([20, 40], [0.4, 0.8])
    assert set(curves["valid"]) == {"loss", "accuracy", "best"}


def test_a_repeated_step_takes_the_later_line_and_drops_the_stale_future(tmp_path: Path) -> None:
    """A resumed run logs updates again: later lines win, and steps the crashed run logged past the
    resume point are replaced by the resumed run's history."""
    exp = write_log(tmp_path / "a", [
        {"split": "valid", "step": 10, "loss": 3.0},
        {"split": "valid", "step": 20, "loss": 2.0},
        {"split": "valid", "step": 20, "loss": 1.9},  # the final validation at the same update
        {"split": "train", "step": 25, "loss": 9.0},
        {"split": "valid", "step": 30, "loss": 1.0},  # crashed after this; resumed from update 20
        {"split": "train", "step": 20, "loss": 8.0},  # the train split's own history is rewritten too
        {"split": "valid", "step": 20, "loss": 1.8},
        {"split": "valid", "step": 40, "loss": 1.5},
    ])
    curves = read_log(exp)
    assert curves["valid"]["loss"] == ([10, 20, 40], [3.0, 1.8, 1.5])
    assert curves["train"]["loss"] == ([20], [8.0])


def test_warning_lines_and_non_numeric_values_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exp = write_log(tmp_path / "a", [
        {"split": "warning", "message": "contrastive loss is still at chance"},
        {"split": "train", "step": 1, "loss": 2.0, "note": "text", "flag": True, "nested": {"x": 1}, "n": 3},
        {"split": "warning", "message": "codebook collapse"},
    ])
    with caplog.at_level(logging.WARNING, logger="speechcl.curves"):
        assert read_log(exp) == {"train": {"loss": ([1], [2.0]), "n": ([1], [3.0])}}
    assert not caplog.records  # warning lines are part of a healthy log


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exp = write_log(tmp_path / "a", [{"split": "train", "step": 1, "loss": 2.0},
                                     {"split": "train", "step": 2, "loss": 1.0}, '{"split": "train", "st'])
    with caplog.at_level(logging.WARNING, logger="speechcl.curves"):
        curves = read_log(exp)
    assert curves == {"train": {"loss": ([1, 2], [2.0, 1.0])}}
    assert any(str(exp / "log.jsonl") in r.getMessage() and "line 3" in r.getMessage() for r in caplog.records)


def test_a_missing_log_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a speechcl training experiment") as info:
        read_log(tmp_path / "nope")
    assert str(tmp_path / "nope" / "log.jsonl") in str(info.value)


@pytest.mark.parametrize("text", ["valid", "valid:", ":loss", "a:b:c", ""])
def test_bad_metric_syntax(text: str) -> None:
    with pytest.raises(ValueError, match="SPLIT:KEY"):
        parse_metric(text)


def _read_png(path: Path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.load()
        return image.format, image.size


def test_png_is_written_atomically_with_one_panel_per_metric(tmp_path: Path) -> None:
    runs = [("a", read_log(pretrain_log(tmp_path / "a"))), ("b", read_log(pretrain_log(tmp_path / "b", 2.0)))]
    out = tmp_path / "plots" / "curves.png"
    assert curves_png(runs, [("valid", "loss"), ("valid", "accuracy")], out, title="t") == out
    fmt, (width, height) = _read_png(out)
    assert fmt == "PNG" and width > height  # two panels side by side
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary left behind
    four = tmp_path / "four.png"
    curves_png(runs, [("valid", "loss"), ("valid", "accuracy"), ("train", "loss"), ("train", "lr")], four)
    _, (width4, height4) = _read_png(four)
    assert width4 == width and height4 > 1.5 * height  # a second row


def test_a_metric_of_some_runs_only_leaves_the_others_out(tmp_path: Path) -> None:
    finetune = write_log(tmp_path / "ft", [{"split": "valid", "step": 5, "loss": 1.0, "wer": 0.9, "cer": 0.5}])
    runs = [("pre", read_log(pretrain_log(tmp_path / "pre"))), ("ft", read_log(finetune))]
    out = tmp_path / "c.png"
    curves_png(runs, [("valid", "accuracy"), ("valid", "wer")], out)
    assert _read_png(out)[0] == "PNG"


def test_a_metric_no_run_logged_lists_the_available_ones(tmp_path: Path) -> None:
    runs = [("a", read_log(pretrain_log(tmp_path / "a")))]
    with pytest.raises(ValueError, match="valid:wer") as info:
        curves_png(runs, [("valid", "loss"), ("valid", "wer")], tmp_path / "c.png")
    message = str(info.value)
    assert "valid:accuracy" in message and "train:lr" in message and "runs (a)" in message
    assert not (tmp_path / "c.png").exists()


def test_the_output_must_be_a_png(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=".png"):
        curves_png([("a", read_log(pretrain_log(tmp_path / "a")))], [("valid", "loss")], tmp_path / "c.pdf")


def test_cli_writes_the_png_and_prints_its_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = pretrain_log(tmp_path / "a"), pretrain_log(tmp_path / "b", 2.0)
    out = tmp_path / "curves.png"
    argv = ["curves", str(a), str(b), "--names", "pretrained", "scratch", "--metric", "valid:loss",
            "valid:accuracy", "--output", str(out), "--title", "demo"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert _read_png(out)[0] == "PNG"


@pytest.mark.parametrize(("extra", "message"), [
    (["--names", "one", "two"], "2 --names for 1 experiments"),
    (["--metric", "valid-loss"], "SPLIT:KEY"),
    (["--metric", "valid:nope"], "they log: "),
])
def test_cli_bad_input_exits_2_with_message(extra: list[str], message: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    a = pretrain_log(tmp_path / "a")
    argv = ["curves", str(a), "--output", str(tmp_path / "c.png")]
    argv += extra if "--metric" in extra else [*extra, "--metric", "valid:loss"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "c.png").exists()


def test_cli_missing_experiment(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["curves", str(tmp_path / "nope"), "--metric", "valid:loss", "--output", str(tmp_path / "c.png")]
    assert main(argv) == 2
    assert "not a speechcl training experiment folder" in capsys.readouterr().err
