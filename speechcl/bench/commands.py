"""The ``bench`` verb: speed, memory and accuracy of speechcl against transformers.

Usage::

    speechcl bench pretrain  [--config base] [--batch 4] [--seconds 5] [--no-memory] [--no-flops]
                             [--trajectory-config small|none] [--trajectory-steps 20] [COMMON]
    speechcl bench inference [--config base] [--seconds 10] [--batch-sizes 1,4] [COMMON]
    speechcl bench extract   [--config base] [--num-files 200] [--min-seconds 1] [--max-seconds 8] [COMMON]
    speechcl bench all       [--config base] [--num-files 200] [COMMON]

    COMMON: [--reps N] [--warmup N] [--threads N] [--device cpu|cuda] [--seed 0] [--quick] [--json OUT]
            [--reference-bf16|--no-reference-bf16] [--compile [--compile-backend NAME]] [--extract-workers N]

On a GPU (``--device cuda``) transformers is also timed under bf16 autocast (the GPU targets compare bf16
with bf16), peak memory comes from ``torch.cuda.max_memory_allocated`` and the FLOP rates are compared
with measured bf16, TF32 and float32 matmuls; ``--compile`` adds speechcl sides whose transformer layers
are compiled (``speechcl.models.compile``).

Each benchmark times speechcl and its reference alternately (A B A B ...) after warm-up rounds, prints
medians and ratios, and with ``--json`` also writes its results (atomically). ``--quick`` is a smoke run
(tiny config, one round, few files); explicit options still win. ``all`` ends with a table of the ratios
against the targets of :mod:`speechcl.bench.report`, PASS or MISS; a miss is reported, not an exit
status. Exit status: 0, or 2 for bad arguments (or transformers missing).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

import torch

from speechcl.models.config import PRESETS

# (normal, --quick) defaults per benchmark; ``all`` uses the ALL_* budget: about 7 minutes on 2 CPU cores.
PRETRAIN = {"config": ("base", "tiny"), "reps": (3, 1), "warmup": (1, 1), "trajectory_config": ("small", "tiny"),
            "matmul_size": (None, 512)}
INFERENCE = {"config": ("base", "tiny"), "reps": (5, 1), "warmup": (1, 1), "batch_sizes": ("1,4", "1")}
EXTRACT = {"config": ("base", "tiny"), "reps": (3, 1), "warmup": (1, 0), "num_files": (200, 20)}
ALL_PRETRAIN = {"reps": (3, 1), "warmup": (1, 1)}
ALL_INFERENCE = {"reps": (3, 1), "warmup": (1, 1), "batch_sizes": ("1,4", "1")}
ALL_EXTRACT = {"reps": (1, 1), "warmup": (1, 0), "num_files": (200, 20)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench {pretrain,inference,extract,all}`` to the ``speechcl`` parser."""
    p = subparsers.add_parser(
        "bench", help="benchmark pretraining, inference and extraction against transformers",
        description="Speed, peak memory and bf16 accuracy of speechcl against transformers' Wav2Vec2 on the same "
                    "config and weights, measured alternately in one run (see speechcl/bench).")
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    pre = sub.add_parser("pretrain", help="training step: speed, peak memory, FLOP/s, bf16 loss trajectory",
                         description="One pretraining step (masks, distractors, forward, backward, AdamW) on a "
                                     "random batch: speechcl fp32 and bf16 vs transformers fp32.")
    _common(pre)
    _pretrain_options(pre)
    pre.set_defaults(func=run_benchmark)

    inf = sub.add_parser("inference", help="extract_features vs Wav2Vec2Model(output_hidden_states=True)",
                         description="All hidden states of equal-length utterances: speechcl fp32 and bf16 vs "
                                     "transformers fp32, and the bf16 output's cosine similarity to fp32.")
    _common(inf)
    _inference_options(inf)
    inf.set_defaults(func=run_benchmark)

    ext = sub.add_parser("extract", help="`speechcl extract` vs a plain transformers loop, whole processes",
                         description="Files per second over a generated directory of mixed-length .wav files, "
                                     "start-up included, same model files, layer and threads.")
    _common(ext)
    _extract_options(ext)
    ext.set_defaults(func=run_benchmark)

    every = sub.add_parser("all", help="the three benchmarks and a PASS/MISS table against the targets",
                           description="pretrain, inference and extract with a budget that takes about 7 minutes "
                                       "on 2 CPU cores at the BASE config, then the targets table.")
    _common(every)
    _pretrain_options(every)
    _inference_options(every)
    _extract_options(every)
    every.set_defaults(func=run_all)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", choices=sorted(PRESETS), default=None,
                   help="model preset (default base; tiny with --quick)")
    p.add_argument("--reps", type=int, default=None, help="recorded rounds per side")
    p.add_argument("--warmup", type=int, default=None, help="unrecorded rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] when available")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data, masks (default 0)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny config, one round, few files")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON to OUT")
    p.add_argument("--reference-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="also time transformers under bf16 autocast (default: on GPUs only)")
    p.add_argument("--compile", action="store_true",
                   help="also time speechcl with torch.compile'd transformer layers (compilation in warm-up)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend of --compile (default inductor, or $SPEECHCL_COMPILE_BACKEND)")


def _pretrain_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pretrain")
    g.add_argument("--batch", type=int, default=4, help="utterances per step (default 4)")
    g.add_argument("--seconds", dest="pretrain_seconds", type=float, default=5.0, help="seconds each (default 5)")
    g.add_argument("--no-memory", action="store_true", help="skip the per-side peak-memory processes")
    g.add_argument("--no-flops", action="store_true", help="skip FLOP counting and the matmul reference")
    g.add_argument("--matmul-size", type=int, default=None,
                   help="n of the n x n reference matmuls (default 2048 on CPU, 8192 on GPUs)")
    g.add_argument("--trajectory-config", default=None,
                   help="preset of the bf16-vs-fp32 loss check (default small; tiny with --quick; none skips)")
    g.add_argument("--trajectory-steps", type=int, default=20, help="updates of that check (default 20)")


def _inference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument("--utterance-seconds", type=float, default=10.0, help="utterance length (default 10)")
    g.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,4; 1 with --quick)")


def _extract_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("extract")
    g.add_argument("--num-files", type=int, default=None, help="files in the generated corpus (default 200)")
    g.add_argument("--min-seconds", type=float, default=1.0, help="shortest file (default 1)")
    g.add_argument("--max-seconds", type=float, default=8.0, help="longest file (default 8)")
    g.add_argument("--workdir", default=None, help="where the temporary corpus and outputs go (default: $TMPDIR)")
    g.add_argument("--extract-workers", type=int, default=None,
                   help="audio-decoding processes of `speechcl extract` (default: its own default, 1)")


def _pick(args: argparse.Namespace, name: str, defaults: dict[str, tuple[Any, Any]], fallback: Any = None) -> Any:
    """An explicit option, else the (normal, quick) default of ``name``, else ``fallback``."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    if name in defaults:
        return defaults[name][1 if args.quick else 0]
    return fallback


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _pretrain_config(args: argparse.Namespace, budget: dict[str, tuple[Any, Any]]) -> Any:
    from speechcl.bench.pretrain import PretrainBenchConfig

    defaults = PRETRAIN | budget
    trajectory = _pick(args, "trajectory_config", defaults)
    return PretrainBenchConfig(
        config=_pick(args, "config", defaults), batch=args.batch, seconds=args.pretrain_seconds,
        reps=_pick(args, "reps", defaults), warmup=_pick(args, "warmup", defaults), device=args.device,
        seed=args.seed, memory=not args.no_memory, flops=not args.no_flops,
        matmul_size=_pick(args, "matmul_size", defaults),
        trajectory_config=None if str(trajectory).lower() == "none" else trajectory,
        trajectory_steps=args.trajectory_steps, reference_bf16=args.reference_bf16, compile=args.compile,
        compile_backend=args.compile_backend,
    )


def _inference_config(args: argparse.Namespace, budget: dict[str, tuple[Any, Any]]) -> Any:
    from speechcl.bench.inference import InferenceBenchConfig

    defaults = INFERENCE | budget
    sizes = str(_pick(args, "batch_sizes", defaults))
    try:
        batch_sizes = tuple(int(b) for b in sizes.split(",") if b.strip())
    except ValueError:
        raise ValueError(f"--batch-sizes must be comma-separated integers, got {sizes!r}") from None
    return InferenceBenchConfig(
        config=_pick(args, "config", defaults), seconds=args.utterance_seconds, batch_sizes=batch_sizes,
        reps=_pick(args, "reps", defaults), warmup=_pick(args, "warmup", defaults), device=args.device,
        seed=args.seed, reference_bf16=args.reference_bf16, compile=args.compile, compile_backend=args.compile_backend,
    )


def _extract_config(args: argparse.Namespace, budget: dict[str, tuple[Any, Any]]) -> Any:
    from speechcl.bench.extraction import ExtractBenchConfig

    defaults = EXTRACT | budget
    return ExtractBenchConfig(
        config=_pick(args, "config", defaults), num_files=_pick(args, "num_files", defaults),
        min_seconds=args.min_seconds, max_seconds=args.max_seconds, reps=_pick(args, "reps", defaults),
        warmup=_pick(args, "warmup", defaults), device=args.device, threads=torch.get_num_threads(),
        seed=args.seed, workdir=args.workdir, workers=args.extract_workers, compile=args.compile,
        compile_backend=args.compile_backend,
    )


def _run(args: argparse.Namespace, body: Callable[[], dict[str, Any]]) -> int:
    """Apply ``--threads``, run ``body`` (which prints), write ``--json``; errors of use exit 2."""
    from speechcl.bench.reference import require_transformers
    from speechcl.bench.report import write_json

    if args.threads is not None:
        if args.threads < 1:
            print("speechcl bench: error: --threads must be positive", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        require_transformers()  # before any measuring: every benchmark has a transformers side
        result = body()
    except (ValueError, ImportError) as err:
        print(f"speechcl bench: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, result)
        print(f"results written to {args.json}")
    return 0


# Per benchmark: module, its run/format functions, its config builder and its budget inside `all`.
_BENCHMARKS: dict[str, tuple[str, str, str, Callable[..., Any], dict[str, tuple[Any, Any]]]] = {
    "pretrain": ("speechcl.bench.pretrain", "run_pretrain_bench", "format_pretrain", _pretrain_config, ALL_PRETRAIN),
    "inference": ("speechcl.bench.inference", "run_inference_bench", "format_inference", _inference_config,
                  ALL_INFERENCE),
    "extract": ("speechcl.bench.extraction", "run_extract_bench", "format_extract", _extract_config, ALL_EXTRACT),
}


def _measure(args: argparse.Namespace, name: str, budget: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Run benchmark ``name`` with the options in ``args`` (defaults from ``budget`` first) and print it."""
    module_name, run_name, format_name, build_config, _ = _BENCHMARKS[name]
    module = importlib.import_module(module_name)
    result = getattr(module, run_name)(build_config(args, budget), _progress)
    print(getattr(module, format_name)(result), flush=True)
    return result


def run_benchmark(args: argparse.Namespace) -> int:
    """``bench pretrain|inference|extract``: one benchmark, then its rows of the targets table."""
    def body() -> dict[str, Any]:
        from speechcl.bench.report import format_summary, summarize

        result = _measure(args, args.benchmark, {})
        rows = summarize({args.benchmark: result})
        table = format_summary(rows, only_measured=True)
        if table:
            print(table)
        return result | {"summary": [r for r in rows if r["status"] != "n/a"]}

    return _run(args, body)


def run_all(args: argparse.Namespace) -> int:
    """``bench all``: every benchmark at its ``all`` budget, then the whole targets table."""
    def body() -> dict[str, Any]:
        from speechcl.bench.report import format_summary, summarize

        results = {name: _measure(args, name, spec[4]) for name, spec in _BENCHMARKS.items()}
        rows = summarize(results)
        print()
        print(format_summary(rows))
        return results | {"summary": rows}

    return _run(args, body)
