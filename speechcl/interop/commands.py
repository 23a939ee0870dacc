"""The ``convert`` verb.

Usage::

    speechcl convert SRC DST [--to speechcl|transformers] [--dict dict.ltr.txt]

``SRC`` is a speechcl checkpoint directory, a transformers Wav2Vec2 directory or a fairseq ``.pt`` file
(pretraining or CTC); ``DST`` receives a speechcl checkpoint directory (default) or a transformers
directory that ``Wav2Vec2ForPreTraining`` / ``Wav2Vec2ForCTC`` / ``Wav2Vec2Model.from_pretrained`` loads.
CTC labels and the audio normalisation flag are carried over; ``--dict`` gives a fairseq CTC model's labels.
"""

from __future__ import annotations

import argparse
import sys

from speechcl.interop.export import convert


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert`` to the ``speechcl`` parser."""
    parser = subparsers.add_parser(
        "convert", help="convert a checkpoint between speechcl, transformers and fairseq formats",
        description="Load a speechcl checkpoint directory, a transformers Wav2Vec2 directory or a fairseq "
                    "wav2vec 2.0 .pt (pretraining or CTC) and write it as a speechcl checkpoint or a "
                    "transformers model directory.")
    parser.add_argument("source", metavar="SRC", help="checkpoint directory or fairseq .pt file")
    parser.add_argument("destination", metavar="DST", help="output directory")
    parser.add_argument("--to", choices=("speechcl", "transformers"), default="speechcl",
                        help="output format (default speechcl)")
    parser.add_argument("--dict", default=None, metavar="DICT",
                        help="fairseq dict.ltr.txt of a CTC model (its labels; fairseq .pt files do not hold them)")
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    try:
        model = convert(args.source, args.destination, to=args.to, dictionary=args.dict)
    except (FileNotFoundError, ValueError) as err:
        print(f"speechcl convert: error: {err}", file=sys.stderr)
        return 1
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {type(model).__name__} ({params / 1e6:.2f}M parameters) to {args.destination} "
          f"as {args.to}")
    return 0
