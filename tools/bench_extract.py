"""Run `speechcl bench extract` (see speechcl/bench/commands.py for the options).

Usage::

    python tools/bench_extract.py [--quick] [--reps N] [--warmup N] [--threads N] [--device cpu|cuda] [--json OUT] ...
"""

import sys

from speechcl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "extract", *sys.argv[1:]]))
