"""Run `speechcl bench pretrain` (see speechcl/bench/commands.py for the options).

Usage::

    python tools/bench_pretrain.py [--quick] [--reps N] [--warmup N] [--threads N] [--device cpu|cuda] [--json OUT] ...
"""

import sys

from speechcl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "pretrain", *sys.argv[1:]]))
