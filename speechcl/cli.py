"""The ``speechcl`` command: one entry point, one verb per task.

Each verb lives next to the library code it drives, in a ``commands`` module exposing
``register(subparsers)``; the module adds an ``argparse`` sub-parser whose ``func`` default takes the
parsed namespace and returns an exit code. Hydra-driven verbs (``pretrain``, ``finetune``) receive the
remaining ``key=value`` overrides untouched.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute verbs, in the order they appear in ``speechcl --help``.
_COMMAND_MODULES: tuple[str, ...] = (
    "speechcl.data.commands",
    "speechcl.cluster.commands",
    "speechcl.features.commands",
    "speechcl.interop.commands",
    "speechcl.training.commands",
    "speechcl.asr.commands",
    "speechcl.bench.commands",
    "speechcl.analysis.probe_cli",
    "speechcl.analysis.invariance_cli",
    "speechcl.analysis.compare_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechcl",
        description="Contrastive self-supervised speech learning (wav2vec 2.0 and family).",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = list(extra)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
