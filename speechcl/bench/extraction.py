"""Benchmark corpus feature extraction: the ``speechcl extract`` command against a plain transformers loop.

Both sides run as whole processes, timed from launch to exit, so interpreter start-up, imports and model
loading count on both:

- **speechcl**: ``python -m speechcl extract --model HF_DIR --input WAVS --output OUT --layers last
  --format npy --threads N --device D --no-progress`` (its defaults otherwise: batching by length, one
  audio-decoding worker unless ``workers`` says how many, atomic writes); with ``compile`` also a third
  side, the same command with ``--compile`` (compilation time included);
- **transformers**: ``python -m speechcl.bench.reference_extract`` with the same model directory, input,
  threads and device: a loop over the files, one ``Wav2Vec2Model`` call each, ``np.save`` of
  ``last_hidden_state`` (see that module).

The model is a seeded speechcl encoder of the chosen preset exported once with
:func:`speechcl.interop.export.export_to_transformers`, so both load the very same files and weights;
both write the same layer (the final output) for every file, and the outputs of one file are compared
as a check. The corpus is generated: ``num_files`` 16 kHz mono ``.wav`` files of random lengths
uniform in ``[min_seconds, max_seconds]`` (noise standing in for speech). Every run writes into a fresh
directory (``speechcl extract`` would otherwise skip finished outputs). Warm-up rounds run both commands
on the first few files only (they warm imports, byte-code and the page cache, which do not depend on the
corpus size); the recorded rounds process the whole corpus.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from speechcl.bench.reference import environment
from speechcl.bench.timing import alternate, speed_ratio
from speechcl.interop.export import export_to_transformers
from speechcl.models.config import preset
from speechcl.models.wav2vec2 import Wav2Vec2Encoder
from speechcl.utils.device import resolve_device

SAMPLE_RATE = 16_000
OURS, THEIRS, OURS_COMPILED = "speechcl_extract", "transformers_loop", "speechcl_extract_compiled"
SIDES = (OURS, THEIRS, OURS_COMPILED)
WARMUP_FILES = 5  # warm-up rounds run both commands on this many files: imports, page cache, model file


@dataclass
class ExtractBenchConfig:
    """What :func:`run_extract_bench` measures (``config``: a preset name; ``workdir``: where the corpus,
    model and outputs go, a temporary directory removed afterwards when None)."""

    config: str = "base"
    num_files: int = 200
    min_seconds: float = 1.0
    max_seconds: float = 8.0
    reps: int = 3
    warmup: int = 1
    device: str = "cpu"
    threads: int = 1
    seed: int = 0
    workdir: str | None = None
    workers: int | None = None  # audio-decoding processes of `speechcl extract` (None: its default)
    compile: bool = False  # also time `speechcl extract --compile`
    compile_backend: str | None = None  # its backend ($SPEECHCL_COMPILE_BACKEND of that process; None: default)


def write_corpus(directory: Path, num_files: int, min_seconds: float, max_seconds: float, seed: int = 0) -> float:
    """Write ``num_files`` 16 kHz mono PCM-16 ``utt_NNNN.wav`` files of uniform random length in
    ``[min_seconds, max_seconds]`` (Gaussian noise, std 0.1) into ``directory``; returns their total seconds."""
    if num_files < 1 or not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need num_files >= 1 and 0 < min_seconds <= max_seconds, got {num_files}, "
                         f"{min_seconds}, {max_seconds}")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(num_files):
        samples = int(rng.uniform(min_seconds, max_seconds) * SAMPLE_RATE)
        data = (0.1 * rng.standard_normal(samples)).clip(-1.0, 1.0).astype(np.float32)
        sf.write(directory / f"utt_{i:04d}.wav", data, SAMPLE_RATE, subtype="PCM_16")
        total += samples
    return total / SAMPLE_RATE


def speechcl_argv(model: Path, inputs: Path, output: Path, threads: int, device: str, workers: int | None = None,
                  compile: bool = False) -> list[str]:
    """The ``speechcl extract`` command line of the benchmark."""
    return [sys.executable, "-m", "speechcl", "extract", "--model", str(model), "--input", str(inputs),
            "--output", str(output), "--layers", "last", "--format", "npy", "--threads", str(threads),
            "--device", device, "--no-progress", *([] if workers is None else ["--num-workers", str(workers)]),
            *(["--compile"] if compile else [])]


def reference_argv(model: Path, inputs: Path, output: Path, threads: int, device: str) -> list[str]:
    """The plain transformers loop's command line."""
    return [sys.executable, "-m", "speechcl.bench.reference_extract", "--model", str(model), "--input",
            str(inputs), "--output", str(output), "--threads", str(threads), "--device", device]


def _runner(argv_for: Callable[[Path], list[str]], outputs: Path, name: str, env: dict[str, str] | None = None
            ) -> tuple[Callable[[], None], list[Path]]:
    """A call that runs ``argv_for(fresh_dir)`` to completion (raising on failure), removing the previous
    run's outputs first; the list holds the directory of the latest run. ``env``: extra environment."""
    latest: list[Path] = []
    runs = itertools.count()

    def call() -> None:
        for old in latest:
            shutil.rmtree(old, ignore_errors=True)
        latest.clear()
        out = outputs / f"{name}-{next(runs)}"
        latest.append(out)
        proc = subprocess.run(argv_for(out), capture_output=True, text=True,
                              env=None if not env else os.environ | env)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}): {' '.join(argv_for(out))}\n"
                               f"{proc.stderr[-3000:]}")

    return call, latest


def run_extract_bench(opts: ExtractBenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time both extraction processes (alternated, medians). Returns a JSON-able dict: ``sides`` (per side
    ``median_s``, ``files_per_s``, ``times_s`` and ``audio_s_per_s``), ``ratios.speed`` (ours/theirs files
    per second) and ``max_abs_diff`` between the two sides' features of the first file."""
    say = progress or (lambda _: None)
    device = resolve_device(opts.device)
    if opts.threads < 1:
        raise ValueError(f"threads must be positive, got {opts.threads}")
    with tempfile.TemporaryDirectory(prefix="speechcl-bench-", dir=opts.workdir) as tmp:
        root = Path(tmp)
        say(f"writing {opts.num_files} files of {opts.min_seconds:g}-{opts.max_seconds:g} s and a "
            f"{opts.config} model ...")
        audio = write_corpus(root / "wavs", opts.num_files, opts.min_seconds, opts.max_seconds, opts.seed)
        torch.manual_seed(opts.seed)
        model_dir = export_to_transformers(Wav2Vec2Encoder(preset(opts.config)).eval(), root / "model")
        outputs = root / "out"
        outputs.mkdir()
        env = {"SPEECHCL_COMPILE_BACKEND": opts.compile_backend} if opts.compile_backend else None

        def ours_argv(inputs: Path, out: Path, compile: bool = False) -> list[str]:
            return speechcl_argv(model_dir, inputs, out, opts.threads, str(device), opts.workers, compile)

        def theirs_argv(inputs: Path, out: Path) -> list[str]:
            return reference_argv(model_dir, inputs, out, opts.threads, str(device))

        argv_of: dict[str, Callable[[Path, Path], list[str]]] = {OURS: ours_argv, THEIRS: theirs_argv}
        if opts.compile:
            argv_of[OURS_COMPILED] = lambda inputs, out: ours_argv(inputs, out, compile=True)
        runners = {name: _runner(lambda out, f=f: f(root / "wavs", out), outputs, name, env)
                   for name, f in argv_of.items()}
        if opts.warmup:
            warm = root / "warmup"
            warm.mkdir()
            for path in sorted((root / "wavs").glob("*.wav"))[:WARMUP_FILES]:
                shutil.copy(path, warm / path.name)
            warm_calls = {name: _runner(lambda out, f=f: f(warm, out), outputs, f"warmup-{name}", env)[0]
                          for name, f in argv_of.items()}
            say(f"warm-up: {opts.warmup} round(s) on the first {WARMUP_FILES} files ...")
            alternate(warm_calls, dict.fromkeys(warm_calls, 1), opts.warmup, 0, device,
                      lambda line: say(line.replace("rep", "warm-up", 1)))
        say(f"timing {', '.join(argv_of)} ({opts.threads} threads), {opts.reps} rounds ...")
        series = alternate({name: call for name, (call, _) in runners.items()}, dict.fromkeys(runners, opts.num_files),
                           opts.reps, 0, device, say)
        ours_latest, theirs_latest = runners[OURS][1], runners[THEIRS][1]
        first = "utt_0000.npy"
        diff = float(np.abs(np.load(ours_latest[0] / first) - np.load(theirs_latest[0] / first)).max())
    sides = {}
    for name, s in series.items():
        sides[name] = s.to_dict("files") | {"audio_s_per_s": audio / s.median}
    return {
        "benchmark": "extract",
        "settings": {"config": opts.config, "num_files": opts.num_files, "min_seconds": opts.min_seconds,
                     "max_seconds": opts.max_seconds, "audio_seconds": audio, "reps": opts.reps,
                     "warmup": opts.warmup, **environment(device), "threads": opts.threads,
                     "workers": opts.workers, "compile": opts.compile},
        "sides": sides,
        "ratios": {"speed": speed_ratio(series[OURS], series[THEIRS]),
                   **({"speed_compiled": speed_ratio(series[OURS_COMPILED], series[THEIRS])}
                      if OURS_COMPILED in series else {})},
        "max_abs_diff": diff,
    }


def format_extract(result: dict[str, Any]) -> str:
    """Human-readable lines for a :func:`run_extract_bench` result."""
    st, s = result["settings"], result["sides"]
    lines = [f"extraction of {st['num_files']} files ({st['audio_seconds']:.0f} s of audio, "
             f"{st['min_seconds']:g}-{st['max_seconds']:g} s each), {st['config']}, {st['device']}, {st['threads']} "
             f"threads, whole processes (medians of {st['reps']} alternated rounds after {st['warmup']} warm-up "
             f"round(s) on {WARMUP_FILES} files)"]
    for name in SIDES:
        if name in s:
            lines.append(f"  {name:<26} {s[name]['median_s']:8.2f} s  {s[name]['files_per_s']:7.2f} files/s  "
                         f"{s[name]['audio_s_per_s']:7.1f} audio s/s")
    compiled = result["ratios"].get("speed_compiled")
    lines.append(f"  ours/theirs {result['ratios']['speed']:.2f}x"
                 + ("" if compiled is None else f"   compiled/theirs {compiled:.2f}x")
                 + f"   max |ours-theirs| on one file {result['max_abs_diff']:.1e}")
    return "\n".join(lines)
