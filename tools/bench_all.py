"""Run `speechcl bench all`: pretrain, inference and extract benchmarks, then a PASS/MISS table of the
ratios against their targets (see speechcl/bench/commands.py for the options; about 7 minutes at the
BASE defaults on 2 CPU cores).

Usage::

    python tools/bench_all.py [--quick] [--reps N] [--warmup N] [--threads N] [--device cpu|cuda] [--json OUT] ...
"""

import sys

from speechcl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "all", *sys.argv[1:]]))
