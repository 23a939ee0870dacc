"""The ``analyze`` verb and its ``invariance`` sub-command.

Usage::

    speechcl analyze invariance --model M --input PATH --output OUT [--transforms default|LABEL|NAME:K=V,... ...]
                                [--max-files N] [--device auto|cpu|cuda] [--seed 0] [--alignment linear|nearest]
                                [--[no-]normalize] [--chunk-seconds 60] [--threads N] [--ext flac,wav]
                                [--no-progress]
                                [--probe {phone,ctc,speaker,keyword} ... --manifest-dir D --train SPLIT --test SPLIT
                                 [--layers all] [--head linear|mlp] [--epochs N] [--max-utterances N] ...]

With ``--probe``, each probe is trained on the clean --train split (as ``speechcl probe`` trains it, sharing
its feature cache) and scored on the --test split and on each transformation of it: the drop per head and
transformation joins the tables and the heatmap. Without ``--input``, the cosine and CKA are measured on the
probes' test utterances, from the same features.

Exit status: 0 done (inputs that could not be used are listed in OUT/results.json and results.md), 2 bad
arguments, model or inputs, 75 when SIGTERM/SIGINT stopped the probes' feature extraction (rerun to continue).
"""

from __future__ import annotations

import argparse
import sys

import torch

from speechcl.analysis.invariance import ALIGNMENTS, DEFAULT_TRANSFORMATIONS, InvarianceConfig, run_invariance
from speechcl.analysis.probe_cli import add_head_arguments, add_split_arguments, probe_config
from speechcl.analysis.probe_data import TASKS
from speechcl.audio.io import AUDIO_EXTENSIONS
from speechcl.utils.device import default_threads, resolve_device
from speechcl.utils.signals import EXIT_PREEMPTED, Preempted


def _catalogue() -> str:
    lines = ["default transformations (--transforms LABEL ...):"]
    for t in DEFAULT_TRANSFORMATIONS:
        params = ",".join(f"{k}={v}" for k, v in t.params)
        lines.append(f"  {t.label:<18} {t.name}{':' + params if params else ''}")
    lines.append("any other strength: NAME:KEY=VALUE,... (e.g. noise:snr_db=5,color=brown, speed:factor=0.95)")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``analyze`` (with ``analyze invariance``) to the ``speechcl`` parser."""
    analyze = subparsers.add_parser("analyze", help="analyses of a representation (invariance per layer)",
                                    description="Analyses of a model's representation.")
    sub = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    p = sub.add_parser(
        "invariance", help="similarity of h(x) and h(t(x)) per layer and transformation",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_catalogue(),
        description="For each hidden state of the model and each transformation t at a fixed strength, compare "
                    "h(x) with h(t(x)) over the input files: frame-aligned cosine (frames of t(x) aligned with x "
                    "through the transformation's time map, so speed and time shifts are compared at the same "
                    "moment of the audio; linear interpolation between frames by default) averaged over files, "
                    "and linear CKA over the aligned frames pooled over files. 'identity' gives exactly 1. With "
                    "--probe TASK ..., also how much each probe's score drops under t: heads trained on the clean "
                    "--train split (as `speechcl probe` trains them) are scored on the --test split and on t(test), "
                    "frame labels carried through the time map; identity drops exactly 0. Writes "
                    "OUTPUT/results.json, results.md and invariance_heatmap.png (layers x transformations).")
    p.add_argument("--model", required=True, help="speechcl checkpoint dir, transformers dir or fairseq .pt")
    p.add_argument("--input", default=None,
                   help="audio file, directory, .tsv manifest or wav.scp (required without --probe; with --probe "
                        "the default is the probes' test utterances)")
    p.add_argument("--output", required=True, metavar="OUT", help="output directory")
    p.add_argument("--transforms", nargs="+", default=None, metavar="T",
                   help="transformations: 'default' (the set below, the default), labels from it, or NAME:K=V,...")
    p.add_argument("--max-files", type=int, default=None, metavar="N",
                   help="analyse at most N inputs (a random subset drawn with --seed, kept in listing order)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the transformations' noise, of --max-files and of the probe heads")
    p.add_argument("--alignment", choices=ALIGNMENTS, default="linear",
                   help="read h(x) at a fractional frame position by linear interpolation (default) or take the "
                        "nearest frame")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="zero-mean unit-variance per utterance before the model (default: what the checkpoint "
                        "records, else off)")
    p.add_argument("--chunk-seconds", type=float, default=60.0,
                   help="encode longer audio in overlapping chunks of this length (default 60; 0 = never)")
    p.add_argument("--overlap-seconds", type=float, default=4.0, help="overlap between chunks (default 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: all available)")
    p.add_argument("--ext", default=",".join(AUDIO_EXTENSIONS),
                   help=f"extensions searched in directories (default {','.join(AUDIO_EXTENSIONS)})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    probes = p.add_argument_group(
        "probe drops", "options of --probe; they mean what they mean for `speechcl probe` (features cached in "
                       "OUTPUT/cache, shared with it)")
    probes.add_argument("--probe", nargs="+", choices=TASKS, default=None, metavar="TASK",
                        help=f"probes to score under each transformation ({', '.join(TASKS)})")
    add_split_arguments(probes, required=False)
    add_head_arguments(probes)
    probes.add_argument("--num-workers", type=int, default=None, help="audio-decoding processes of the extraction")
    p.set_defaults(func=run_invariance_command)


def run_invariance_command(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device, "--device")
        if args.max_files is not None and args.max_files < 1:
            raise ValueError(f"--max-files must be >= 1, got {args.max_files}")
        if args.chunk_seconds < 0 or args.overlap_seconds < 0:
            raise ValueError("--chunk-seconds and --overlap-seconds must be >= 0")
        if args.input is None and not args.probe:
            raise ValueError("give --input PATH, or --probe TASK with --manifest-dir, --train and --test")
        tasks = list(dict.fromkeys(args.probe or []))
        if tasks:
            missing = [f"--{name.replace('_', '-')}" for name in ("manifest_dir", "train", "test")
                       if getattr(args, name) is None]
            if missing:
                raise ValueError(f"--probe needs {', '.join(missing)}")
        if device.type == "cpu":
            torch.set_num_threads(args.threads or default_threads())
        result = run_invariance(InvarianceConfig(
            model=args.model, input=args.input, output=args.output, transforms=args.transforms,
            probes=[probe_config(args, task, device) for task in tasks],
            max_files=args.max_files, device=device, seed=args.seed, alignment=args.alignment,
            normalize=args.normalize, chunk_seconds=args.chunk_seconds or None,
            overlap_seconds=args.overlap_seconds, extensions=[e for e in args.ext.split(",") if e],
            progress=not args.no_progress))
    except (FileNotFoundError, ValueError) as err:
        print(f"speechcl analyze invariance: error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"speechcl analyze invariance: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    for skip in result.skipped[:10]:
        print(f"speechcl analyze invariance: skipped {skip['file']} ({skip['transform']}): {skip['reason']}",
              file=sys.stderr)
    last = result.layers[-1]
    summary = ", ".join(f"{label} {value:.3f}" for label, value in result.cosine[-1].items() if value is not None)
    analysed = max(result.files.values(), default=0)  # the listed inputs less those skipped for every transform
    print(f"{analysed} of {result.inputs['count']} files, {len(result.transforms)} transformations, hidden states 0..{last}; "
          f"cosine at layer {last}: {summary} -> {args.output}")
    for probe in result.probes:
        drops = ", ".join(f"{label} {value:+.3f}" for label, value in probe["drop"][-1].items() if value is not None)
        print(f"{probe['task']} probe, weighted sum: clean {probe['metric']} {probe['clean'][-1]:.3f}; drop under t: "
              f"{drops}")
    return 0
