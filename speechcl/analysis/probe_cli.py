"""The ``probe`` verb.

Usage::

    speechcl probe {phone,ctc,speaker,keyword} --model M --manifest-dir D --train SPLIT --test SPLIT
                   --output OUT [--layers all|0,3,6] [--head linear|mlp] [--hidden 256] [--epochs N] [--lr 2e-3]
                   [--batch-size 8] [--seed 0] [--device auto|cpu|cuda] [--max-utterances N] [--holdout 0.2]
                   [--[no-]normalize] [--num-workers N] [--threads N] [--no-progress]

Exit status: 0 done, 2 bad arguments or inputs (the message says what to fix), 75 when SIGTERM/SIGINT
stopped the feature extraction (what was extracted is kept: rerun the same command to continue).
"""

from __future__ import annotations

import argparse
import sys

import torch

from speechcl.analysis.probe import DEFAULT_EPOCHS, HEADS, ProbeConfig, run_probe
from speechcl.analysis.probe_data import TASKS
from speechcl.utils.device import default_threads, resolve_device
from speechcl.utils.signals import EXIT_PREEMPTED, Preempted


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``probe`` to the ``speechcl`` parser."""
    p = subparsers.add_parser(
        "probe", help="frozen-model probes per layer and for the weighted sum of layers",
        description="Train a small head on each hidden state of a frozen model, and one on the SUPERB weighted "
                    "sum of all hidden states (softmax weights learned with it), and score them. Tasks: phone "
                    "(frame-level phone classification, D/SPLIT.phn_frames + D/dict.phn.txt), ctc (letter CTC, "
                    "CER; D/SPLIT.ltr + D/dict.ltr.txt), speaker (mean-pooled speaker identification; D/SPLIT.spk "
                    "or LibriSpeech paths), keyword (mean-pooled command classification; D/SPLIT.kw + "
                    "D/dict.kw.txt). Features are extracted once into OUTPUT/cache (resumable; reruns reuse them). "
                    "Writes OUTPUT/results.json, results.md and TASK_layers.png. Train and test splits from "
                    "different conditions measure dataset bias: the training-split score is reported beside the "
                    "test score. The same split for --train and --test holds out --holdout of it for testing.")
    p.add_argument("task", choices=TASKS, help="what to probe")
    p.add_argument("--model", required=True, help="speechcl checkpoint dir, transformers dir or fairseq .pt")
    add_split_arguments(p, required=True)
    p.add_argument("--output", required=True, metavar="OUT", help="output directory")
    add_head_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the heads' initialisation and batch order")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="per-utterance normalisation of the audio (default: what the checkpoint records)")
    p.add_argument("--num-workers", type=int, default=None, help="audio-decoding processes of the extraction")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_probe_command)


def add_split_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    """``--manifest-dir``, ``--train`` and ``--test`` (shared with ``speechcl analyze invariance --probe``)."""
    p.add_argument("--manifest-dir", required=required, metavar="D", help="holds SPLIT.tsv and the label files")
    p.add_argument("--train", required=required, metavar="SPLIT", help="training split (D/SPLIT.tsv)")
    p.add_argument("--test", required=required, metavar="SPLIT",
                   help="test split; the --train split holds out --holdout")


def add_head_arguments(p: argparse.ArgumentParser) -> None:
    """The heads' and the data selection's options (shared with ``speechcl analyze invariance --probe``)."""
    p.add_argument("--layers", default="all",
                   help="hidden states probed one by one: 'all' (default) or indices like 0,3,6 (0 = input to the "
                        "first transformer layer); the weighted sum always mixes all of them")
    p.add_argument("--head", choices=HEADS, default="linear", help="linear (default) or mlp (2 layers)")
    p.add_argument("--hidden", type=int, default=256, help="width of the mlp head (default 256)")
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the training split per head (default per task: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per update (default 8)")
    p.add_argument("--max-utterances", type=int, default=None, metavar="N",
                   help="use at most N utterances of each split, spread evenly over it")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="fraction held out for testing when --test is the --train split (default 0.2; per class "
                        "for speaker and keyword)")


def probe_config(args: argparse.Namespace, task: str, device: torch.device) -> ProbeConfig:
    """The :class:`ProbeConfig` of ``task`` from parsed arguments (:func:`add_split_arguments`,
    :func:`add_head_arguments`, ``--model``, ``--output``, ``--seed``, ``--normalize``, ``--num-workers``,
    ``--no-progress``)."""
    return ProbeConfig(
        task=task, model=args.model, manifest_dir=args.manifest_dir, train=args.train, test=args.test,
        output=args.output, layers=args.layers, head=args.head, hidden=args.hidden, epochs=args.epochs,
        lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=str(device),
        max_utterances=args.max_utterances, holdout=args.holdout, normalize=args.normalize,
        num_workers=args.num_workers, progress=not args.no_progress,
    )


def run_probe_command(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device, "--device")
        if device.type == "cpu":
            torch.set_num_threads(args.threads or default_threads())
        result = run_probe(probe_config(args, args.task, device))
    except (FileNotFoundError, ValueError) as err:
        print(f"speechcl probe: error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"speechcl probe: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    per_layer = ", ".join(f"{k}: {v:.3f}" for k, v in result.per_layer.items())
    print(f"{result.task} {result.metric} per layer (test {result.test}): {per_layer}; weighted sum "
          f"{result.weighted_sum:.3f}; chance {result.chance:.3f} -> {args.output}/results.json")
    return 0
