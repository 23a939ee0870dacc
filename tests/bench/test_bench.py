"""The benchmarks' measuring instruments and their two sides, on tiny configs; never the timings.

- timing: alternation, warm-up and medians under a fake clock;
- FLOP counting: equal to counts by hand for matmuls, our feature encoder's convolutions and CPU attention;
- peak memory: a step that allocates a known block measures that block;
- the two sides of each benchmark compute the same function on the same weights;
- the report says MISS exactly when a measured value misses its target, and shows the measured values.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.nn import functional as F

pytest.importorskip("transformers")

from speechcl.bench import report, timing  # noqa: E402
from speechcl.bench.extraction import ExtractBenchConfig, run_extract_bench, write_corpus  # noqa: E402
from speechcl.bench.flops import count_flops, matmul_call  # noqa: E402
from speechcl.bench.inference import InferenceBenchConfig, run_inference_bench  # noqa: E402
from speechcl.bench.memory import measure_in_subprocess, step_peak  # noqa: E402
from speechcl.bench.pretrain import (  # noqa: E402
    PretrainBenchConfig,
    format_pretrain,
    loss_trajectory,
    run_pretrain_bench,
)
from speechcl.bench.reference import reference_pretraining  # noqa: E402
from speechcl.models.config import preset  # noqa: E402
from speechcl.models.feature_encoder import FeatureEncoder  # noqa: E402
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining  # noqa: E402
from speechcl.objectives import wav2vec2_loss  # noqa: E402
from tests.interop.cli_helper import run_verb  # noqa: E402

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


class FakeClock:
    """Stands in for the ``time`` module: ``perf_counter`` reads a clock that only the sides advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_alternate_records_turns_after_warmup_and_takes_medians(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    durations = {"a": iter([10.0, 3.0, 1.0, 2.0]), "b": iter([20.0, 5.0, 9.0, 6.0])}  # first: warm-up
    calls: list[str] = []

    def side(name: str):
        def call() -> None:
            calls.append(name)
            clock.now += next(durations[name])
        return call

    lines: list[str] = []
    series = timing.alternate({"a": side("a"), "b": side("b")}, {"a": 4.0, "b": 12.0}, reps=3, warmup=1,
                              device=CPU, progress=lines.append)
    assert calls == ["a", "b"] * 4
    assert series["a"].seconds == [3.0, 1.0, 2.0] and series["b"].seconds == [5.0, 9.0, 6.0]
    assert (series["a"].median, series["b"].median) == (2.0, 6.0)
    assert (series["a"].speed, series["b"].speed) == (2.0, 2.0)  # work per median second
    assert series["a"].to_dict("audio_s") == {"median_s": 2.0, "audio_s_per_s": 2.0, "times_s": [3.0, 1.0, 2.0]}
    assert len(lines) == 8 and "warm-up 1/1 a: 10.000 s" in lines[0] and "rep 3/3 b: 6.000 s" in lines[-1]
    assert timing.Series("even", [4.0, 1.0, 3.0, 2.0]).median == 2.5
    # a side twice as fast on the same work is 2x faster
    assert timing.speed_ratio(timing.Series("x", [1.0], work=3.0), timing.Series("y", [2.0], work=3.0)) == 2.0
    with pytest.raises(ValueError, match="reps"):
        timing.alternate({"a": lambda: None}, {"a": 1.0}, reps=0, warmup=0, device=CPU)
    with pytest.raises(ValueError, match="no work"):
        timing.alternate({"a": lambda: None}, {}, reps=1, warmup=0, device=CPU)


def test_flops_of_matmuls_by_hand():
    m, k, n = 8, 16, 32
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert count_flops(lambda: a @ b) == 2 * m * k * n
    out = torch.zeros(m, n)
    assert count_flops(lambda: out.addmm_(a, b)) == 2 * m * k * n  # the in-place GEMM torch does not count
    linear, x = torch.nn.Linear(k, n), torch.randn(m, k, requires_grad=True)
    assert count_flops(lambda: linear(x).sum().backward()) == 3 * 2 * m * k * n  # forward, grad input, grad weight
    call, gflop = matmul_call(64, CPU, repeats=3)
    assert gflop == pytest.approx(3 * 2 * 64**3 / 1e9) and count_flops(call) == pytest.approx(gflop * 1e9)


@pytest.mark.parametrize("mode", ["layer_norm", "group_norm"])
def test_flops_of_the_feature_encoder_by_hand(mode):
    """Our convolutions are custom GEMMs: each layer costs 2 · batch · frames · C_out · C_in · kernel."""
    cfg = preset("tiny", extractor_mode=mode)
    encoder = FeatureEncoder(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias)
    batch, samples = 2, 8000
    per_layer, channels, frames = [], 1, samples
    for out_channels, kernel, stride in cfg.conv_layers:
        frames = (frames - kernel) // stride + 1
        per_layer.append(2 * batch * frames * out_channels * channels * kernel)
        channels = out_channels
    wav = torch.randn(batch, samples)
    with torch.no_grad():
        assert count_flops(lambda: encoder(wav)) == sum(per_layer)
    # backward: a weight gradient per layer, an input gradient for all but the first (the waveform)
    assert count_flops(lambda: encoder(wav).sum().backward()) == 3 * sum(per_layer) - per_layer[0]


def test_flops_of_cpu_attention_by_hand():
    b, h, length, d = 2, 4, 50, 16
    q, k, v = (torch.randn(b, h, length, d, requires_grad=True) for _ in range(3))
    product = 2 * b * h * length * length * d  # one [L, d] x [d, L] product per head
    with torch.no_grad():
        assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * product  # scores, values
    # flash backward: scores recomputed, then the gradients of values, probabilities, queries and keys
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == (2 + 5) * product


def test_step_peak_measures_what_a_step_allocates():
    mib = 64
    result = step_peak(lambda: torch.ones(mib << 18).sum(), CPU)  # 64 MiB of float32, freed at the end
    if result["method"] != "peak RSS during the step":
        pytest.skip("the peak-RSS mark cannot be reset here (/proc/self/clear_refs)")
    assert mib - 1 <= result["step_peak_mb"] <= mib + 16
    assert step_peak(lambda: None, CPU)["step_peak_mb"] < 8


def test_memory_subprocess_measures_one_side():
    result = measure_in_subprocess({"side": "speechcl_fp32", "config": "tiny", "batch": 1, "seconds": 0.5,
                                    "device": "cpu", "threads": 1})
    assert result["method"] in ("peak RSS during the step", "process high-water mark")
    assert 0 < result["step_peak_mb"] <= result["process_peak_mb"]


def test_pretraining_sides_compute_the_same_loss():
    """The reference model of the pretraining benchmark, given our masks and distractors, computes our
    contrastive loss (eval mode: no dropout, argmax codes; the diversity term is not compared, as in eval
    transformers takes the perplexity of the hard codes and speechcl that of the softmax)."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices

    torch.manual_seed(0)
    ours = Wav2Vec2ForPretraining(preset("tiny")).eval()
    theirs = reference_pretraining(ours).eval()
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    out = ours(wav, generator=torch.Generator().manual_seed(2))
    mask = out.mask_indices
    b, t = mask.shape
    np.random.seed(3)
    their_neg = torch.from_numpy(_sample_negative_indices((b, t), ours.cfg.num_negatives, mask.numpy())).long()
    rank = torch.full((b * t,), -1, dtype=torch.long)
    rank[mask.flatten()] = torch.arange(int(mask.sum()))
    with torch.no_grad():
        loss = wav2vec2_loss(ours(wav, mask_indices=mask, negative_indices=rank[their_neg[mask]]))
        ref = theirs(wav, mask_time_indices=mask, sampled_negative_indices=their_neg)
    assert float(ref.contrastive_loss) == pytest.approx(float(loss.contrastive), rel=1e-4)


def test_pretrain_bench_runs_and_bf16_follows_fp32():
    result = run_pretrain_bench(PretrainBenchConfig(
        config="tiny", batch=2, seconds=1.0, reps=2, warmup=0, memory=False, matmul_size=64,
        trajectory_config="tiny", trajectory_steps=3))
    json.dumps(result)  # JSON-able as written by --json
    assert all(len(side["times_s"]) == 2 for side in result["sides"].values())
    assert result["flops"]["per_step_gflop"] > 0 and result["memory"] is None
    trajectory = result["trajectory"]
    assert len(trajectory["fp32"]) == len(trajectory["bf16"]) == 3
    assert trajectory["max_abs_diff"] < 0.5  # same init, seeds and batch: bf16 stays near fp32


def test_loss_trajectory_is_reproducible_and_learns():
    """Same init, batch and per-step seeds: the fp32 sequence repeats exactly; the loss falls."""
    first = loss_trajectory(preset("tiny"), 6, 2, 1.0, CPU, seed=0)
    again = loss_trajectory(preset("tiny"), 6, 2, 1.0, CPU, seed=0)
    assert first["fp32"] == again["fp32"]
    assert all(math.isfinite(v) for v in first["fp32"] + first["bf16"])
    assert first["fp32"][-1] < first["fp32"][0]


def test_inference_sides_compute_the_same_function():
    result = run_inference_bench(InferenceBenchConfig(config="tiny", seconds=1.0, batch_sizes=(1, 2), reps=2,
                                                      warmup=0))
    json.dumps(result)
    assert set(result["batches"]) == {"1", "2"}
    for entry in result["batches"].values():
        assert all(len(side["times_s"]) == 2 for side in entry["sides"].values())
        assert entry["max_abs_diff_vs_reference"] <= 1e-4  # same weights: the same function
        assert 0.99 <= entry["bf16_cosine"] <= 1.0 + 1e-6


def test_write_corpus(tmp_path):
    total = write_corpus(tmp_path, 5, 0.5, 1.5, seed=1)
    files = sorted(tmp_path.glob("*.wav"))
    assert len(files) == 5
    seconds = [sf.info(f).frames / 16000 for f in files]
    assert all(0.5 <= s <= 1.5 for s in seconds) and total == pytest.approx(sum(seconds))
    with pytest.raises(ValueError):
        write_corpus(tmp_path, 1, 2.0, 1.0)


def test_extract_sides_write_the_same_features(tmp_path):
    result = run_extract_bench(ExtractBenchConfig(config="tiny", num_files=3, min_seconds=0.5, max_seconds=1.0,
                                                  reps=1, warmup=0, threads=1, workdir=str(tmp_path)))
    json.dumps(result)
    assert set(result["sides"]) == {"speechcl_extract", "transformers_loop"}
    assert result["max_abs_diff"] <= 1e-4
    assert list(tmp_path.iterdir()) == []  # the temporary corpus and outputs are gone


def test_summary_marks_miss_when_a_value_misses_its_target():
    def status(results: dict, target: str) -> str:
        return {r["target"]: r["status"] for r in report.summarize(results)}[target]

    speed = "pretrain fp32: speed vs transformers fp32"  # at least 1.5
    memory = "pretrain fp32: step peak memory vs transformers"  # at most 0.8
    for value, expected in ((1.6, "PASS"), (1.5, "PASS"), (1.49, "MISS"), (float("nan"), "n/a"), (None, "n/a")):
        assert status({"pretrain": {"ratios": {"speed_fp32": value}}}, speed) == expected
    for value, expected in ((0.5, "PASS"), (0.8, "PASS"), (0.81, "MISS")):
        assert status({"pretrain": {"ratios": {"memory_fp32": value}}}, memory) == expected
    results = {"inference": {"batches": {"1": {"bf16_cosine": 0.98}, "4": {"bf16_cosine": 0.999}}}}
    assert status(results, "inference bf16 (batch 1): cosine to fp32") == "MISS"
    assert status(results, "inference bf16 (batch 4): cosine to fp32") == "PASS"
    assert status(results, "extraction: files/s vs transformers loop") == "n/a"
    table = report.format_summary(report.summarize(results), only_measured=True).splitlines()
    assert len(table) == 4 and table[2].split()[-1] == "MISS" and "0.9800" in table[2]


def test_cli_inference_quick_reports_the_measured_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "inference", "--quick", "--utterance-seconds", "1", "--threads", "1", "--json", str(out)]
    assert run_verb("speechcl.bench.commands", argv) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["config"] == "tiny" and set(data["batches"]) == {"1"}
    measured = data["batches"]["1"]
    rows = {r["target"]: r for r in data["summary"]}
    assert sorted(rows) == sorted(["inference fp32 (batch 1): speed vs transformers",
                                   "inference bf16 (batch 1): speed vs ours fp32",
                                   "inference bf16 (batch 1): cosine to fp32"])
    assert rows["inference fp32 (batch 1): speed vs transformers"]["value"] == measured["ratios"]["speed_fp32"]
    assert rows["inference bf16 (batch 1): cosine to fp32"]["value"] == measured["bf16_cosine"]
    assert f"{measured['ratios']['speed_fp32']:.2f}x" in capsys.readouterr().out


def test_cli_rejects_bad_batch_sizes(capsys):
    assert run_verb("speechcl.bench.commands", ["bench", "inference", "--quick", "--batch-sizes", "x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_bench_with_the_gpu_sides():
    """What a GPU run adds, on CPU: transformers under bf16 autocast, the compiled speechcl side (graph
    capture only here), bf16 and fp32 matmul references, and the ratios the GPU targets read."""
    from speechcl.bench.pretrain import OURS_COMPILED, THEIRS_BF16

    result = run_pretrain_bench(PretrainBenchConfig(
        config="tiny", batch=2, seconds=1.0, reps=1, warmup=1, memory=False, matmul_size=64,
        trajectory_config=None, reference_bf16=True, compile=True, compile_backend="aot_eager"))
    json.dumps(result)
    assert result["settings"]["sides"] == ["speechcl_fp32", "transformers_fp32", "speechcl_bf16", THEIRS_BF16,
                                           OURS_COMPILED]
    assert {"matmul_fp32", "matmul_bf16"} <= set(result["sides"]) and "matmul_tf32" not in result["sides"]
    r = result["ratios"]
    for key in ("speed_bf16_vs_reference_bf16", "speed_compiled_vs_reference_bf16", "speed_compiled_vs_bf16",
                "flops_bf16_vs_matmul_bf16", "flops_compiled_vs_matmul_bf16"):
        assert r[key] > 0, key
    fl = result["flops"]
    assert r["flops_bf16_vs_matmul_bf16"] == pytest.approx(fl["speechcl_bf16_gflop_per_s"] / fl["matmul_bf16_gflop_per_s"])
    assert result["compile"]["graphs"] >= 1 and result["compile"]["graph_breaks"] == 0
    assert "compiled/theirs bf16" in format_pretrain(result)


def test_matmul_reference_types():
    call, gflop = matmul_call(32, CPU, repeats=2, dtype="bf16")
    assert count_flops(call) == pytest.approx(gflop * 1e9)
    saved = torch.backends.cuda.matmul.allow_tf32
    call, _ = matmul_call(16, CPU, repeats=1, dtype="tf32")
    call()
    assert torch.backends.cuda.matmul.allow_tf32 == saved  # switched on for the call only
    with pytest.raises(ValueError, match="dtype"):
        matmul_call(16, CPU, dtype="fp8")


def test_gpu_results_are_judged_against_the_gpu_targets():
    def rows(results: dict) -> dict[str, str]:
        return {r["target"]: r["status"] for r in report.summarize(results)}

    gpu = {"pretrain": {"settings": {"device": "cuda"}, "ratios": {
        "speed_bf16_vs_reference_bf16": 1.6, "flops_bf16_vs_matmul_bf16": 0.39, "memory_bf16_vs_reference_bf16": 0.8,
        "speed_fp32": 1.0}},
        "inference": {"batches": {"16": {"ratios": {"speed_bf16_vs_reference_bf16": 1.29}}}},
        "extract": {"ratios": {"speed": 3.0}}}
    status = rows(gpu)
    assert status["pretrain bf16: speed vs transformers bf16"] == "PASS"
    assert status["pretrain bf16: GFLOP/s vs bf16 matmul"] == "MISS"  # at least 40%
    assert status["pretrain bf16: step peak memory vs transformers bf16"] == "PASS"  # at most 0.8
    assert status["inference bf16 (batch 16): speed vs transformers bf16"] == "MISS"  # at least 1.3
    assert status["extraction: files/s vs transformers loop"] == "PASS"  # at least 3
    assert status["pretrain bf16 compiled: speed vs transformers bf16"] == "n/a"
    cpu = {"pretrain": {"settings": {"device": "cpu"}, "ratios": {"speed_fp32": 1.0}}}
    assert rows(cpu)["pretrain fp32: speed vs transformers fp32"] == "MISS"
    assert not any("transformers bf16" in t for t in rows(cpu))


def test_count_syncs_finds_each_host_read_by_line():
    from speechcl.bench.syncs import count_syncs

    x = torch.arange(6.0)
    lines = {}

    def fn() -> None:
        import inspect

        here = inspect.currentframe().f_lineno
        x.sum().item()
        bool((x > 2).any())
        x.tolist()
        x[x > 2]
        torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]))
        torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]), output_size=6)  # no read: its size is given
        x + 1
        lines["first"] = here + 1
    result = count_syncs(fn, CPU)
    assert result["total"] == 5
    counted = sorted(int(s["site"].rsplit(":", 1)[1]) for s in result["sites"])
    assert counted == [lines["first"] + i for i in range(5)]
    assert all(s["site"].startswith("tests/bench/test_bench.py:") for s in result["sites"])
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([p])
    p.grad = torch.ones(3)
    assert count_syncs(optimizer.step, CPU)["total"] == 0  # the CPU optimizer's counters: host-side anyway


def test_inference_bench_with_the_gpu_sides():
    result = run_inference_bench(InferenceBenchConfig(config="tiny", seconds=1.0, batch_sizes=(2,), reps=1,
                                                      warmup=0, reference_bf16=True))
    entry = result["batches"]["2"]
    assert set(entry["sides"]) == {"speechcl_fp32", "transformers_fp32", "speechcl_bf16", "transformers_bf16"}
    assert entry["ratios"]["speed_bf16_vs_reference_bf16"] > 0 and entry["peak_mb"] is None  # (CUDA only)


def test_extract_command_lines_carry_workers_and_compile(tmp_path):
    from speechcl.bench.extraction import speechcl_argv

    plain = speechcl_argv(tmp_path, tmp_path, tmp_path, 1, "cpu")
    assert "--num-workers" not in plain and "--compile" not in plain
    tuned = speechcl_argv(tmp_path, tmp_path, tmp_path, 1, "cuda", workers=4, compile=True)
    assert tuned[tuned.index("--num-workers") + 1] == "4" and "--compile" in tuned


def test_the_transformers_bf16_side_runs_under_autocast():
    from speechcl.bench.pretrain import THEIRS_BF16, THEIRS_FP32, build_sides, random_batch

    dtypes: dict[str, set] = {}
    current = []

    def hook(module, args, output):
        if type(module).__module__.startswith("transformers") and isinstance(output, torch.Tensor):
            dtypes.setdefault(current[0], set()).add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        wav = random_batch(1, 0.5, 0, CPU)
        for name, step in build_sides(preset("tiny"), wav, (THEIRS_FP32, THEIRS_BF16)).items():
            current[:] = [name]
            step()
    finally:
        handle.remove()
    assert torch.bfloat16 in dtypes[THEIRS_BF16] and torch.bfloat16 not in dtypes[THEIRS_FP32]
