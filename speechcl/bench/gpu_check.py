"""Every GPU measurement of the GPU issue in one run, written to one folder (``tools/gpu_check.py``).

Stages, in order (the core targets first, the riskiest last), each a function of a :class:`CheckConfig`:

- ``environment``: versions, GPU, ``nvidia-smi -L``, matmul precision settings;
- ``attention``: the fused-kernel and padding-mask check of :mod:`speechcl.bench.attention` (BASE width);
- ``pretrain``: the BASE pretraining step, speechcl and transformers each in fp32 and bf16 autocast:
  speed, peak memory (fresh process per side), FLOP rate against measured bf16/TF32/fp32 matmuls, and the
  bf16-vs-fp32 loss trajectory (:mod:`speechcl.bench.pretrain`);
- ``inference``: BASE, batch 1 and 16 x 10 s, all hidden states, both sides fp32 and bf16, peak memory;
- ``extract``: ``speechcl extract`` against a plain transformers loop over 1,000 generated mixed-length
  files, whole processes;
- ``syncs``: host round trips of one training step per side and of one extraction forward
  (:mod:`speechcl.bench.syncs`);
- ``compile``: the pretraining step and inference again with the compiled speechcl side
  (:mod:`speechcl.models.compile`), with the number of graphs compiled.

``dry`` runs the very same stages on CPU with the tiny config, tiny batches, one round and three files,
and the ``aot_eager`` compile backend (graph capture without code generation): seconds, not minutes.

Results: ``OUT/results.json`` (rewritten after every stage, so a run cut short keeps what it measured),
``OUT/summary.md`` (status of each stage and the PASS/MISS table of :mod:`speechcl.bench.report`) and
``OUT/log.txt`` (every stage's output). With ``isolate`` each stage runs in its own process under a
timeout taken from what is left of ``budget_minutes``, so one stage that hangs or runs out of memory
costs only itself.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from speechcl.utils.io import atomic_write_json, atomic_write_text


@dataclass
class CheckConfig:
    """Sizes of the measurements; :meth:`dry_run` is the CPU version of the same run."""

    device: str = "cuda"
    config: str = "base"
    pretrain_batch: int = 8  # 8 x 10 s = 80 s of audio per step (fairseq BASE: 87.5 s per GPU)
    pretrain_seconds: float = 10.0
    pretrain_reps: int = 8
    pretrain_warmup: int = 2
    trajectory_config: str = "small"
    trajectory_steps: int = 10
    memory: bool = True
    inference_seconds: float = 10.0
    inference_batches: tuple[int, ...] = (1, 16)
    inference_reps: int = 8
    inference_warmup: int = 2
    extract_files: int = 1000
    extract_min_seconds: float = 1.0
    extract_max_seconds: float = 8.0
    extract_reps: int = 2
    extract_warmup: int = 1
    extract_workers: int = 4
    compile_backend: str | None = None  # None: inductor
    attention_dim: int = 768
    attention_heads: int = 12
    attention_frames: int = 499
    matmul_size: int | None = None  # None: 8192 on GPUs
    threads: int = 0  # torch threads of the processes (0: torch's default)
    seed: int = 0
    budget_minutes: float = 9.0  # a device command may run 10 minutes
    dry: bool = False

    @classmethod
    def dry_run(cls) -> CheckConfig:
        return cls(device="cpu", config="tiny", pretrain_batch=2, pretrain_seconds=1.0, pretrain_reps=1,
                   pretrain_warmup=0, trajectory_config="tiny", trajectory_steps=2, memory=False,
                   inference_seconds=1.0, inference_batches=(1, 2), inference_reps=1, inference_warmup=0,
                   extract_files=3, extract_min_seconds=0.5, extract_max_seconds=1.0, extract_reps=1,
                   extract_warmup=0, extract_workers=1, compile_backend="aot_eager", attention_dim=64,
                   attention_heads=4, attention_frames=37, matmul_size=64, threads=1, budget_minutes=10.0,
                   dry=True)


def _say(line: str) -> None:
    print(line, flush=True)


def stage_environment(cfg: CheckConfig) -> dict[str, Any]:
    from speechcl.bench.reference import environment

    device = torch.device(cfg.device)
    env = environment(device) | {"platform": platform.platform(), "cuda_available": torch.cuda.is_available(),
                                 "cuda": torch.version.cuda, "float32_matmul_precision":
                                 torch.get_float32_matmul_precision(),
                                 "allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu_memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count, "cudnn": torch.backends.cudnn.version()}
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = proc.stdout.strip()
    return env


def stage_attention(cfg: CheckConfig) -> dict[str, Any]:
    from speechcl.bench.attention import attention_ok, check_attention

    rows = check_attention(torch.device(cfg.device), dim=cfg.attention_dim, heads=cfg.attention_heads,
                           frames=cfg.attention_frames, seed=cfg.seed)
    for row in rows:
        _say(f"  {row}")
    return {"ok": attention_ok(rows), "cases": rows}


def _pretrain_config(cfg: CheckConfig, compile: bool) -> Any:
    from speechcl.bench.pretrain import PretrainBenchConfig

    return PretrainBenchConfig(
        config=cfg.config, batch=cfg.pretrain_batch, seconds=cfg.pretrain_seconds, reps=cfg.pretrain_reps,
        warmup=cfg.pretrain_warmup + (1 if compile else 0), device=cfg.device, seed=cfg.seed,
        memory=cfg.memory and not compile, flops=True, matmul_size=cfg.matmul_size,
        trajectory_config=None if compile else cfg.trajectory_config, trajectory_steps=cfg.trajectory_steps,
        reference_bf16=True, compile=compile, compile_backend=cfg.compile_backend)


def stage_pretrain(cfg: CheckConfig) -> dict[str, Any]:
    from speechcl.bench.pretrain import format_pretrain, run_pretrain_bench

    result = run_pretrain_bench(_pretrain_config(cfg, compile=False), _say)
    _say(format_pretrain(result))
    return result


def _inference_config(cfg: CheckConfig, compile: bool) -> Any:
    from speechcl.bench.inference import InferenceBenchConfig

    return InferenceBenchConfig(
        config=cfg.config, seconds=cfg.inference_seconds,
        batch_sizes=cfg.inference_batches[-1:] if compile else cfg.inference_batches, reps=cfg.inference_reps,
        warmup=cfg.inference_warmup + (1 if compile else 0), device=cfg.device, seed=cfg.seed, reference_bf16=True,
        compile=compile, compile_backend=cfg.compile_backend)


def stage_inference(cfg: CheckConfig) -> dict[str, Any]:
    from speechcl.bench.inference import format_inference, run_inference_bench

    result = run_inference_bench(_inference_config(cfg, compile=False), _say)
    _say(format_inference(result))
    return result


def stage_extract(cfg: CheckConfig) -> dict[str, Any]:
    from speechcl.bench.extraction import ExtractBenchConfig, format_extract, run_extract_bench

    result = run_extract_bench(ExtractBenchConfig(
        config=cfg.config, num_files=cfg.extract_files, min_seconds=cfg.extract_min_seconds,
        max_seconds=cfg.extract_max_seconds, reps=cfg.extract_reps, warmup=cfg.extract_warmup, device=cfg.device,
        threads=cfg.threads or torch.get_num_threads(), seed=cfg.seed, workers=cfg.extract_workers), _say)
    _say(format_extract(result))
    return result


def stage_syncs(cfg: CheckConfig) -> dict[str, Any]:
    from speechcl.bench.pretrain import OURS_BF16, THEIRS_BF16, build_sides, random_batch
    from speechcl.bench.syncs import count_syncs
    from speechcl.features.extractor import FeatureExtractor
    from speechcl.models.config import preset
    from speechcl.models.wav2vec2 import Wav2Vec2Encoder

    device = torch.device(cfg.device)
    wav = random_batch(cfg.pretrain_batch, cfg.pretrain_seconds, cfg.seed, device)
    out: dict[str, Any] = {}
    for name, step in build_sides(preset(cfg.config), wav, (OURS_BF16, THEIRS_BF16), cfg.seed).items():
        step()  # warm: optimizer state, lazy buffers
        out[f"{name}_step"] = count_syncs(step, device)
    torch.manual_seed(cfg.seed)
    extractor = FeatureExtractor(Wav2Vec2Encoder(preset(cfg.config)), device=device)
    g = torch.Generator().manual_seed(cfg.seed)
    waves = [0.1 * torch.randn(int(s * 16000), generator=g) for s in (cfg.pretrain_seconds, cfg.pretrain_seconds / 2)]
    extractor.extract(waves)
    out["extraction_batch"] = count_syncs(lambda: extractor.extract(waves), device)
    for name, entry in out.items():
        _say(f"  {name}: {entry['total']} ({entry['method']})")
        for site in entry["sites"]:
            _say(f"    {site['count']:4d}  {site['site']}")
    return out


def stage_compile(cfg: CheckConfig) -> dict[str, Any]:
    from speechcl.bench.inference import format_inference, run_inference_bench
    from speechcl.bench.pretrain import format_pretrain, run_pretrain_bench

    start = time.perf_counter()
    pretrain = run_pretrain_bench(_pretrain_config(cfg, compile=True), _say)
    _say(format_pretrain(pretrain))
    inference = run_inference_bench(_inference_config(cfg, compile=True), _say)
    _say(format_inference(inference))
    return {"pretrain": pretrain, "inference": inference, "seconds": time.perf_counter() - start}


STAGES: dict[str, tuple[Callable[[CheckConfig], dict[str, Any]], float]] = {
    "environment": (stage_environment, 60.0),
    "attention": (stage_attention, 120.0),
    "pretrain": (stage_pretrain, 330.0),
    "inference": (stage_inference, 150.0),
    "extract": (stage_extract, 300.0),
    "syncs": (stage_syncs, 120.0),
    "compile": (stage_compile, 360.0),
}
"""Name -> (function, most seconds it may take in an isolated run on the GPU)."""


def run_stage(name: str, cfg: CheckConfig) -> dict[str, Any]:
    """Run one stage in this process: ``{"status": "ok", "seconds", "result"}`` or ``{"status": "error",
    "seconds", "error"}`` (the traceback's last lines)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    try:
        result = STAGES[name][0](cfg)
    except Exception:  # a failed stage is a finding to report; the other stages still run
        return {"status": "error", "seconds": time.perf_counter() - start,
                "error": traceback.format_exc()[-3000:]}
    return {"status": "ok", "seconds": time.perf_counter() - start, "result": result}


def run_isolated(argv: list[str], result_path: Path, timeout: float, log: Path) -> dict[str, Any]:
    """Run ``argv`` (a stage process that writes its :func:`run_stage` record to ``result_path``) under
    ``timeout`` seconds, appending its output to ``log``; a timeout or crash becomes that stage's record."""
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as fh:
        # its own process group, so that a timeout also ends what the stage started (memory processes,
        # extraction commands, data-loader workers)
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "timeout", "seconds": time.perf_counter() - start,
                    "error": f"stopped after {timeout:.0f} s (the stage's share of the budget)"}
    if result_path.exists():
        return json.loads(result_path.read_text())
    return {"status": "error", "seconds": time.perf_counter() - start,
            "error": f"the stage process exited with status {proc.returncode} and no result (see log.txt)"}


def _merged_for_targets(results: dict[str, Any]) -> dict[str, Any]:
    """The benchmark results the targets table reads: pretrain, inference and extract, with the compiled
    sides' ratios (measured in the compile stage) added to pretrain's and inference's."""
    stages = results["stages"]
    merged = {name: stages[name]["result"] for name in ("pretrain", "inference", "extract")
              if stages.get(name, {}).get("status") == "ok"}
    compiled = stages.get("compile", {})
    if compiled.get("status") == "ok":
        extra = {k: v for k, v in compiled["result"]["pretrain"]["ratios"].items() if "compiled" in k}
        if "pretrain" in merged:
            merged["pretrain"] = merged["pretrain"] | {"ratios": merged["pretrain"]["ratios"] | extra}
        else:
            merged["pretrain"] = compiled["result"]["pretrain"]
    return merged


def summary_markdown(results: dict[str, Any]) -> str:
    """``summary.md``: stage status and the targets table."""
    from speechcl.bench.report import format_summary, summarize

    cfg = results["config"]
    lines = [f"# speechcl GPU check ({'dry run on CPU' if cfg['dry'] else cfg['device']})", "",
             f"started {results['started']}, {results.get('seconds', 0.0):.0f} s in all; "
             f"{results['environment_line']}", "", "| stage | status | seconds |", "|---|---|---|"]
    for name, record in results["stages"].items():
        lines.append(f"| {name} | {record['status']} | {record['seconds']:.0f} |")
    lines += ["", "```", format_summary(summarize(_merged_for_targets(results))) or "(no measured targets)", "```"]
    attention = results["stages"].get("attention", {})
    if attention.get("status") == "ok":
        lines += ["", f"attention: fused kernels and padding invariant in every mode: "
                      f"{'yes' if attention['result']['ok'] else 'NO (see results.json)'}"]
    errors = [(n, r) for n, r in results["stages"].items() if r["status"] != "ok"]
    for name, record in errors:
        lines += ["", f"## {name}: {record['status']}", "```", record.get("error", "").strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"


def run_check(out: Path, cfg: CheckConfig, stages: list[str] | None = None, isolate: bool = True,
              tool: Path | None = None) -> dict[str, Any]:
    """Run the stages (all by default) and write ``out/results.json``, ``out/summary.md``, ``out/log.txt``.

    With ``isolate`` each stage runs as ``python TOOL --stage NAME ...`` (``tool``: the script that
    calls :func:`stage_main`) under its timeout; otherwise in this process.
    """
    names = stages or list(STAGES)
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    log.write_text("")
    start = time.perf_counter()
    deadline = start + cfg.budget_minutes * 60.0
    results: dict[str, Any] = {"config": asdict(cfg), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "stages": {}, "environment_line": f"python {platform.python_version()}, "
                               f"torch {torch.__version__}"}
    scratch = Path(tempfile.mkdtemp(prefix="speechcl-gpu-check-"))
    try:
        for name in names:
            left = deadline - time.perf_counter() - 15.0  # keep time for the summary
            if left <= 5.0:
                record = {"status": "skipped", "seconds": 0.0, "error": "no time left in the budget"}
            elif isolate:
                if tool is None:
                    raise ValueError("isolate needs the path of the stage script (tool)")
                result_path = scratch / f"{name}.json"
                argv = [sys.executable, str(tool), "--stage", name, "--result", str(result_path),
                        "--config-json", json.dumps(asdict(cfg))]
                with log.open("a", encoding="utf-8") as fh:
                    fh.write(f"\n===== {name} =====\n")
                record = run_isolated(argv, result_path, min(STAGES[name][1], left), log)
            else:
                with log.open("a", encoding="utf-8") as fh:
                    fh.write(f"\n===== {name} =====\n")
                record = run_stage(name, cfg)
                if record["status"] != "ok":
                    with log.open("a", encoding="utf-8") as fh:
                        fh.write(record["error"])
            _say(f"[gpu_check] {name}: {record['status']} ({record['seconds']:.0f} s)")
            results["stages"][name] = record
            env = results["stages"].get("environment", {}).get("result")
            if env:
                results["environment_line"] = (f"{env.get('gpu', env.get('processor'))}, torch {env['torch']}, "
                                               f"transformers {env['transformers']}, python {env['python']}")
            results["seconds"] = time.perf_counter() - start
            atomic_write_json(out / "results.json", results)
            atomic_write_text(out / "summary.md", summary_markdown(results))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def stage_main(stage: str, result_path: str, config_json: str) -> int:
    """The body of an isolated stage process: run ``stage`` and write its record to ``result_path``."""
    values = json.loads(config_json)
    values["inference_batches"] = tuple(values["inference_batches"])
    record = run_stage(stage, CheckConfig(**values))
    if record["status"] != "ok":
        print(record["error"], flush=True)
    atomic_write_json(result_path, record)
    return 0
