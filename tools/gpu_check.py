"""Every GPU measurement of the GPU issue in one command (library code: speechcl/bench/gpu_check.py).

Usage::

    python tools/gpu_check.py --out DIR [--dry] [--budget-minutes 9] [--stages pretrain,inference,...]
                              [--no-isolate] [--compile-backend NAME]
    bash tools/gpu_check.sh [DIR]          # the same on a GPU machine, installing what it lacks first

Writes DIR/results.json (after every stage), DIR/summary.md (stage status, PASS/MISS targets table) and
DIR/log.txt. ``--dry`` runs every stage on CPU with the tiny config in seconds (the default tests do);
without it the run sizes (BASE, 8 x 10 s pretraining batch, batch 16 x 10 s inference, 1,000 files)
take about 9 minutes on an H200, each stage in its own process under a timeout from the budget.
Exit status: 0 when every stage ran (targets may still MISS: see summary.md), 1 when a stage failed or
timed out, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from speechcl.bench.gpu_check import STAGES, CheckConfig, run_check, stage_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="results folder (created)")
    parser.add_argument("--dry", action="store_true", help="CPU, tiny config, seconds: the same code paths")
    parser.add_argument("--budget-minutes", type=float, default=None, help="time for all stages (default 9)")
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="each stage in its own process under a timeout (default: on, off with --dry)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; "
                                                                "aot_eager with --dry)")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --dry)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # an isolated stage process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        return stage_main(args.stage, args.result, args.config_json)
    if not args.out:
        parser.error("--out DIR is required")
    cfg = CheckConfig.dry_run() if args.dry else CheckConfig()
    if args.budget_minutes is not None:
        cfg.budget_minutes = args.budget_minutes
    if args.compile_backend is not None:
        cfg.compile_backend = args.compile_backend
    if args.device is not None:
        cfg.device = args.device
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("tools/gpu_check.py: error: no CUDA device here; run with --dry for the CPU version",
                  file=sys.stderr)
            return 2
    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    isolate = (not args.dry) if args.isolate is None else args.isolate
    try:
        results = run_check(Path(args.out), cfg, stages, isolate=isolate, tool=Path(__file__).resolve())
    except ValueError as err:
        print(f"tools/gpu_check.py: error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "summary.md").read_text())
    return 0 if all(r["status"] == "ok" for r in results["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
