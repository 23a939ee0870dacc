"""Reading throughput of the training loader: tar shards (``data.format=shards``) vs the manifest of FLAC files.

Both sides run the real training loaders (``speechcl.training.pretrain.build_loader``) over the same split
with the same settings: every item whole (no crop), padded batches of up to ``--max-tokens`` samples,
``--workers`` decoding processes. One call is a full epoch; the sides alternate (A B A B ...) after
warm-up epochs (``speechcl.bench.timing.alternate``), and each side's speed is the epoch's audio seconds
over the median epoch time. Printed: audio seconds per second from shards, from the manifest, and their
ratio (> 1: shards are faster).

After the warm-up both sides read from the page cache, so on a local disk this measures decoding and
loader overhead; drop the cache between rounds (or use a network file system) to see the I/O pattern's
share.

Usage::

    python tools/bench_shards.py MANIFEST_DIR SPLIT [--shards DIR] [--shard-mb 100] [--workers 2]
                                 [--max-tokens 1400000] [--reps 3] [--warmup 1] [--json OUT]

Without ``--shards`` the split is first written as shards into a temporary folder (not timed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from speechcl.bench.timing import alternate, speed_ratio
from speechcl.data.shards import DEFAULT_SHARD_MB, write_shards
from speechcl.training.pretrain import DataConfig, build_loader
from speechcl.utils.io import atomic_write_json


def epoch_reader(data: DataConfig, split: str):
    """``(read one epoch, audio seconds in it)`` for the loader ``data`` selects."""
    loader = build_loader(data, split, True)
    seconds = float(loader.dataset.sizes.sum()) / 16000.0

    def read() -> None:
        for _ in loader:
            pass

    return read, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest_dir", help="output folder of speechcl prepare")
    parser.add_argument("split", help="the split to read (MANIFEST_DIR/SPLIT.tsv)")
    parser.add_argument("--shards", default=None, help="its shards (speechcl prepare shards OUT); default: write them")
    parser.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB, help="shard size when writing them")
    parser.add_argument("--workers", type=int, default=2, help="loader workers on each side (default 2)")
    parser.add_argument("--max-tokens", type=int, default=1_400_000, help="padded samples per batch")
    parser.add_argument("--reps", type=int, default=3, help="recorded epochs per side (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded epochs per side first (default 1)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        shards = args.shards
        if shards is None:
            shards = str(Path(scratch) / "shards")
            start = time.perf_counter()
            result = write_shards(args.manifest_dir, args.split, shards, shard_mb=args.shard_mb)
            print(f"wrote {result.num_shards} shards ({result.total_bytes / 1e6:.1f} MB) in "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
        common = {"manifest_dir": args.manifest_dir, "shards_dir": shards, "train_subset": args.split,
                  "valid_subset": "", "max_sample_size": 10**9, "min_sample_size": 0, "max_tokens": args.max_tokens,
                  "pad": True, "num_workers": args.workers}
        sides, work = {}, {}
        for name in ("shards", "manifest"):
            sides[name], work[name] = epoch_reader(DataConfig(format=name, **common), args.split)
        series = alternate(sides, work, args.reps, args.warmup, torch.device("cpu"),
                           progress=lambda line: print(line, file=sys.stderr))
    ratio = speed_ratio(series["shards"], series["manifest"])
    for name, s in series.items():
        print(f"{name:>8}: {s.speed:8.1f} audio s/s (epoch of {s.work:.0f} s audio, median {s.median:.2f} s)")
    print(f"shards / manifest: {ratio:.2f}x")
    if args.json:
        report = {name: s.to_dict("audio_s") for name, s in series.items()} | {
            "ratio_shards_vs_manifest": ratio, "split": args.split, "workers": args.workers,
            "max_tokens": args.max_tokens}
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
