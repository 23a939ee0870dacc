"""Run `speechcl bench inference` (see speechcl/bench/commands.py for the options).

Usage::

    python tools/bench_inference.py [--quick] [--reps N] [--warmup N] [--threads N] [--device cpu|cuda] [--json OUT] ...
"""

import sys

from speechcl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "inference", *sys.argv[1:]]))
