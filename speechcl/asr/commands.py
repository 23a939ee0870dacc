"""The ``evaluate``, ``transcribe``, ``align`` and ``lm`` verbs (argument parsing; the work is in the library).

Usage::

    speechcl evaluate --model CKPT --manifest DIR/dev-clean.tsv [DIR/test-clean.tsv ...]
                      [--labels FILE.wrd ...] [--dict DIR/dict.ltr.txt] [--output eval]
                      [--beam N] [--lm LM.arpa|LM.bin] [--lexicon FILE] [--lm-weight 2 ...] [--word-score 0 ...]
                      [--blank-penalty 0 ...] [--tune-on SPLIT] [--tune-metric wer|cer] [--batch-size 8]
                      [--max-tokens SAMPLES] [--device cpu|cuda]
    speechcl transcribe --model CKPT AUDIO [AUDIO ...] [--chunk-seconds 30] [--overlap-seconds 2]
                        [decoder options as for evaluate]
    speechcl align --model CKPT AUDIO TRANSCRIPT [--format tsv|json] [--output FILE]
    speechcl lm build --text DIR/train.wrd --out lm.arpa [--order 3] [--lexicon-out lexicon.txt]
                      [--dict DIR/dict.ltr.txt]

Given several ``--lm-weight`` / ``--word-score`` / ``--blank-penalty`` values, ``evaluate`` decodes the
``--tune-on`` split (default: the first manifest) with every combination, keeps the one with the lowest WER
there (``--tune-metric cer``: CER; ``tune.json`` in the output folder lists them all) and decodes every split
with it. Greedy decoding tunes the blank penalty alone; the LM weight and word score need beam search.

``TRANSCRIPT`` of ``align`` is a text file (UTF-8) or, when no such file exists, the transcript itself.

Bad audio files: ``evaluate`` skips a file it cannot use (missing, empty, undecodable, NaN or infinite
samples, or too short for one model frame: fewer samples than the receptive field, 400 at 16 kHz), lists
it in ``OUT/bad.SPLIT.tsv`` and scores the split on the other files; the printed line and
``summary.json`` say how many were skipped. ``transcribe`` names each such file on stderr and goes on with
the others; ``align`` names it.

Exit status: 0 on success; 1 when ``transcribe`` or ``align`` could not use an audio file (the others were
still transcribed); 2 for bad arguments, an unusable model or labels, or a split of which no file could be
decoded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``transcribe``, ``align`` and ``lm build`` to the ``speechcl`` parser."""
    ev = subparsers.add_parser(
        "evaluate", help="decode manifests with a CTC model and report WER/CER",
        description="Decode each manifest (greedy by default; beam search with --beam, an n-gram LM with "
                    "--lm), score it against its .wrd transcripts and write hyp/ref/result files per split "
                    "plus summary.json into --output. An interrupted run resumes. A file that cannot be used "
                    "(missing, empty, undecodable, NaN/Inf samples) or is too short for one model frame "
                    "(fewer samples than the receptive field, 400 at 16 kHz) is skipped and listed with the "
                    "reason in OUTPUT/bad.SPLIT.tsv; the split is scored on the other files and the printed "
                    "line and summary.json say how many were skipped. Exit status 0, or 2 for bad arguments "
                    "or a split of which no file could be decoded.")
    _add_model_options(ev)
    ev.add_argument("--manifest", nargs="+", required=True, metavar="TSV", help="manifests to decode (one per split)")
    ev.add_argument("--labels", nargs="+", default=None, metavar="WRD",
                    help="reference transcripts, one per manifest (default: the .wrd next to each manifest)")
    ev.add_argument("--output", default="eval", metavar="DIR", help="output directory (default ./eval)")
    ev.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default 8)")
    ev.add_argument("--max-tokens", type=int, default=None, metavar="SAMPLES",
                    help="at most this many padded samples per batch (default: no limit)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_decoder_options(ev, grid=True)
    ev.add_argument("--tune-on", default=None, metavar="SPLIT",
                    help="with several --lm-weight/--word-score/--blank-penalty values: the split (manifest file "
                         "stem) whose WER (or --tune-metric) chooses them (default: the first manifest)")
    ev.add_argument("--tune-metric", default="wer", choices=("wer", "cer"),
                    help="what the choice minimises on the --tune-on split (default wer; cer where nearly every "
                         "word is wrong and WER cannot tell settings apart)")
    ev.set_defaults(func=run_evaluate)

    rp = subparsers.add_parser(
        "report", help="results table (markdown) from fine-tuning experiments",
        description="One row per fine-tuning exp_dir: pretraining minutes (wall time of the run model.init "
                    "came from; 0 from scratch), labeled minutes, and WER/CER per split from "
                    "<exp_dir>/<decode-dir>/summary.json (written by `speechcl evaluate --output "
                    "<exp_dir>/decode`).")
    rp.add_argument("experiments", nargs="+", metavar="EXP_DIR", help="fine-tuning experiment folders")
    rp.add_argument("--names", nargs="+", default=None, help="system names (default: folder names)")
    rp.add_argument("--output", default=None, help="also write the table to this file (atomically)")
    rp.add_argument("--decode-dir", default="decode", metavar="NAME",
                    help="the decode folder inside each EXP_DIR (default decode; e.g. decode_lm for LM decoding)")
    rp.add_argument("--examples", type=int, default=0, metavar="N",
                    help="after the table, N utterances (evenly spaced, the same for every system) with the "
                         "reference and each system's hypothesis and CER (default 0)")
    rp.add_argument("--examples-split", default=None, metavar="SPLIT",
                    help="the split the examples come from (default: the last one in the first system's "
                         "summary.json, e.g. test-clean)")
    rp.set_defaults(func=run_report)

    _register_transcription(subparsers)
    _register_lm(subparsers)


def _register_transcription(subparsers: argparse._SubParsersAction) -> None:
    """Add ``transcribe`` and ``align``."""
    tr = subparsers.add_parser(
        "transcribe", help="print the transcript of audio files",
        description="Transcribe audio files of any sample rate and channel count (mixed down, resampled to "
                    "16 kHz); long files are decoded in overlapping windows. Prints 'PATH<TAB>TEXT' per file. "
                    "A file that cannot be used (unreadable, NaN/Inf samples, shorter than one model frame of "
                    "400 samples at 16 kHz) is named on stderr with the reason and the other files are still "
                    "transcribed. Exit status: 0 when every file was transcribed, 1 when some file failed, 2 "
                    "for bad arguments or an unusable model.")
    _add_model_options(tr)
    tr.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files")
    tr.add_argument("--chunk-seconds", type=float, default=30.0, help="window length for long files (default 30)")
    tr.add_argument("--overlap-seconds", type=float, default=2.0, help="overlap between windows (default 2)")
    _add_decoder_options(tr)
    tr.set_defaults(func=run_transcribe)

    al = subparsers.add_parser(
        "align", help="word start/end times of a known transcript",
        description="Force-align a transcript to an audio file with a CTC model; prints (or writes) "
                    "'word<TAB>start<TAB>end<TAB>score' with times in seconds. Exit status: 0 on success, 1 "
                    "when the audio file cannot be used (unreadable, NaN/Inf samples, shorter than one model "
                    "frame), 2 for bad arguments (an unreadable or non-UTF-8 transcript file, a transcript that "
                    "does not fit the audio, an unusable model).")
    _add_model_options(al)
    al.add_argument("audio", metavar="AUDIO", help="audio file")
    al.add_argument("transcript", metavar="TRANSCRIPT",
                    help="a UTF-8 text file with the transcript, or the text itself")
    al.add_argument("--format", choices=("tsv", "json"), default="tsv", help="output format (default tsv)")
    al.add_argument("--output", default=None, metavar="FILE", help="write here (atomically) instead of stdout")
    al.add_argument("--chunk-seconds", type=float, default=30.0, help="window length for long files (default 30)")
    al.add_argument("--overlap-seconds", type=float, default=2.0, help="overlap between windows (default 2)")
    al.set_defaults(func=run_align)


def _register_lm(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lm build``."""
    lm = subparsers.add_parser("lm", help="word n-gram language models for beam search")
    lm_verbs = lm.add_subparsers(dest="lm_verb", metavar="ACTION", required=True)
    build = lm_verbs.add_parser(
        "build", help="estimate an ARPA n-gram LM (interpolated modified Kneser-Ney) from transcripts",
        description="Estimate an interpolated modified Kneser-Ney word n-gram model from transcripts (one sentence "
                    "per line, e.g. train.wrd) and write it as ARPA (loadable by KenLM / flashlight); "
                    "optionally write the lexicon of its words for beam search.")
    build.add_argument("--text", required=True, metavar="WRD", help="training transcripts")
    build.add_argument("--out", required=True, metavar="ARPA", help="output ARPA file")
    build.add_argument("--order", type=int, default=3, help="n-gram order, 1-6 (default 3)")
    build.add_argument("--lexicon-out", default=None, metavar="FILE", help="also write a lexicon of the LM's words")
    build.add_argument("--dict", default=None, metavar="DICT",
                       help="dict.ltr.txt: leave out lexicon words spelled with letters outside it")
    build.set_defaults(func=run_lm_build)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="CKPT",
                        help="fine-tuned CTC model: speechcl checkpoint or transformers directory, or fairseq .pt")
    parser.add_argument("--dict", default=None, metavar="DICT",
                        help="dict.ltr.txt when the checkpoint carries no labels (evaluate: default is the "
                             "one next to the first manifest)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="normalise each utterance to zero mean/unit variance (default: as the checkpoint says)")


def _finite(text: str) -> float:
    """A finite float for argparse (a blank penalty of nan or inf would decode to nothing or to noise)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


BLANK_PENALTY_HELP = ("subtracted from the CTC blank's log-probability at every frame before decoding (default 0): "
                      "a positive value makes the decoder emit letters where blank only narrowly wins, a negative "
                      "one fewer")


def _add_decoder_options(parser: argparse.ArgumentParser, grid: bool = False) -> None:
    """Decoder flags; with ``grid`` the LM weight and word score take several values (a tuning grid)."""
    group = parser.add_argument_group("decoding (greedy unless --beam, --lm or --lexicon is given)")
    group.add_argument("--beam", type=int, default=0, metavar="N", help="beam size (default 0 = greedy; 50 with --lm)")
    group.add_argument("--lm", default=None, metavar="LM", help="KenLM word n-gram model (ARPA or binary)")
    group.add_argument("--lexicon", default=None, metavar="FILE",
                       help="'WORD L E T T E R S |' per line (default with an ARPA --lm: its words)")
    if grid:
        group.add_argument("--lm-weight", type=float, nargs="+", default=[2.0], metavar="W",
                           help="LM weight (default 2); several values are tried on the --tune-on split")
        group.add_argument("--word-score", type=float, nargs="+", default=[0.0], metavar="S",
                           help="word insertion score (default 0); several values are tried on the --tune-on split")
        group.add_argument("--blank-penalty", type=_finite, nargs="+", default=[0.0], metavar="P",
                           help=BLANK_PENALTY_HELP + "; several values are tried on the --tune-on split")
    else:
        group.add_argument("--lm-weight", type=float, default=2.0, help="LM weight (default 2)")
        group.add_argument("--word-score", type=float, default=0.0, help="word insertion score (default 0)")
        group.add_argument("--blank-penalty", type=_finite, default=0.0, metavar="P", help=BLANK_PENALTY_HELP)


def _recognizer(args: argparse.Namespace, fallback_dict: str | None = None):
    from speechcl.asr.recognizer import load_recognizer

    return load_recognizer(args.model, args.dict, fallback_dict, args.normalize, args.device)


def _decoder(args: argparse.Namespace, dictionary, lm_weight: float | None = None, word_score: float | None = None,
             blank_penalty: float | None = None):
    from speechcl.asr.decode import build_decoder

    return build_decoder(dictionary, args.beam, lm=args.lm, lexicon=args.lexicon,
                         lm_weight=args.lm_weight if lm_weight is None else lm_weight,
                         word_score=args.word_score if word_score is None else word_score,
                         blank_penalty=args.blank_penalty if blank_penalty is None else blank_penalty)


def _beam_search(args: argparse.Namespace) -> bool:
    """Whether the decoder options ask for beam search (as :func:`~speechcl.asr.decode.build_decoder` decides)."""
    from speechcl.asr.tuning import decoder_settings

    return decoder_settings(args.beam, args.lm, args.lexicon)["decoder"] == "beam"


def _tune(args: argparse.Namespace, recognizer, manifest, references, split: str):
    """Choose the LM weight, word score and blank penalty on ``split`` (or read the choice back from
    ``tune.json``) and print the grid; returns the outcome, its logits ``None`` when read back."""
    from speechcl.asr.tuning import tune_split

    outcome = tune_split(recognizer, manifest, references, split, args.output, model_path=args.model,
                         lm_weights=args.lm_weight, word_scores=args.word_score, blank_penalties=args.blank_penalty,
                         metric=args.tune_metric, beam=args.beam, lm=args.lm, lexicon=args.lexicon,
                         batch_size=args.batch_size, max_tokens=args.max_tokens, progress=not args.quiet)
    beam = _beam_search(args)

    def named(lm_weight: float, word_score: float, blank_penalty: float, sep: str) -> str:
        weights = [f"lm_weight {lm_weight:g}", f"word_score {word_score:g}"] if beam else []  # greedy has neither
        return sep.join([*weights, f"blank_penalty {blank_penalty:g}"])

    for point in outcome.points:
        print(f"tune {split}\t{named(point.lm_weight, point.word_score, point.blank_penalty, chr(9))}\t"
              f"WER {100 * point.score.wer:.2f}\tCER {100 * point.score.cer:.2f}")
    if outcome.best is not None:
        chosen = getattr(outcome.best.score, args.tune_metric)
        print(f"tune {split}\tchose {named(outcome.lm_weight, outcome.word_score, outcome.blank_penalty, ', ')} "
              f"({args.tune_metric.upper()} {100 * chosen:.2f}, best of {len(outcome.points)})")
    return outcome


def _fail(err: Exception) -> int:
    print(f"speechcl: error: {err}", file=sys.stderr)
    return 2


def _print_split(result, out: Path, shown: int = 10) -> None:
    """The split's line of the results table; skipped files are counted there and named on stderr."""
    counts = f"{result.score.utterances} utterances, {result.score.words.reference_length} words"
    if result.skipped:
        counts += (f"; {len(result.skipped)} files skipped, scored on {result.score.utterances} of "
                   f"{result.files}: see {out / f'bad.{result.split}.tsv'}")
        for path, reason in result.skipped[:shown]:
            print(f"speechcl evaluate: skipped {path}: {reason}", file=sys.stderr)
        if len(result.skipped) > shown:
            print(f"speechcl evaluate: ... and {len(result.skipped) - shown} more", file=sys.stderr)
    print(f"{result.split}\tWER {100 * result.score.wer:.2f}\tCER {100 * result.score.cer:.2f}\t({counts})")


def run_evaluate(args: argparse.Namespace) -> int:
    from speechcl.asr.evaluate import default_references, evaluate_split, read_references, update_summary
    from speechcl.asr.tuning import decoder_settings
    from speechcl.data.manifest import read_manifest

    manifests = [Path(m) for m in args.manifest]
    if args.labels is not None and len(args.labels) != len(manifests):
        return _fail(ValueError(f"{len(args.labels)} --labels files for {len(manifests)} manifests; give one per manifest"))
    labels = [Path(p) for p in args.labels] if args.labels else [default_references(m) for m in manifests]
    splits = [m.stem for m in manifests]
    if len(set(splits)) != len(splits):
        return _fail(ValueError(f"manifest names {splits} repeat; output files are named after them"))
    lm_grid = len(args.lm_weight) * len(args.word_score) > 1
    grid = lm_grid or len(args.blank_penalty) > 1
    if lm_grid and not _beam_search(args):
        return _fail(ValueError("several --lm-weight/--word-score values tune beam search: add --lm (or --beam)"))
    tune_on = args.tune_on if args.tune_on is not None else splits[0]
    if args.tune_on is not None and not grid:
        return _fail(ValueError("--tune-on needs several --lm-weight, --word-score or --blank-penalty values to "
                                "choose from"))
    if grid and tune_on not in splits:
        return _fail(ValueError(f"--tune-on {tune_on!r} is none of the manifests' splits {splits}"))
    try:
        recognizer = _recognizer(args, str(manifests[0].parent / "dict.ltr.txt"))
        data = {split: (read_manifest(m), read_references(lab)) for m, lab, split in zip(manifests, labels, splits)}
        lm_weight, word_score, blank_penalty = args.lm_weight[0], args.word_score[0], args.blank_penalty[0]
        cached: dict[str, Any] = {}
        if grid:
            outcome = _tune(args, recognizer, *data[tune_on], tune_on)
            lm_weight, word_score, blank_penalty = outcome.lm_weight, outcome.word_score, outcome.blank_penalty
            cached[tune_on] = outcome.logits
        decoder = _decoder(args, recognizer.dictionary, lm_weight, word_score, blank_penalty)
        settings = {"model": str(Path(args.model).resolve()),
                    **decoder_settings(args.beam, args.lm, args.lexicon, lm_weight, word_score, blank_penalty),
                    "normalize": recognizer.normalize}
        if grid:
            settings["tuned_on"] = tune_on
            if args.tune_metric != "wer":
                settings["tuned_by"] = args.tune_metric
        results = []
        for split, (manifest, references) in data.items():
            result = evaluate_split(recognizer, decoder, manifest, references, args.output, split, settings,
                                    args.batch_size, args.max_tokens, progress=not args.quiet,
                                    logits=cached.get(split))
            results.append(result)
            _print_split(result, Path(args.output))
    except (OSError, ValueError, RuntimeError) as err:
        return _fail(err)
    update_summary(args.output, results)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from speechcl.asr.report import (
        collect_row,
        examples_markdown,
        markdown_table,
        pick_examples,
        read_decoded,
    )
    from speechcl.utils.io import atomic_write_text

    names = args.names or [None] * len(args.experiments)
    if len(names) != len(args.experiments):
        return _fail(ValueError(f"{len(names)} --names for {len(args.experiments)} experiments"))
    if args.examples < 0:
        return _fail(ValueError(f"--examples must be 0 or more utterances, got {args.examples}"))
    try:
        rows = [collect_row(exp, Path(exp) / args.decode_dir, name) for exp, name in zip(args.experiments, names)]
        text = markdown_table(rows)
        if args.examples:
            split = args.examples_split or next(reversed(rows[0].scores), None)
            if split is None:
                raise ValueError(f"{Path(args.experiments[0]) / args.decode_dir / 'summary.json'} lists no split")
            decoded = [read_decoded(exp, Path(exp) / args.decode_dir, split, row.system)
                       for exp, row in zip(args.experiments, rows)]
            text += "\n" + examples_markdown(pick_examples(decoded, args.examples), split, len(decoded[0].ids))
    except (OSError, ValueError, KeyError) as err:
        return _fail(err)
    print(text, end="")
    if args.output:
        try:
            atomic_write_text(args.output, text)
        except OSError as err:
            return _fail(err)
    return 0


def run_transcribe(args: argparse.Namespace) -> int:
    from speechcl.asr.transcribe import transcribe_files
    from speechcl.audio.io import error_reason

    try:
        recognizer = _recognizer(args)
        decoder = _decoder(args, recognizer.dictionary)
    except (OSError, ValueError, RuntimeError) as err:
        return _fail(err)
    status = 0
    for path in args.audio:  # one at a time so that output appears as files finish; a bad file is skipped
        try:
            (item,) = transcribe_files(recognizer, decoder, [path], args.chunk_seconds, args.overlap_seconds)
        except (OSError, ValueError) as err:
            print(f"speechcl transcribe: skipped {path}: {error_reason(err)}", file=sys.stderr)
            status = 1
            continue
        print(f"{item.path}\t{item.text}", flush=True)
    return status


def _read_transcript(argument: str) -> str:
    """The text of a transcript file, or ``argument`` itself when no such file exists."""
    if not os.path.isfile(argument):  # also False for text too long to be a file name
        return argument
    try:
        return Path(argument).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"transcript file {argument} is not valid UTF-8 (byte {err.object[err.start]:#04x} at "
                         f"offset {err.start}); save it as UTF-8") from None


def run_align(args: argparse.Namespace) -> int:
    from speechcl.asr.align import align_words
    from speechcl.asr.transcribe import chunked_logits
    from speechcl.audio.io import AudioError, error_reason
    from speechcl.utils.io import atomic_open

    try:
        transcript = _read_transcript(args.transcript)
        recognizer = _recognizer(args)
    except (OSError, ValueError, RuntimeError) as err:
        return _fail(err)
    try:
        wave = recognizer.load(args.audio)
    except AudioError as err:
        print(f"speechcl align: cannot use {args.audio}: {error_reason(err)}", file=sys.stderr)
        return 1
    try:
        logits = chunked_logits(recognizer, wave, args.chunk_seconds, args.overlap_seconds)
        timings = align_words(torch.log_softmax(logits, dim=-1), transcript, recognizer.dictionary,
                              recognizer.frame_seconds)
    except (OSError, ValueError, RuntimeError) as err:
        return _fail(err)
    if args.format == "json":
        text = json.dumps([t.__dict__ for t in timings], indent=2) + "\n"
    else:
        text = "".join(f"{t.word}\t{t.start:.3f}\t{t.end:.3f}\t{t.score:.4f}\n" for t in timings)
    if args.output:
        with atomic_open(args.output) as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


def run_lm_build(args: argparse.Namespace) -> int:
    from speechcl.asr.lm import build_lm
    from speechcl.data.labels import Dictionary

    try:
        symbols = Dictionary.load(args.dict).symbols if args.dict else None
        lm, lexicon_words = build_lm(args.text, args.out, args.order, args.lexicon_out, symbols)
    except (OSError, ValueError) as err:
        return _fail(err)
    counts = ", ".join(f"{n + 1}-grams {len(t)}" for n, t in enumerate(lm.logprobs))
    print(f"wrote {args.out}: order {lm.order}, {counts}")
    if args.lexicon_out:
        print(f"wrote {args.lexicon_out}: {lexicon_words} words")
    return 0
