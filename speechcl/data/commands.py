"""The ``synth`` and ``prepare`` verbs (argument parsing only; the work is in the library modules).

Usage::

    speechcl synth OUT [--minutes 60] [--speakers 40] [--dev-minutes 5] [--test-minutes 5]
                       [--heldout-speakers 8] [--seed 0] [--train-split train-clean-100] [--workers N]
                       [--lm-sentences N] [--conditions [--condition-minutes M]]
    speechcl synth OUT --keywords [--per-word 50] [--heldout-per-word N] [--speakers 40]
                       [--heldout-speakers 8] [--seed 0] [--workers N]
    speechcl prepare librispeech ROOT OUT [--splits S ...] [--subset SPLIT:DURATION ...] [--seed 0]
                                          [--verify] [--min-samples 400] [--workers N]
    speechcl prepare keywords ROOT OUT [--splits S ...] [--verify] [--min-samples 400] [--workers N]
    speechcl prepare audio DIR OUT [--valid-percent 0.01] [--ext flac,wav,...] [--seed 42] [--verify]
                                   [--min-samples 400] [--workers N]
    speechcl prepare shards MANIFEST_DIR SPLIT OUT [--shard-size N | --shard-mb 100] [--jobs J] [--verify]
                                                   [--seed 0] [--no-shuffle]
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
import time
from collections.abc import Callable

from speechcl.audio.io import AUDIO_EXTENSIONS
from speechcl.data.keywords import KeywordConfig, synthesize_keywords
from speechcl.data.prepare import (
    MIN_SAMPLES,
    REPORT_NAME,
    PrepareResult,
    combine_splits,
    prepare_audio,
    prepare_keywords,
    prepare_librispeech,
)
from speechcl.data.shards import DEFAULT_SHARD_MB, write_shards
from speechcl.data.subsets import parse_subset_spec
from speechcl.data.synth import CONDITIONS, DEFAULT_TRAIN_SPLIT, SynthConfig, synthesize_corpus, write_lm_text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` and ``prepare {librispeech,keywords,audio,combine,shards}`` to the ``speechcl`` parser."""
    synth = subparsers.add_parser(
        "synth", help="synthesize a LibriSpeech-layout corpus with espeak-ng",
        description="Write a synthetic corpus in LibriSpeech's layout: a training split and held-out-speaker "
                    "dev-clean/test-clean splits, spoken by espeak-ng voices, with each chapter's word and phone "
                    "alignments (<spk>-<chap>.align.tsv, from espeak-ng's synthesis events). --conditions adds "
                    "condition-shifted test splits; --keywords writes a keyword-spotting corpus instead. "
                    "Deterministic for a seed; an interrupted run resumes where it stopped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="condition splits (--conditions; described in OUT/conditions.json):\n"
               + "\n".join(textwrap.fill(c.description, 100, initial_indent=f"  {c.name:<20} ",
                                          subsequent_indent=" " * 23) for c in CONDITIONS)
               + "\n\nkeyword corpus (--keywords): OUT/{train,dev,test}/<label>/<speaker>_<n>.flac, 1 s clips; "
                 "labels yes no up down\n  left right on off stop go, _unknown_ (other words), _silence_ "
                 "(noise); training voices for train,\n  unseen voices for dev and test; prepare it with "
                 "'speechcl prepare keywords OUT DATA'.")
    synth.add_argument("out", metavar="OUT", help="output directory")
    synth.add_argument("--minutes", type=float, default=60.0, help="minutes of training audio (default 60)")
    synth.add_argument("--speakers", type=int, default=40, help="training speakers (default 40)")
    synth.add_argument("--dev-minutes", type=float, default=5.0, help="minutes in dev-clean (default 5; 0 skips)")
    synth.add_argument("--test-minutes", type=float, default=5.0, help="minutes in test-clean (default 5; 0 skips)")
    synth.add_argument("--heldout-speakers", type=int, default=8,
                       help="speakers in each of dev-clean and test-clean, unseen in training (default 8)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--train-split", default=DEFAULT_TRAIN_SPLIT,
                       help=f"name of the training split (default {DEFAULT_TRAIN_SPLIT})")
    synth.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")
    synth.add_argument("--lm-sentences", type=int, default=0, metavar="N",
                       help="also write N sentences of text-only LM training data to OUT/lm-text.txt, from a "
                            "seed no utterance uses (LibriSpeech's LM corpus; default 0: none)")
    synth.add_argument("--conditions", action="store_true",
                       help="also write condition-shifted test splits (voices seen/unseen, fast, slow, high pitch, "
                            "noisy: see below) and OUT/conditions.json")
    synth.add_argument("--condition-minutes", type=float, default=None, metavar="M",
                       help="minutes of each condition split (default: --test-minutes)")
    synth.add_argument("--keywords", action="store_true",
                       help="write a keyword-spotting corpus (Speech Commands / SUPERB KS layout) instead of "
                            "sentences; uses --speakers, --heldout-speakers, --seed, --workers")
    synth.add_argument("--per-word", type=int, default=50, metavar="N",
                       help="--keywords: training clips per label (default 50)")
    synth.add_argument("--heldout-per-word", type=int, default=None, metavar="N",
                       help="--keywords: clips per label in dev and in test (default: half of --per-word)")
    synth.set_defaults(func=run_synth)

    prepare = subparsers.add_parser("prepare", help="write manifests and labels for a corpus")
    kinds = prepare.add_subparsers(dest="corpus", metavar="CORPUS", required=True)

    libri = kinds.add_parser(
        "librispeech", help="LibriSpeech (or synthetic) tree -> <split>.tsv/.wrd/.ltr/.spk and dict.ltr.txt",
        description="Prepare a LibriSpeech-layout tree: <split>.tsv/.wrd/.ltr/.spk and dict.ltr.txt; where "
                    "every utterance of a split has an alignment (speechcl synth's .align.tsv) also "
                    "<split>.phn, <split>.phn_frames (a phone label per 20 ms model frame) and dict.phn.txt. "
                    f"Bad files are skipped and listed in OUT/{REPORT_NAME}; exits non-zero only when nothing "
                    "usable remains.")
    libri.add_argument("root", metavar="ROOT", help="directory holding the split directories")
    libri.add_argument("out", metavar="OUT", help="output directory")
    libri.add_argument("--splits", nargs="+", default=None, help="split names (default: every split under ROOT)")
    libri.add_argument("--subset", action="append", default=[], metavar="SPLIT:DURATION",
                       help="also write a seeded random labeled subset, e.g. train-clean-100:10m "
                            "(-> train-clean-100-10m.tsv); repeatable")
    libri.add_argument("--seed", type=int, default=0, help="seed of the random subsets (default 0)")
    _add_check_options(libri)
    libri.set_defaults(func=run_prepare_librispeech)

    keywords = kinds.add_parser(
        "keywords", help="keyword tree <split>/<label>/*.flac -> <split>.tsv/.kw and dict.kw.txt",
        description="Prepare a keyword-spotting corpus (speechcl synth --keywords): per split a manifest, "
                    "<split>.kw (the label folder of each clip) and dict.kw.txt (label counts over the training "
                    f"splits). Bad files are skipped and listed in OUT/{REPORT_NAME}.")
    keywords.add_argument("root", metavar="ROOT", help="directory holding the split directories")
    keywords.add_argument("out", metavar="OUT", help="output directory")
    keywords.add_argument("--splits", nargs="+", default=None, help="split names (default: every split under ROOT)")
    _add_check_options(keywords)
    keywords.set_defaults(func=run_prepare_keywords)

    audio = kinds.add_parser(
        "audio", help="any audio folder -> train.tsv/valid.tsv (unlabeled)",
        description="Prepare unlabeled audio found recursively under DIR. Bad files are skipped and listed in "
                    f"OUT/{REPORT_NAME}; exits non-zero only when nothing usable remains.")
    audio.add_argument("directory", metavar="DIR", help="folder searched recursively for audio")
    audio.add_argument("out", metavar="OUT", help="output directory")
    audio.add_argument("--valid-percent", type=float, default=0.01,
                       help="fraction of files held out for valid.tsv (default 0.01)")
    audio.add_argument("--ext", default=",".join(AUDIO_EXTENSIONS),
                       help=f"comma-separated extensions (default {','.join(AUDIO_EXTENSIONS)})")
    audio.add_argument("--seed", type=int, default=42, help="seed of the train/valid split (default 42)")
    _add_check_options(audio)
    audio.set_defaults(func=run_prepare_audio)

    combine = kinds.add_parser(
        "combine", help="concatenate prepared splits into one (e.g. LibriSpeech's train-960)",
        description="Write DATA/NAME.tsv and its .wrd/.ltr labels (those every part has) as the parts' "
                    "concatenation, in the order given; manifests under different roots are rebased onto "
                    "their common directory.")
    combine.add_argument("data", metavar="DATA", help="folder with the prepared <split>.tsv files")
    combine.add_argument("name", metavar="NAME", help="name of the combined split (DATA/NAME.tsv)")
    combine.add_argument("parts", nargs="+", metavar="SPLIT", help="splits to concatenate")
    combine.set_defaults(func=run_prepare_combine)

    shards = kinds.add_parser(
        "shards", help="a prepared split -> WebDataset tar shards + index, for data.format=shards",
        description="Write MANIFEST_DIR/SPLIT.tsv (with its .wrd/.ltr/.phn/.kw/.spk labels) as WebDataset tar "
                    "shards OUT/SPLIT-NNNNNN.tar of <key>.flac + <key>.json, the index OUT/SPLIT.index.json "
                    "(item lengths and byte offsets, so training buckets batches and seeks without opening audio), "
                    "the label files in index order and the dictionaries. Every shard is verified after writing; "
                    "a rerun keeps the shards that verify and writes the rest. Train from it with "
                    "data.format=shards data.shards_dir=OUT. Needs the webdataset package "
                    "(pip install 'speechcl[shards]').")
    shards.add_argument("manifest_dir", metavar="MANIFEST_DIR", help="output folder of speechcl prepare")
    shards.add_argument("split", metavar="SPLIT", help="the split to write (MANIFEST_DIR/SPLIT.tsv)")
    shards.add_argument("out", metavar="OUT", help="output folder (several splits may share it)")
    size = shards.add_mutually_exclusive_group()
    size.add_argument("--shard-size", type=int, default=None, metavar="N", help="items per shard")
    size.add_argument("--shard-mb", type=float, default=None, metavar="M",
                      help=f"megabytes of source audio per shard (default {DEFAULT_SHARD_MB:g}); a split needs at "
                           "least ranks x loader workers shards")
    shards.add_argument("--jobs", type=int, default=None, metavar="J",
                        help="shards written in parallel (default: all CPUs)")
    shards.add_argument("--verify", action="store_true",
                        help="also decode every FLAC member and compare its length with the manifest's (slower; by "
                             "default member names, sizes and metadata are checked)")
    shards.add_argument("--seed", type=int, default=0, help="seed of the item order (default 0)")
    shards.add_argument("--no-shuffle", action="store_true",
                        help="keep manifest order (default: a seeded random order, so shards mix speakers)")
    shards.set_defaults(func=run_prepare_shards)


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", action="store_true",
                        help="decode every file: also keeps out corrupt data behind a valid header and NaN or "
                             "infinite samples (slower; the default reads headers only)")
    parser.add_argument("--min-samples", type=int, default=MIN_SAMPLES, metavar="N",
                        help=f"skip files shorter than N samples at 16 kHz (default {MIN_SAMPLES}, the model's "
                             "receptive field)")
    parser.add_argument("--workers", type=int, default=None, help="processes for --verify (default: all CPUs)")


def _user_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report a ``ValueError`` or ``FileNotFoundError`` (bad input: the message says what to do) as
    ``error: ...``, exit code 2."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper


@_user_errors
def run_synth(args: argparse.Namespace) -> int:
    if args.keywords:
        return _run_keywords(args)
    config = SynthConfig(minutes=args.minutes, speakers=args.speakers, dev_minutes=args.dev_minutes,
                         test_minutes=args.test_minutes, heldout_speakers=args.heldout_speakers, seed=args.seed,
                         train_split=args.train_split, conditions=args.conditions,
                         condition_minutes=args.condition_minutes)
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"\rsynth: {done}/{total} chapters", end="\n" if done == total else "", file=sys.stderr, flush=True)

    interactive = sys.stderr.isatty()
    summary = synthesize_corpus(args.out, config, workers=args.workers, progress=progress if interactive else None)
    if args.lm_sentences:
        print(f"wrote {write_lm_text(args.out, args.lm_sentences, args.seed)} ({args.lm_sentences} sentences)")
    elapsed = time.perf_counter() - start
    total = sum(summary.seconds.values())
    for split, seconds in summary.seconds.items():
        print(f"{split}: {summary.utterances[split]} utterances, {seconds / 60:.1f} min")
    if not summary.synthesized_chapters:
        print(f"{args.out} was complete already ({summary.skipped_chapters} chapters): nothing synthesized")
    else:
        print(f"wrote {args.out} in {elapsed:.1f} s ({total / 60 / max(elapsed, 1e-9):.1f} min of audio per second"
              + (f"; {summary.skipped_chapters} chapters were already done" if summary.skipped_chapters else "") + ")")
    return 0


def _run_keywords(args: argparse.Namespace) -> int:
    if args.conditions or args.lm_sentences:
        raise ValueError("--keywords makes a keyword corpus; --conditions and --lm-sentences apply to sentence "
                         "corpora only")
    config = KeywordConfig(per_word=args.per_word, heldout_per_word=args.heldout_per_word, speakers=args.speakers,
                           heldout_speakers=args.heldout_speakers, seed=args.seed)
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"\rsynth: {done}/{total} speakers", end="\n" if done == total else "", file=sys.stderr, flush=True)

    summary = synthesize_keywords(args.out, config, workers=args.workers,
                                  progress=progress if sys.stderr.isatty() else None)
    for split, counts in summary.clips.items():
        print(f"{split}: {sum(counts.values())} clips, {len(counts)} labels x {max(counts.values())}")
    if not summary.synthesized_speakers:
        print(f"{args.out} was complete already ({summary.skipped_speakers} speakers): nothing synthesized")
    else:
        print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


@_user_errors
def run_prepare_librispeech(args: argparse.Namespace) -> int:
    subsets = [parse_subset_spec(s) for s in args.subset]
    result = prepare_librispeech(args.root, args.out, splits=args.splits, subsets=subsets, seed=args.seed,
                                 verify=args.verify, workers=args.workers, progress=sys.stderr.isatty(),
                                 min_samples=args.min_samples)
    return _summarise(result, args.out, args.verify)


@_user_errors
def run_prepare_keywords(args: argparse.Namespace) -> int:
    result = prepare_keywords(args.root, args.out, splits=args.splits, verify=args.verify, workers=args.workers,
                              progress=sys.stderr.isatty(), min_samples=args.min_samples)
    return _summarise(result, args.out, args.verify)


@_user_errors
def run_prepare_audio(args: argparse.Namespace) -> int:
    result = prepare_audio(args.directory, args.out, valid_percent=args.valid_percent, extensions=args.ext.split(","),
                           seed=args.seed, verify=args.verify, workers=args.workers, progress=sys.stderr.isatty(),
                           min_samples=args.min_samples)
    return _summarise(result, args.out, args.verify)


@_user_errors
def run_prepare_combine(args: argparse.Namespace) -> int:
    count, labels = combine_splits(args.data, args.name, args.parts)
    extra = f" with .{' and .'.join(labels)} labels" if labels else " (no labels)"
    print(f"{args.name}: {count} items from {', '.join(args.parts)}{extra}")
    return 0


def run_prepare_shards(args: argparse.Namespace) -> int:
    try:
        result = write_shards(args.manifest_dir, args.split, args.out, shard_size=args.shard_size,
                              shard_mb=args.shard_mb, jobs=args.jobs, verify=args.verify, shuffle=not args.no_shuffle,
                              seed=args.seed, progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kept = f", {result.kept} kept from an earlier run" if result.kept else ""
    removed = f", {len(result.removed)} stale shards removed" if result.removed else ""
    print(f"{result.split}: {result.num_items} items in {result.num_shards} shards ({result.total_bytes / 1e6:.1f} MB; "
          f"{result.written} written{kept}{removed}); index: {result.index}")
    if not args.verify:
        print("checked member names, sizes and metadata; --verify also decodes every FLAC member")
    return 0


def _summarise(result: PrepareResult, out: str, verified: bool) -> int:
    for name, count in result.items.items():
        print(f"{name}: {count} items")
    notes = [r for r in result.report if r.action != "skipped"]
    print(f"{len(result.skipped())} skipped, {len(notes)} converted/noted; report: {out}/{REPORT_NAME}")
    if not verified:
        print("checked file headers only; --verify decodes every file and also keeps out corrupt data and "
              "NaN/Inf samples")
    if result.usable == 0:
        print(f"error: nothing usable was found; see {out}/{REPORT_NAME}", file=sys.stderr)
        return 1
    return 0
