"""Run one verb through its own ``register`` (independent of the other verbs being importable)."""

from __future__ import annotations

import argparse
import importlib


def run_verb(module: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="speechcl")
    importlib.import_module(module).register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
