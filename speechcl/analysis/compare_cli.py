"""The ``compare`` verb: pretraining objectives side by side (:mod:`speechcl.analysis.compare`).

Usage::

    speechcl compare DIR [--methods M ...] [--output FILE] [--dev-split dev-clean] [--test-split test-clean]
                     [--no-plots]

Exit status: 0 done (pieces not there yet are '-' in the table and listed under "Missing"), 2 when DIR is not a
folder, holds no method folders, or a file in it is malformed (the message names it).
"""

from __future__ import annotations

import argparse
import sys

from speechcl.analysis.compare import CURVES_PNG, INVARIANCE_PNG, PROBES_PNG, write_comparison


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the ``speechcl`` parser."""
    p = subparsers.add_parser(
        "compare", help="pretraining objectives side by side: budget, probes, invariance, ASR (results.md + plots)",
        description="Read an objectives experiment (recipes/objectives/run.sh): for each method folder "
                    "DIR/<method>/ its pretraining budget (pretrain/train_result.json, config.yaml, log.jsonl), "
                    "probe scores (probes/<task>/results.json), invariance (invariance/results.json) and error "
                    "rates (finetune/decode and decode_lm/summary.json), and write one markdown table with a row "
                    f"per method, plus {CURVES_PNG}, {PROBES_PNG} and {INVARIANCE_PNG} beside it. A piece that is "
                    "missing (a stage not run yet) is '-' with a note; a malformed file is an error naming it.")
    p.add_argument("dir", metavar="DIR", help="the experiment folder (holds one folder per method)")
    p.add_argument("--methods", nargs="+", default=None, metavar="M",
                   help="methods (folder names) in table order (default: every method folder of DIR)")
    p.add_argument("--output", default=None, metavar="FILE", help="the markdown file (default DIR/results.md)")
    p.add_argument("--dev-split", default="dev-clean", help="decoded split reported as dev (default dev-clean)")
    p.add_argument("--test-split", default="test-clean", help="decoded split reported as test (default test-clean)")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    try:
        comparison = write_comparison(args.dir, args.methods, args.output, args.dev_split, args.test_split,
                                      plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as err:
        print(f"speechcl compare: error: {err}", file=sys.stderr)
        return 2
    print(comparison.markdown.read_text(encoding="utf-8"), end="")
    figures = [str(p) for p in (comparison.curves, comparison.probes, comparison.invariance) if p is not None]
    print(f"-> {comparison.markdown}" + (f"; figures: {', '.join(figures)}" if figures else ""))
    return 0
