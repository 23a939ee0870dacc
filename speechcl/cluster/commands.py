"""``speechcl cluster``: k-means frame labels beside the manifests, for ``objective=hubert``.

Usage::

    speechcl cluster DIR --splits train valid [--fit-split train] --num-clusters 100 [--ext km]
                         [--features mfcc | --model CKPT --layer L] [--sample-fraction 1.0] [--max-frames 250000]
                         [--seed 0] [--device auto] [--threads N] [--frames-for base] [--chunk-size 256]
                         [--batch-size 10000] [--max-iter 100] [--n-init 20] [--overwrite] [--keep-cache]
                         [--no-progress]
"""

from __future__ import annotations

import argparse
import sys

from speechcl.utils.signals import EXIT_PREEMPTED, Preempted


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cluster`` to the ``speechcl`` parser."""
    p = subparsers.add_parser(
        "cluster", help="k-means frame labels (MFCC or a model layer) beside the manifests, for objective=hubert",
        description="Fit k-means (scikit-learn MiniBatchKMeans) on the frames of a sample of the first split (or "
                    "--fit-split) and write DIR/<split>.<ext> for every split: one line per manifest line, one "
                    "label per encoder frame (16000 samples -> 49 labels), plus DIR/<ext>.json (what made them) and "
                    "DIR/<ext>.centers.npy (the k-means centres). Iteration 1 clusters MFCC+delta+delta-delta "
                    "(39 dims, 25 ms windows every 320 samples: encoder frame t's receptive field); iteration 2 a "
                    "hidden layer of a trained model (--model, --layer). Resumable: a rerun skips the fit and the "
                    "splits already done and continues cached chunks (DIR/.<ext>.cluster/, removed at the end). "
                    "Then: speechcl pretrain objective=hubert data.manifest_dir=DIR data.frame_labels=<ext>.")
    p.add_argument("manifest_dir", metavar="DIR", help="folder of <split>.tsv manifests (speechcl prepare's OUT)")
    p.add_argument("--splits", nargs="+", required=True, metavar="SPLIT", help="splits to label (the first is fitted on)")
    p.add_argument("--fit-split", default=None, metavar="SPLIT", help="split whose frames k-means is fitted on "
                                                                       "(default: the first of --splits)")
    p.add_argument("--num-clusters", type=int, required=True, metavar="K",
                   help="clusters (HuBERT: 100 on MFCC, 500 on the iteration-1 model)")
    p.add_argument("--ext", default="km", help="label name: DIR/<split>.<ext>, DIR/<ext>.json (default km)")
    p.add_argument("--features", choices=("mfcc", "model"), default=None,
                   help="mfcc (default) or model (implied by --model)")
    p.add_argument("--model", default=None, help="checkpoint speechcl.load_model reads (iteration 2)")
    p.add_argument("--layer", type=int, default=None,
                   help="hidden state of --model (0 = input to the first transformer layer, i = output of layer i; "
                        "HuBERT BASE iteration 2: 6 of 12)")
    p.add_argument("--sample-fraction", type=float, default=1.0,
                   help="share of the fit split's utterances to sample (default 1.0; fairseq's recipe: 0.1 of 960 h)")
    p.add_argument("--max-frames", type=int, default=250_000,
                   help="at most this many frames for the fit, drawn at random (default 250000 = 83 min; 0: no cap)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of k-means (default 0)")
    p.add_argument("--frames-for", default=None, metavar="PRESET",
                   help="model preset whose conv stack gives the frame formula (default: --model's own, else base; "
                        "every shipped preset has the 320-sample stride and 400-sample field)")
    p.add_argument("--device", default="auto", help="device of --model: auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch, k-means; default: all)")
    p.add_argument("--chunk-size", type=int, default=256, help="utterances per cached chunk (default 256)")
    p.add_argument("--max-tokens", type=int, default=960_000, help="samples per --model batch (default 960000)")
    p.add_argument("--batch-size", type=int, default=10_000, help="MiniBatchKMeans batch (default 10000, fairseq)")
    p.add_argument("--max-iter", type=int, default=100, help="MiniBatchKMeans max_iter (default 100, fairseq)")
    p.add_argument("--n-init", type=int, default=20, help="k-means++ initialisations (default 20, fairseq)")
    p.add_argument("--overwrite", action="store_true", help="replace labels of this --ext made with other settings")
    p.add_argument("--keep-cache", action="store_true", help="keep DIR/.<ext>.cluster/ (features, label chunks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cluster)


def _source(args: argparse.Namespace):  # -> FrameFeatures
    from speechcl.cluster.features import MfccFeatures, ModelFeatures
    from speechcl.models.config import preset
    from speechcl.utils.device import resolve_device

    features = args.features or ("model" if args.model else "mfcc")
    conv = preset(args.frames_for).conv_layers if args.frames_for else None
    if features == "mfcc":
        if args.model or args.layer is not None:
            raise ValueError("--features mfcc takes no --model / --layer (drop them, or use --features model)")
        return MfccFeatures(conv if conv is not None else preset("base").conv_layers)
    if not args.model or args.layer is None:
        raise ValueError("--features model needs --model CKPT and --layer L (e.g. --layer 6)")
    return ModelFeatures(args.model, args.layer, conv, device=resolve_device(args.device, "--device"),
                         max_tokens=args.max_tokens)


def run_cluster(args: argparse.Namespace) -> int:
    import torch

    from speechcl.cluster.kmeans import KMeansConfig
    from speechcl.cluster.run import cluster_manifests
    from speechcl.utils.device import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        if args.num_clusters < 2:
            raise ValueError(f"--num-clusters must be at least 2, got {args.num_clusters}")
        source = _source(args)
        kmeans = KMeansConfig(num_clusters=args.num_clusters, seed=args.seed, batch_size=args.batch_size,
                              max_iter=args.max_iter, n_init=args.n_init)
        with threadpool_limits(threads):
            summary = cluster_manifests(args.manifest_dir, args.splits, source, kmeans, args.ext,
                                        fit_split=args.fit_split, sample_fraction=args.sample_fraction,
                                        max_frames=args.max_frames or None, chunk_size=args.chunk_size,
                                        overwrite=args.overwrite, keep_cache=args.keep_cache,
                                        progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"speechcl cluster: error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"speechcl cluster: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    fit = (f"fitted {args.num_clusters} clusters on {summary.fit_frames} frames (inertia {summary.inertia:.4g})"
           if summary.fitted else "reused the fitted centres")
    done = f"; labelled {', '.join(summary.labelled)}" if summary.labelled else ""
    skipped = f"; already done: {', '.join(summary.skipped)}" if summary.skipped else ""
    print(f"{fit}{done}{skipped} in {summary.seconds:.1f} s -> {args.manifest_dir}/<split>.{args.ext}, "
          f"{args.ext}.json")
    return 0
