"""Results tables from fine-tuning experiments: one row per system with pretraining minutes (CPU/GPU
wall time of the pretraining run it started from), labeled minutes, and WER/CER per decoded split.

An experiment is a fine-tuning ``exp_dir``: its ``config.yaml`` names the labeled manifest and
``model.init`` (the pretraining checkpoint, ``<pretrain exp>/checkpoints/<tag>``), and its decode folder
holds ``summary.json`` from ``speechcl evaluate``.

Example utterances (:func:`read_decoded`, :func:`pick_examples`, :func:`examples_markdown`) come from the
decode folder's ``ref.SPLIT.txt`` / ``hyp.SPLIT.txt`` (one transcript per scored utterance, in manifest
order). Those files hold no utterance ids: the ids are the file names (without extension) of the items of
``<data.manifest_dir>/SPLIT.tsv`` of the experiment's config, less the files ``bad.SPLIT.tsv`` lists as
skipped; when that manifest is missing or does not line up with the transcripts, they are the line numbers
``#1``, ``#2``, ... of the transcript files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from speechcl.asr.score import score
from speechcl.data.manifest import read_manifest


@dataclass
class ResultRow:
    system: str
    pretrain_minutes: float  # 0 for a system trained from scratch
    labeled_minutes: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> {"wer", "cer"}


def _train_minutes(exp_dir: Path) -> float:
    result = exp_dir / "train_result.json"
    if not result.exists():
        return float("nan")
    return float(json.loads(result.read_text()).get("train_seconds", float("nan"))) / 60.0


def _config(exp_dir: Path) -> dict:
    from omegaconf import OmegaConf

    config = exp_dir / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(f"{config} not found: {exp_dir} is not a `speechcl finetune` experiment")
    return OmegaConf.to_container(OmegaConf.load(config), resolve=True)


def collect_row(exp_dir: str | Path, decode_dir: str | Path | None = None, system: str | None = None) -> ResultRow:
    """Read one fine-tuning experiment (see the module docstring)."""
    exp_dir = Path(exp_dir)
    cfg = _config(exp_dir)
    data, model = cfg["data"], cfg["model"]
    manifest = Path(data["manifest_dir"]) / f"{data['train_subset']}.tsv"
    labeled = read_manifest(manifest).total_samples() / 16000 / 60 if manifest.exists() else float("nan")
    pretrain = 0.0
    if model.get("init"):
        init = Path(model["init"])
        pretrain_exp = init.parent.parent if init.parent.name == "checkpoints" else init
        pretrain = _train_minutes(pretrain_exp)
    decode = Path(decode_dir) if decode_dir else exp_dir / "decode"
    summary_path = decode / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: run `speechcl evaluate --output {decode}` first")
    summary = json.loads(summary_path.read_text())
    scores = {split: {"wer": float(v["wer"]), "cer": float(v["cer"])} for split, v in summary.items()}
    return ResultRow(system or exp_dir.name, pretrain, labeled, scores)


def markdown_table(rows: list[ResultRow]) -> str:
    """Rows as a markdown table; WER/CER in percent, one column pair per split."""
    splits: list[str] = []
    for row in rows:
        splits += [s for s in row.scores if s not in splits]
    head = ["system", "pretraining min", "labeled min"] + [f"{s} {m}" for s in splits for m in ("WER", "CER")]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in rows:
        cells = [row.system, f"{row.pretrain_minutes:.1f}", f"{row.labeled_minutes:.1f}"]
        for s in splits:
            score = row.scores.get(s)
            cells += [f"{100 * score['wer']:.1f}", f"{100 * score['cer']:.1f}"] if score else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class DecodedSplit:
    """One system's decoding of one split: aligned lists, one entry per scored utterance in manifest order."""

    system: str
    split: str
    ids: list[str]
    references: list[str]
    hypotheses: list[str]


@dataclass
class Example:
    """One utterance as every system decoded it: ``(system, CER as a fraction, hypothesis)`` per system."""

    utterance: str
    reference: str
    hypotheses: list[tuple[str, float, str]]


def _lines(path: Path) -> list[str]:
    """The lines of a ``write_lines`` file (an empty transcript is an empty line)."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def _utterance_ids(manifest_path: Path, bad_path: Path, count: int) -> list[str] | None:
    """The ids of the ``count`` scored utterances of a split (see the module docstring), or ``None``."""
    if not manifest_path.is_file():
        return None
    manifest = read_manifest(manifest_path)
    skipped = {line.split("\t", 1)[0] for line in _lines(bad_path)} if bad_path.is_file() else set()
    kept = [i for i in range(len(manifest)) if manifest.full_path(i) not in skipped]
    if len(kept) != count or len(manifest) - len(kept) != len(skipped):
        return None  # another manifest of that name was decoded
    stems = [Path(manifest.paths[i]).stem for i in kept]
    return stems if len(set(stems)) == len(stems) else [manifest.paths[i] for i in kept]


def read_decoded(exp_dir: str | Path, decode_dir: str | Path | None, split: str, system: str | None = None
                 ) -> DecodedSplit:
    """The references and hypotheses of ``split`` in an experiment's decode folder, with utterance ids.

    Raises:
        FileNotFoundError: no config.yaml, summary.json or ``split``'s transcript files.
        ValueError: the split was not decoded, or its transcript files do not line up.
    """
    exp_dir = Path(exp_dir)
    system = system or exp_dir.name
    cfg = _config(exp_dir)
    decode = Path(decode_dir) if decode_dir else exp_dir / "decode"
    summary_path = decode / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: run `speechcl evaluate --output {decode}` first")
    decoded = list(json.loads(summary_path.read_text()))
    if split not in decoded:
        raise ValueError(f"system {system}: split {split!r} was not decoded in {decode} (it has "
                         f"{', '.join(decoded) or 'none'}); run `speechcl evaluate --manifest .../{split}.tsv "
                         f"--output {decode}` or choose another --examples-split")
    ref_path, hyp_path = decode / f"ref.{split}.txt", decode / f"hyp.{split}.txt"
    for path in (ref_path, hyp_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found although {summary_path} lists split {split!r}: rerun "
                                    f"`speechcl evaluate --output {decode}`")
    refs, hyps = _lines(ref_path), _lines(hyp_path)
    if len(refs) != len(hyps):
        raise ValueError(f"{ref_path} has {len(refs)} lines but {hyp_path} {len(hyps)}: rerun "
                         f"`speechcl evaluate --output {decode}`")
    manifest = Path(cfg["data"]["manifest_dir"]) / f"{split}.tsv"
    ids = _utterance_ids(manifest, decode / f"bad.{split}.tsv", len(refs)) or [f"#{i + 1}" for i in range(len(refs))]
    return DecodedSplit(system, split, ids, refs, hyps)


def example_positions(total: int, count: int) -> list[int]:
    """``min(count, total)`` distinct positions evenly spaced over ``range(total)`` (the centres of equal parts)."""
    if count < 0:
        raise ValueError(f"the number of examples must be >= 0, got {count}")
    count = min(count, total)
    return [(2 * i + 1) * total // (2 * count) for i in range(count)]


def pick_examples(systems: list[DecodedSplit], count: int) -> list[Example]:
    """``count`` utterances evenly spaced over the first system's decoding order, as every system decoded
    them, with each hypothesis' CER (:func:`speechcl.asr.score.score`, jiwer).

    Raises:
        ValueError: ``count < 0``, no systems, or systems that decoded different utterances (the message names
            the system and how many of the first system's utterances it lacks).
    """
    if not systems:
        raise ValueError("pick_examples needs at least one system")
    first = systems[0]
    by_system = [dict(zip(s.ids, zip(s.references, s.hypotheses))) for s in systems]
    for other, table in zip(systems[1:], by_system[1:]):
        missing = [u for u in first.ids if u not in table]
        extra = [u for u in table if u not in by_system[0]]
        changed = [u for u in first.ids if u in table and table[u][0] != by_system[0][u][0]]
        problems = [f"lacks {len(missing)} of the {len(first.ids)} utterances system {first.system} decoded "
                    f"(e.g. {missing[0]})" if missing else "",
                    f"has {len(extra)} utterances that {first.system} has not (e.g. {extra[0]})" if extra else "",
                    f"has another reference for {len(changed)} utterances (e.g. {changed[0]})" if changed else ""]
        if any(problems):
            raise ValueError(f"split {first.split}: system {other.system} " + "; ".join(p for p in problems if p)
                             + f". Decode the same manifest for every system (files evaluate skipped are left "
                             f"out: see bad.{first.split}.tsv)")
    examples = []
    for position in example_positions(len(first.ids), count):
        utterance = first.ids[position]
        reference = first.references[position]
        hyps = [(s.system, score([reference], [table[utterance][1]]).cer, table[utterance][1])
                for s, table in zip(systems, by_system)]
        examples.append(Example(utterance, reference, hyps))
    return examples


def examples_markdown(examples: list[Example], split: str, total: int) -> str:
    """A ``## Examples`` section: per utterance its id, ``REF: ...`` and ``<system> (CER x.x%): ...`` lines,
    in one code block. ``total`` is the number of utterances they were picked from."""
    lines = [f"## Examples: {split} ({len(examples)} of {total} utterances, evenly spaced)", "", "```"]
    for i, example in enumerate(examples):
        if i:
            lines.append("")
        lines += [example.utterance, f"REF: {example.reference}".rstrip()]
        lines += [f"{system} (CER {100 * cer:.1f}%): {hyp}".rstrip() for system, cer, hyp in example.hypotheses]
    lines += ["```", ""]
    return "\n".join(lines)
