"""The benchmarks on tiny configs: result structure and internal consistency, never timings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("transformers")

from speechcl.bench import report  # noqa: E402
from speechcl.bench.extraction import ExtractBenchConfig, run_extract_bench, write_corpus  # noqa: E402
from speechcl.bench.inference import InferenceBenchConfig, run_inference_bench  # noqa: E402
from speechcl.bench.pretrain import MATMUL, SIDES, PretrainBenchConfig, run_pretrain_bench  # noqa: E402
from speechcl.bench.timing import alternate  # noqa: E402
from tests.interop.cli_helper import run_verb  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the figures are not what these tests check."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def check_side(entry: dict, unit: str, reps: int) -> None:
    assert len(entry["times_s"]) == reps and all(positive(t) for t in entry["times_s"])
    assert positive(entry["median_s"]) and positive(entry[f"{unit}_per_s"])
    assert entry["median_s"] == pytest.approx(float(np.median(entry["times_s"])))


def test_alternate_runs_sides_in_turn_and_reports_medians():
    calls: list[str] = []
    series = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, {"a": 2.0, "b": 1.0},
                       reps=3, warmup=1, device=CPU)
    assert calls == ["a", "b"] * 4
    assert [len(s.seconds) for s in series.values()] == [3, 3]
    assert series["a"].speed == pytest.approx(2.0 / series["a"].median)
    with pytest.raises(ValueError, match="reps"):
        alternate({"a": lambda: None}, {"a": 1.0}, reps=0, warmup=0, device=CPU)


def test_pretrain_structure_and_ratios():
    result = run_pretrain_bench(PretrainBenchConfig(
        config="tiny", batch=2, seconds=1.0, reps=1, warmup=0, matmul_size=64, trajectory_config="tiny",
        trajectory_steps=3))
    json.dumps(result)  # JSON-able as written by --json
    sides, ratios = result["sides"], result["ratios"]
    assert set(sides) == {*SIDES, MATMUL}
    for name in SIDES:
        check_side(sides[name], "audio_s", reps=1)
        assert sides[name]["audio_s_per_s"] == pytest.approx(2.0 / sides[name]["median_s"])
    check_side(sides[MATMUL], "gflop", reps=1)
    assert ratios["speed_fp32"] == pytest.approx(
        sides["speechcl_fp32"]["audio_s_per_s"] / sides["transformers_fp32"]["audio_s_per_s"])
    assert ratios["speed_bf16_vs_reference_fp32"] == pytest.approx(
        sides["speechcl_bf16"]["audio_s_per_s"] / sides["transformers_fp32"]["audio_s_per_s"])

    memory = result["memory"]
    assert set(memory) == set(SIDES)
    for entry in memory.values():
        assert positive(entry["process_peak_mb"]) and positive(entry["resident_before_mb"])
        assert entry["step_peak_mb"] >= 0 and entry["process_peak_mb"] >= entry["step_peak_mb"]
    assert ratios["memory_fp32"] == pytest.approx(
        memory["speechcl_fp32"]["step_peak_mb"] / memory["transformers_fp32"]["step_peak_mb"])

    flops = result["flops"]
    assert positive(flops["per_step_gflop"]) and positive(flops["matmul_gflop_per_s"])
    assert flops["speechcl_fp32_gflop_per_s"] == pytest.approx(flops["per_step_gflop"] / sides["speechcl_fp32"]["median_s"])
    assert ratios["flops_vs_matmul"] == pytest.approx(flops["speechcl_fp32_gflop_per_s"] / flops["matmul_gflop_per_s"])

    trajectory = result["trajectory"]
    assert len(trajectory["fp32"]) == len(trajectory["bf16"]) == 3
    assert all(positive(v) for v in trajectory["fp32"] + trajectory["bf16"])
    assert trajectory["max_abs_diff"] == pytest.approx(
        max(abs(a - b) for a, b in zip(trajectory["fp32"], trajectory["bf16"])))
    assert trajectory["max_abs_diff"] < 0.5  # same init, seeds and batch: bf16 stays near fp32


def test_inference_structure_ratios_and_same_function():
    result = run_inference_bench(InferenceBenchConfig(config="tiny", seconds=1.0, batch_sizes=(1, 2), reps=2,
                                                      warmup=0))
    json.dumps(result)
    assert set(result["batches"]) == {"1", "2"}
    for entry in result["batches"].values():
        sides, ratios = entry["sides"], entry["ratios"]
        for side in sides.values():
            check_side(side, "audio_s", reps=2)
        assert ratios["speed_fp32"] == pytest.approx(
            sides["speechcl_fp32"]["audio_s_per_s"] / sides["transformers_fp32"]["audio_s_per_s"])
        assert ratios["speed_bf16_vs_fp32"] == pytest.approx(
            sides["speechcl_bf16"]["audio_s_per_s"] / sides["speechcl_fp32"]["audio_s_per_s"])
        assert 0.99 <= entry["bf16_cosine"] <= 1.0 + 1e-6
        assert entry["max_abs_diff_vs_reference"] <= 1e-4  # same weights: the same function


def test_write_corpus(tmp_path):
    total = write_corpus(tmp_path, 5, 0.5, 1.5, seed=1)
    files = sorted(tmp_path.glob("*.wav"))
    assert len(files) == 5
    seconds = [sf.info(f).frames / 16000 for f in files]
    assert all(0.5 <= s <= 1.5 for s in seconds) and total == pytest.approx(sum(seconds))
    with pytest.raises(ValueError):
        write_corpus(tmp_path, 1, 2.0, 1.0)


def test_extract_structure_and_same_features(tmp_path):
    result = run_extract_bench(ExtractBenchConfig(config="tiny", num_files=3, min_seconds=0.5, max_seconds=1.0,
                                                  reps=1, warmup=0, threads=1, workdir=str(tmp_path)))
    json.dumps(result)
    sides = result["sides"]
    assert set(sides) == {"speechcl_extract", "transformers_loop"}
    for side in sides.values():
        check_side(side, "files", reps=1)
        assert side["files_per_s"] == pytest.approx(3 / side["median_s"])
        assert positive(side["audio_s_per_s"])
    assert result["ratios"]["speed"] == pytest.approx(
        sides["speechcl_extract"]["files_per_s"] / sides["transformers_loop"]["files_per_s"])
    assert result["max_abs_diff"] <= 1e-4
    assert list(tmp_path.iterdir()) == []  # the temporary corpus and outputs are gone


def test_summary_pass_miss_and_missing():
    results = {"pretrain": {"ratios": {"speed_fp32": 1.6, "memory_fp32": 0.9, "flops_vs_matmul": None}},
               "inference": {"batches": {"1": {"ratios": {"speed_fp32": 1.0}, "bf16_cosine": 0.98}}}}
    rows = {r["target"]: r["status"] for r in report.summarize(results)}
    assert rows["pretrain fp32: speed vs transformers fp32"] == "PASS"
    assert rows["pretrain fp32: step peak memory vs transformers"] == "MISS"  # at most 0.8
    assert rows["pretrain fp32: GFLOP/s vs fp32 matmul"] == "n/a"
    assert rows["inference fp32 (batch 1): speed vs transformers"] == "PASS"
    assert rows["inference bf16 (batch 1): cosine to fp32"] == "MISS"
    assert rows["extraction: files/s vs transformers loop"] == "n/a"
    assert "MISS" in report.format_summary(report.summarize(results))


def test_cli_inference_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "inference", "--quick", "--utterance-seconds", "1", "--threads", str(torch.get_num_threads()),
            "--json", str(out)]
    assert run_verb("speechcl.bench.commands", argv) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["config"] == "tiny" and set(data["batches"]) == {"1"}
    assert {r["status"] for r in data["summary"]} <= {"PASS", "MISS"}
    assert "ours/theirs fp32" in capsys.readouterr().out


def test_cli_rejects_bad_batch_sizes(capsys):
    assert run_verb("speechcl.bench.commands", ["bench", "inference", "--quick", "--batch-sizes", "x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
