"""The ``extract`` verb.

Usage::

    speechcl extract --model PATH --input PATH --output DIR [--layers last|all|6|0,6,12]
                     [--format npy|shards|hdf5] [--max-tokens 960000] [--chunk-seconds 60 --overlap-seconds 4]
                     [--device auto|cpu|cuda|cuda:1] [--dtype float32|bfloat16] [--shard I/N]
                     [--num-workers N] [--threads N] [--ext flac,wav,...] [--[no-]normalize] [--overwrite]
                     [--compile]

Bad inputs (undecodable, NaN/Inf samples, shorter than the model's receptive field, or features that come
out non-finite) are skipped: nothing is written for them, each is named on stderr (the first ten) and in
``DIR/failed<tag>.tsv`` with the reason, and everything else is extracted.

Exit status: 0 when every input has its output, 1 when some inputs failed (listed in ``DIR/failed*.tsv``;
rerun to retry them), 2 for bad arguments or an unusable model / input list, 75 (``EXIT_PREEMPTED``) when
SIGTERM or SIGINT stopped the run after a batch with its outputs saved: rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import sys

import torch

from speechcl.audio.io import AUDIO_EXTENSIONS
from speechcl.features.extract import FORMATS, extract_to_directory
from speechcl.features.extractor import DEFAULT_MAX_TOKENS
from speechcl.features.inputs import parse_shard
from speechcl.utils.device import default_threads, resolve_device
from speechcl.utils.signals import EXIT_PREEMPTED, Preempted


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``extract`` to the ``speechcl`` parser."""
    p = subparsers.add_parser(
        "extract", help="write hidden-state features of audio files (resumable, batched, sharded)",
        description="Extract wav2vec 2.0 hidden states for an audio file, a directory (recursively), a .tsv "
                    "manifest or a Kaldi wav.scp. Outputs are written atomically and existing ones are "
                    "skipped, so an interrupted run continues where it stopped (SIGTERM/SIGINT stop it after "
                    "the current batch). Inputs of different lengths share padded batches, group-norm models "
                    "(BASE) included: the group norm's statistics skip each input's padding, so batched "
                    "features equal one-by-one features. Bad inputs (undecodable, NaN/Inf samples, too short, "
                    "non-finite features) are skipped and listed with the reason in OUTPUT/failed.tsv. Exit "
                    "status: 0 all extracted, 1 some inputs failed, 2 bad arguments, 75 stopped by a signal "
                    "(rerun to continue).")
    p.add_argument("--model", required=True, help="speechcl checkpoint dir, transformers dir or fairseq .pt")
    p.add_argument("--input", required=True, help="audio file, directory, .tsv manifest or wav.scp")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--layers", default="last",
                   help="'last' (final output, default), 'all' (hidden states 0..L), an index or a list like "
                        "0,6,12 (index 0 = input to the first transformer layer, i = output of layer i)")
    p.add_argument("--format", choices=FORMATS, default="npy",
                   help="npy: one <DIR>/<relative path>.npy per input (default); shards: large .npy shards + "
                        "index.tsv; hdf5: features.h5, one dataset per input (virtual datasets over part files "
                        "in features.parts/; needs h5py)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"samples per padded batch (default {DEFAULT_MAX_TOKENS} = 60 s)")
    p.add_argument("--chunk-seconds", type=float, default=60.0,
                   help="cut longer audio into overlapping chunks of this length and stitch them (default 60; "
                        "0 = never)")
    p.add_argument("--overlap-seconds", type=float, default=4.0, help="overlap between chunks (default 4)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute type (bfloat16 via autocast); outputs are float32")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="process inputs I, I+N, ... (default: RANK/WORLD_SIZE from torchrun, else all)")
    p.add_argument("--num-workers", type=int, default=None, help="audio-decoding processes (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: CPUs divided among the processes on this machine)")
    p.add_argument("--ext", default=",".join(AUDIO_EXTENSIONS),
                   help=f"extensions searched in directories (default {','.join(AUDIO_EXTENSIONS)})")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="zero-mean unit-variance per utterance, as models like LARGE LV-60 expect (default: what "
                        "the checkpoint records, else off)")
    p.add_argument("--overwrite", action="store_true", help="recompute outputs that already exist")
    p.add_argument("--shard-size-mb", type=float, default=1024.0,
                   help="target size of a shard (--format shards) or part file (--format hdf5); features are "
                        "buffered in memory up to this size, and a killed run loses at most that much work "
                        "(default 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer layers (dynamic shapes: one compilation serves every "
                        "batch length; pays off on large corpora, mostly on GPUs)")
    p.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    try:
        shard = parse_shard(args.shard)
        device = resolve_device(args.device, "--device")
        if args.max_tokens <= 0 or args.chunk_seconds < 0:
            raise ValueError("--max-tokens must be positive and --chunk-seconds >= 0")
        if device.type == "cpu":
            torch.set_num_threads(args.threads or default_threads())
        summary = extract_to_directory(
            args.model, args.input, args.output, layers=args.layers, fmt=args.format,
            max_tokens=args.max_tokens, chunk_seconds=args.chunk_seconds or None,
            overlap_seconds=args.overlap_seconds, device=device,
            dtype=torch.bfloat16 if args.dtype == "bfloat16" else torch.float32, shard=shard,
            num_workers=args.num_workers, extensions=[e for e in args.ext.split(",") if e], normalize=args.normalize,
            overwrite=args.overwrite, shard_bytes=int(args.shard_size_mb * (1 << 20)),
            progress=not args.no_progress, compile=args.compile,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"speechcl extract: error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"speechcl extract: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    for path, reason in summary.failed[:10]:
        print(f"speechcl extract: skipped {path}: {reason}", file=sys.stderr)
    if len(summary.failed) > 10:
        print(f"speechcl extract: ... and {len(summary.failed) - 10} more (see {args.output}/failed*.tsv)",
              file=sys.stderr)
    print(f"{summary.line()} -> {args.output}")
    return 1 if summary.failed else 0
