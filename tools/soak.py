"""Soak test of long jobs: random SIGKILLs of every resumable verb, and a fuzzed folder through every verb.

Usage:
    .venv/bin/python tools/soak.py --out /tmp/soak [--kills 10] [--verbs pretrain,finetune,extract,evaluate]
                                   [--seed 0] [--long-minutes 10] [--no-fuzz]

A thin driver over the ``speechcl`` CLI (every job is a ``python -m speechcl ...`` subprocess):

1. **Corpus.** ``speechcl synth`` (a few minutes, 4 speakers) and ``speechcl prepare librispeech`` into
   ``OUT/corpus`` and ``OUT/data``, once (kept between runs of the script); then a tiny pretraining run
   (``OUT/base/pretrain``, the model of ``extract`` and the init of ``finetune``) and a 2-update
   fine-tuning run (``OUT/base/ctc``, the model of ``evaluate``/``transcribe``: its greedy hypotheses are
   not all empty yet).
2. **Kills.** For each verb: an uninterrupted reference run, then ``--kills`` times: the same command
   started in a fresh folder, SIGKILLed (its whole process group) at a seeded random moment, and run
   again until it completes; its outputs are then compared with the reference's. Even-numbered kills
   fall at a random time between half the reference's time to its first output and its end; odd ones
   at the first moment a temporary file of an atomic write (a checkpoint being written, a feature file,
   an HDF5 part) is seen after a random delay, to hit the writes. A run that ends before its kill is
   started again with a shorter delay. Compared: ``pretrain``/``finetune``: the weights of the ``last``
   and ``best`` checkpoints (max abs difference; ``0`` is bit for bit), the trainer state (updates,
   epoch, loader, scheduler, RNG, best score, bad items; optimizer tensors by max abs difference), and
   every logged train/valid figure per update (max relative difference); ``extract``: every feature
   array (``npy``; ``extract_hdf5`` also every dataset of ``features.h5``); ``evaluate``: hypotheses,
   references, and every number of ``result.*.json``/``summary.json`` except timings.
3. **Fuzzed folder** (:func:`speechcl.testing.fuzz.write_fuzzed_folder` with a ``--long-minutes``
   file) through ``prepare audio`` (headers only and ``--verify``), ``pretrain`` on the headers-only
   manifest, ``finetune`` on it with made-up letter labels, ``evaluate`` of a manifest of every file,
   ``transcribe`` of every file and ``extract`` (npy and hdf5) of the folder. Recorded per verb: exit
   status, which bad files it named (report files or stderr) against the ones it met, non-finite
   values written, temporary files left behind, tracebacks printed.

Writes ``OUT/soak.json`` (everything) and ``OUT/soak.md`` (summary tables); job logs stay under ``OUT``.
Exit status 0 when every kill resumed to equal outputs and every fuzzed job behaved, else 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VERBS = ("pretrain", "finetune", "extract", "extract_hdf5", "evaluate")
DEFAULT_VERBS = "pretrain,finetune,extract,extract_hdf5,evaluate"
TIMEOUT = 600  # seconds any one job may take
TRAIN, VALID, TEST = "train-clean-100", "dev-clean", "test-clean"
TEMP_MARKERS = (".tmp", ".partial", ".old-", ".tmp-")  # names of unfinished atomic writes


# --------------------------------------------------------------------------------------------------- jobs


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def speechcl(*args: Any) -> list[str]:
    return [sys.executable, "-m", "speechcl", *map(str, args)]


@dataclass
class Job:
    """A finished (or killed) job: exit status, wall time, and its output."""

    rc: int
    wall: float
    stdout: str
    stderr: str
    peak_rss_mb: float = 0.0
    first_output: float | None = None  # seconds until `progress` first returned True
    killed_at: float | None = None


def start(argv: list[str], log: Path) -> tuple[subprocess.Popen, Any, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log.with_suffix(".out"), "w")  # noqa: SIM115 - closed by finish()
    err = open(log.with_suffix(".err"), "w")  # noqa: SIM115
    proc = subprocess.Popen(argv, env=_env(), stdout=out, stderr=err, start_new_session=True)
    return proc, out, err


def finish(proc: subprocess.Popen, out: Any, err: Any, t0: float, **extra: Any) -> Job:
    """Reap ``proc`` (SIGKILLed after ``TIMEOUT`` s), with its peak resident memory."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > TIMEOUT:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.close()
    err.close()
    text = [Path(f.name).read_text(errors="replace") for f in (out, err)]
    return Job(proc.returncode, time.monotonic() - t0, text[0], text[1], peak_rss_mb=usage.ru_maxrss / 1024, **extra)


def alive(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` still runs (without reaping it: :func:`finish` reads its resource usage)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def run(argv: list[str], log: Path, progress: Callable[[], bool] | None = None) -> Job:
    """Run ``argv`` to the end (logs in ``log.out``/``log.err``); with ``progress``, also time its first output."""
    t0 = time.monotonic()
    proc, out, err = start(argv, log)
    first = None
    while progress is not None and first is None and alive(proc):
        if progress():
            first = time.monotonic() - t0
        time.sleep(0.01)
    return finish(proc, out, err, t0, first_output=first)


def run_and_kill(argv: list[str], log: Path, delay: float, when_writing: Callable[[], bool] | None) -> Job:
    """Start ``argv``; SIGKILL its process group ``delay`` s later (or, with ``when_writing``, at the first
    moment after ``delay`` that it returns True). ``killed_at`` stays None when the job ended first."""
    t0 = time.monotonic()
    proc, out, err = start(argv, log)
    killed_at = None
    while alive(proc):
        elapsed = time.monotonic() - t0
        if elapsed >= delay and (when_writing is None or when_writing()):
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = elapsed
            break
        time.sleep(0.001 if when_writing is not None and elapsed >= delay else 0.005)
    job = finish(proc, out, err, t0, killed_at=killed_at)
    return job


def temp_files(root: Path) -> list[str]:
    """Names under ``root`` left by unfinished atomic writes."""
    if not root.exists():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if any(marker in name for marker in TEMP_MARKERS):
                found.append(str(Path(dirpath, name).relative_to(root)))
    return sorted(found)


def traceback_in(*texts: str) -> bool:
    return any("Traceback (most recent call last)" in t for t in texts)


# ------------------------------------------------------------------------------------------- comparisons


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if np.isnan(diff).any():  # NaN in both at the same place counts as equal
        same_nan = np.isnan(a) & np.isnan(b)
        if (np.isnan(diff) & ~same_nan).any():
            return math.inf
        diff = np.where(same_nan, 0.0, diff)
    return float(diff.max())


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested state (tensors, arrays, containers, numbers)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@dataclass
class Comparison:
    equal: bool = True
    max_diff: float = 0.0  # the largest absolute difference of any compared array
    notes: list[str] = field(default_factory=list)

    def differ(self, note: str) -> None:
        self.equal = False
        self.notes.append(note)

    def arrays(self, name: str, a: np.ndarray, b: np.ndarray, tolerance: float = 0.0) -> None:
        diff = _max_diff(a, b)
        self.max_diff = max(self.max_diff, diff)
        if diff > tolerance:
            self.differ(f"{name}: max abs difference {diff:.3g}")


def compare_training(ref: Path, run: Path) -> Comparison:
    """Checkpoints ``last``/``best``, trainer state and the per-update log of two training runs."""
    import torch
    from safetensors.torch import load_file

    result = Comparison()
    for tag in ("last", "best"):
        a_dir, b_dir = ref / "checkpoints" / tag, run / "checkpoints" / tag
        if not (b_dir / "model.safetensors").exists():
            if (a_dir / "model.safetensors").exists():
                result.differ(f"checkpoint {tag} missing")
            continue
        a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
        if a.keys() != b.keys():
            result.differ(f"{tag}: weight names differ")
            continue
        for key in a:
            result.arrays(f"{tag}/{key}", a[key].numpy(), b[key].numpy())
        sa = torch.load(a_dir / "trainer_state.pt", map_location="cpu", weights_only=True)
        sb = torch.load(b_dir / "trainer_state.pt", map_location="cpu", weights_only=True)
        # the trainer seeds only torch's generators (Python's and NumPy's global ones are unused and
        # unseeded, so they differ between any two runs): the torch states are compared
        sa["torch_rng"], sb["torch_rng"] = ({k: s["rng"][k] for k in ("torch", "cuda")} for s in (sa, sb))
        for key in ("num_updates", "epoch", "best", "nonfinite_skipped", "scheduler", "loader", "torch_rng", "task",
                    "bad_items", "scaler"):
            if not _same(sa.get(key), sb.get(key)):
                result.differ(f"{tag}: trainer state {key} differs ({_short(sa.get(key))} vs {_short(sb.get(key))})")
        opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
        if opt_a.keys() != opt_b.keys():
            result.differ(f"{tag}: optimizer slots differ")
        for index in opt_a.keys() & opt_b.keys():
            for slot in opt_a[index]:
                result.arrays(f"{tag}/optimizer {index}.{slot}", torch.as_tensor(opt_a[index][slot]).numpy(),
                              torch.as_tensor(opt_b[index][slot]).numpy())
    _compare_logs(ref, run, result)
    for name in ("bad_items.tsv",):
        a_file, b_file = ref / name, run / name
        if a_file.exists() != b_file.exists() or (a_file.exists() and a_file.read_text() != b_file.read_text()):
            result.differ(f"{name} differs")
    return result


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def _log_by_step(exp: Path) -> dict[tuple[str, int], dict[str, Any]]:
    records: dict[tuple[str, int], dict[str, Any]] = {}
    path = exp / "log.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.endswith("}"):
            record = json.loads(line)
            if record.get("split") in ("train", "valid"):
                records[(record["split"], int(record["step"]))] = record  # the last one per step: after resume
    return records


def _compare_logs(ref: Path, run: Path, result: Comparison) -> None:
    a, b = _log_by_step(ref), _log_by_step(run)
    if a.keys() != b.keys():
        result.differ(f"logged updates differ: {sorted(a.keys() ^ b.keys())[:6]}")
    worst, worst_at = 0.0, ("", ("", 0))
    for step in sorted(a.keys() & b.keys()):
        for key, value in a[step].items():
            if key in ("split", "step") or "per_s" in key or "seconds" in key or not isinstance(value, int | float):
                continue
            other = b[step].get(key)
            if not isinstance(other, int | float):
                result.differ(f"log {step}: {key} missing")
                continue
            rel = abs(value - other) / max(abs(value), 1e-12) if value != other else 0.0
            if rel > worst:
                worst, worst_at = rel, (key, step)
    if worst > 1e-6:
        result.differ(f"logged figures differ: {worst_at[0]} of {worst_at[1]}: max relative difference {worst:.3g}")
    result.notes.append(f"log max rel diff {worst:.3g}")


def compare_npy(ref: Path, run: Path) -> Comparison:
    result = Comparison()
    a = {p.relative_to(ref) for p in ref.rglob("*.npy")}
    b = {p.relative_to(run) for p in run.rglob("*.npy")}
    if a != b:
        result.differ(f"feature files differ: {sorted(map(str, a ^ b))[:5]}")
    for rel in sorted(a & b):
        result.arrays(str(rel), np.load(ref / rel), np.load(run / rel))
    result.notes.append(f"{len(a & b)} feature files compared")
    return result


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        def visit(name: str, node: Any) -> None:
            if isinstance(node, h5py.Dataset):
                arrays[name] = node[()]
        handle.visititems(visit)
    return arrays


def compare_hdf5(ref: Path, run: Path) -> Comparison:
    result = Comparison()
    try:
        a, b = h5_arrays(ref / "features.h5"), h5_arrays(run / "features.h5")
    except OSError as err:
        result.differ(f"features.h5 unreadable: {err}")
        return result
    if a.keys() != b.keys():
        result.differ(f"datasets differ: {sorted(a.keys() ^ b.keys())[:5]}")
    for key in sorted(a.keys() & b.keys()):
        result.arrays(key, a[key], b[key])
    result.notes.append(f"{len(a.keys() & b.keys())} datasets compared")
    return result


def _drop_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items()
                if not (k.endswith("seconds") and k != "audio_seconds") and "per_s" not in k}
    return value


def _outputs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.name not in temp_files(directory))


def compare_evaluate(ref: Path, run: Path) -> Comparison:
    """Every output file of two ``evaluate`` runs (temporary files aside: :func:`_one_kill` reports them)."""
    result = Comparison()
    names = _outputs(ref)
    if names != _outputs(run):
        result.differ(f"output files differ: {names} vs {_outputs(run)}")
    for name in names:
        a_file, b_file = ref / name, run / name
        if not b_file.exists():
            continue
        if name.endswith(".json"):
            if _drop_timings(json.loads(a_file.read_text())) != _drop_timings(json.loads(b_file.read_text())):
                result.differ(f"{name} differs")
        elif a_file.read_bytes() != b_file.read_bytes():
            result.differ(f"{name} differs")
    hyps = sum(1 for n in names if n.startswith("hyp."))
    result.notes.append(f"{hyps} hypothesis files, {len(names)} files compared")
    return result


# -------------------------------------------------------------------------------------------------- verbs


def tiny_training(manifest_dir: Path, exp: Path, **extra: Any) -> list[str]:
    """``key=value`` overrides shared by the training runs (tiny sizes, one thread, no tensorboard)."""
    values: dict[str, Any] = {"data.manifest_dir": manifest_dir, "exp_dir": exp, "trainer.tensorboard": "false",
                              "trainer.threads": 1, "trainer.log_interval": 1, "trainer.device": "cpu",
                              "data.num_workers": 0}
    values |= {k.replace("__", "."): v for k, v in extra.items()}
    return [f"{k}={v}" for k, v in values.items()]


def pretrain_argv(data: Path, exp: Path, **extra: Any) -> list[str]:
    settings = {"model": "tiny", "data__train_subset": TRAIN, "data__valid_subset": VALID,
                "data__max_sample_size": 32000, "data__min_sample_size": 8000, "data__max_tokens": 96000,
                "trainer__valid_interval": 8, "trainer__save_interval": 3, "trainer__max_update": 24}
    return speechcl("pretrain", "--config-name", "pretrain_cpu", *tiny_training(data, exp, **(settings | extra)))


def finetune_argv(data: Path, exp: Path, init: Path | str, **extra: Any) -> list[str]:
    settings = {"model__init": init, "model__preset": "tiny", "data__train_subset": TRAIN,
                "data__valid_subset": VALID, "data__max_tokens": 200000, "trainer__valid_interval": 6,
                "trainer__save_interval": 3, "trainer__max_update": 18}
    return speechcl("finetune", "--config-name", "finetune_cpu", *tiny_training(data, exp, **(settings | extra)))


@dataclass
class Verb:
    """How to run one verb into a folder, watch it, and compare two of its outputs."""

    name: str
    argv: Callable[[Path], list[str]]
    progress: Callable[[Path], bool]  # True once the job has written its first real output
    writing: Callable[[Path], bool]  # True while an atomic write is under way
    compare: Callable[[Path, Path], Comparison]
    resumed_from: Callable[[Job], str] = lambda job: ""  # where the rerun picked up, from its output
    position: Callable[[Path], str] = lambda out: ""  # how far a (killed) job got, in words


def _logged(exp: Path) -> bool:
    path = exp / "log.jsonl"
    return path.exists() and path.stat().st_size > 0


def _ckpt_writing(exp: Path) -> bool:
    root = exp / "checkpoints"
    try:
        return any(name.startswith((".tmp-", ".old-")) for name in os.listdir(root))
    except FileNotFoundError:
        return False


def _logged_step(exp: Path) -> str:
    steps = [step for split, step in _log_by_step(exp) if split == "train"] if _logged(exp) else []
    return f"update {max(steps, default=0)} logged"


def _files_written(out: Path) -> str:
    npy = sum(1 for _ in out.rglob("*.npy")) if out.exists() else 0
    parts = sum(1 for _ in out.rglob("part-*.h5")) if out.exists() else 0
    return f"{npy} .npy files" if npy or not parts else f"{parts} hdf5 parts"


def _decoded(out: Path) -> str:
    lines = sum(len(_read(p).splitlines()) - 1 for p in out.glob(".hyp.*.partial.jsonl")) if out.exists() else 0
    done = len(list(out.glob("result.*.json"))) if out.exists() else 0
    return f"{done} splits done, {max(lines, 0)} records of the next in its partial log"


def _resume_line(job: Job) -> str:
    for line in job.stderr.splitlines():
        if "resumed from" in line:
            return line.split("resumed from", 1)[1].strip()
    return "start (no checkpoint)"


def _any_file(root: Path, suffix: str) -> bool:
    for _, _, files in os.walk(root):
        if any(f.endswith(suffix) for f in files):
            return True
    return False


def _eval_progress(out: Path) -> bool:
    try:
        return any(name.startswith((".hyp.", "hyp.")) for name in os.listdir(out))
    except FileNotFoundError:
        return False


def _extract_resume(job: Job) -> str:
    found = re.search(r"skipped (\d+) already done", job.stdout + job.stderr)
    return f"{found.group(1)} inputs already done" if found else ""


def make_verbs(base: Path, data: Path, audio: Path) -> dict[str, Verb]:
    pretrained, ctc = base / "pretrain" / "checkpoints" / "last", base / "ctc" / "checkpoints" / "last"
    manifests = [data / f"{s}.tsv" for s in (TRAIN, VALID, TEST)]

    def extract(fmt: str) -> Callable[[Path], list[str]]:
        return lambda out: speechcl("extract", "--model", pretrained, "--input", audio, "--output", out,
                                    "--layers", "all", "--format", fmt, "--device", "cpu", "--threads", 1,
                                    "--max-tokens", 160000, "--shard-size-mb", 0.5, "--no-progress")

    return {
        "pretrain": Verb("pretrain", lambda exp: pretrain_argv(data, exp), _logged, _ckpt_writing,
                         compare_training, _resume_line, _logged_step),
        "finetune": Verb("finetune", lambda exp: finetune_argv(data, exp, pretrained), _logged, _ckpt_writing,
                         compare_training, _resume_line, _logged_step),
        "extract": Verb("extract", extract("npy"), lambda out: _any_file(out, ".npy"),
                        lambda out: _any_file(out, ".tmp"), compare_npy, _extract_resume, _files_written),
        "extract_hdf5": Verb("extract_hdf5", extract("hdf5"), lambda out: (out / "features.h5").exists(),
                             lambda out: _any_file(out, ".tmp"), compare_hdf5, _extract_resume, _files_written),
        "evaluate": Verb("evaluate", lambda out: speechcl("evaluate", "--model", ctc, "--manifest", *manifests,
                                                          "--output", out, "--device", "cpu", "--batch-size", 2,
                                                          "--quiet"),
                         _eval_progress, lambda out: _any_file(out, ".tmp"), compare_evaluate, position=_decoded),
    }


# -------------------------------------------------------------------------------------------- the soak


def build_corpus(out: Path, minutes: float) -> tuple[Path, Path]:
    corpus, data = out / "corpus", out / "data"
    if not (data / ".done").exists():
        shutil.rmtree(data, ignore_errors=True)
        for argv in (speechcl("synth", corpus, "--minutes", minutes, "--speakers", 4, "--dev-minutes", 0.5,
                              "--test-minutes", 0.5, "--heldout-speakers", 2, "--seed", 3, "--workers", 2),
                     speechcl("prepare", "librispeech", corpus, data)):
            job = run(argv, out / "logs" / argv[3])
            if job.rc != 0:
                raise SystemExit(f"{' '.join(argv)} failed:\n{job.stderr[-2000:]}")
        (data / ".done").write_text("")
    return corpus, data


def build_models(out: Path, data: Path) -> Path:
    base = out / "base"
    jobs = [("pretrain", pretrain_argv(data, base / "pretrain"))]
    jobs.append(("ctc", finetune_argv(data, base / "ctc", base / "pretrain" / "checkpoints" / "last",
                                      trainer__max_update=2, trainer__valid_interval=0, trainer__save_interval=0)))
    for name, argv in jobs:
        if not (base / name / "train_result.json").exists():
            shutil.rmtree(base / name, ignore_errors=True)
            job = run(argv, base / "logs" / name)
            if job.rc != 0:
                raise SystemExit(f"building {name} failed:\n{job.stderr[-2000:]}")
    return base


def soak_verb(verb: Verb, root: Path, kills: int, rng: random.Random) -> dict[str, Any]:
    """The reference run of ``verb`` and ``kills`` killed-and-resumed runs compared with it."""
    shutil.rmtree(root, ignore_errors=True)
    ref_dir = root / "reference"
    ref = run(verb.argv(ref_dir), root / "logs" / "reference", lambda: verb.progress(ref_dir))
    report: dict[str, Any] = {"verb": verb.name, "reference_rc": ref.rc, "reference_wall_s": round(ref.wall, 2),
                              "reference_first_output_s": ref.first_output, "kills": []}
    if ref.rc != 0:
        report["error"] = f"reference run failed (exit {ref.rc}): {ref.stderr.strip().splitlines()[-1:]}"
        return report
    first = ref.first_output if ref.first_output is not None else 0.0
    for index in range(kills):
        report["kills"].append(_one_kill(verb, root, index, rng, first, ref.wall, ref_dir))
        k = report["kills"][-1]
        print(f"  {verb.name} kill {index + 1}/{kills}: at {k['killed_at_s']} s ({k['mode']}, {k.get('position')}), "
              f"write interrupted: {k['write_interrupted']}, resumed: {k['resume_ok']}, equal: {k['equal']}, "
              f"max diff {k['max_diff']:.3g}", flush=True)
    return report


def _one_kill(verb: Verb, root: Path, index: int, rng: random.Random, first: float, wall: float,
              ref_dir: Path) -> dict[str, Any]:
    mode = "write" if index % 2 else "time"
    delay = rng.uniform(first * 0.5, wall) if mode == "time" else rng.uniform(first, wall * 0.9)
    run_dir = root / f"kill_{index:02d}"
    attempts = 0
    for attempts in range(1, 5):  # a run that ends before its kill is tried again, earlier
        shutil.rmtree(run_dir, ignore_errors=True)
        killed = run_and_kill(verb.argv(run_dir), root / "logs" / f"kill_{index:02d}_a{attempts}", delay,
                              (lambda: verb.writing(run_dir)) if mode == "write" else None)
        if killed.killed_at is not None:
            break
        delay *= 0.6
    record: dict[str, Any] = {"index": index, "mode": mode, "attempts": attempts,
                              "killed_at_s": None if killed.killed_at is None else round(killed.killed_at, 3),
                              "reference_wall_s": round(wall, 2)}
    if killed.killed_at is None:
        record.update(resume_ok=False, equal=False, max_diff=math.nan, write_interrupted=False,
                      notes=[f"the job ended (exit {killed.rc}) before every kill"])
        return record
    record["position"] = verb.position(run_dir)
    record["write_interrupted"] = verb.writing(run_dir)  # the kill left an atomic write unfinished
    record["left_by_kill"] = temp_files(run_dir)[:8]
    resumed = run(verb.argv(run_dir), root / "logs" / f"kill_{index:02d}_resume")
    record["resume_rc"] = resumed.rc
    record["resume_ok"] = resumed.rc == 0
    record["resumed_from"] = verb.resumed_from(resumed)
    record["traceback"] = traceback_in(resumed.stderr, killed.stderr)
    if resumed.rc != 0:
        record.update(equal=False, max_diff=math.nan,
                      notes=[f"rerun failed (exit {resumed.rc}): {resumed.stderr.strip()[-500:]}"])
        return record
    comparison = verb.compare(ref_dir, run_dir)
    record["temp_left_after_rerun"] = temp_files(run_dir)  # stale temporaries of the killed run's writes
    record.update(equal=comparison.equal, max_diff=comparison.max_diff, notes=comparison.notes)
    return record


# ---------------------------------------------------------------------------------------- fuzzed folder


@dataclass
class Fuzzed:
    """The fuzzed folder and what each of its files is (:func:`speechcl.testing.fuzz.write_fuzzed_folder`)."""

    audio: Path
    verdicts: dict[str, str]

    @property
    def bad(self) -> set[str]:
        return {name for name, verdict in self.verdicts.items() if verdict != "ok"}

    def named_in(self, text: str, relative: bool = False) -> set[str]:
        """The fuzzed files ``text`` names (by absolute path, or with ``relative`` by path under the folder)."""
        found = set()
        for name in self.verdicts:
            if str(self.audio / name) in text:
                found.add(name)
            elif relative and any(field == name for line in text.splitlines() for field in line.split("\t")):
                found.add(name)
        return found


def _fuzz_record(verb: str, job: Job, expected: set[str], named: set[str], out: Path | None,
                 nan_written: bool | None, **extra: Any) -> dict[str, Any]:
    record = {"verb": verb, "rc": job.rc, "wall_s": round(job.wall, 1), "peak_rss_mb": round(job.peak_rss_mb),
              "expected_named": sorted(expected),
              "named": sorted(named), "not_named": sorted(expected - named), "named_but_good": sorted(named - expected),
              "nan_written": nan_written, "temp_left": temp_files(out) if out is not None else [],
              "traceback": traceback_in(job.stdout, job.stderr),
              "last_stderr_line": (job.stderr.strip().splitlines() or [""])[-1][:300]}
    record.update(extra)
    return record


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _skipped_in_report(data: Path) -> str:
    rows = [line.split("\t") for line in _read(data / "prepare_report.tsv").splitlines()[1:]]
    return "\n".join(row[1] for row in rows if len(row) > 2 and row[2] == "skipped")


def _weights_finite(exp: Path) -> bool | None:
    from safetensors.numpy import load_file

    files = list((exp / "checkpoints").glob("*/model.safetensors"))
    if not files:
        return None
    finite = all(np.isfinite(a).all() for f in files for a in load_file(str(f)).values())
    logged = [v for r in _log_by_step(exp).values() for k, v in r.items() if isinstance(v, float)]
    return not (finite and all(math.isfinite(v) for v in logged))


def _features_nan(out: Path) -> bool | None:
    arrays = [np.load(p) for p in out.rglob("*.npy")]
    if (out / "features.h5").exists():
        arrays += list(h5_arrays(out / "features.h5").values())
    return None if not arrays else not all(np.isfinite(a).all() for a in arrays)


def fuzz_prepare(fz: Fuzzed, root: Path) -> list[dict[str, Any]]:
    from speechcl.testing.fuzz import HEADER_VERDICTS

    header_bad = {n for n, v in fz.verdicts.items() if v in HEADER_VERDICTS}
    records = []
    for verify in (False, True):
        data = root / ("data_verify" if verify else "data")
        job = run(speechcl("prepare", "audio", fz.audio, data, "--valid-percent", 0, "--workers", 2,
                           *(["--verify"] if verify else [])), root / "logs" / data.name)
        listed = fz.named_in(_read(data / "train.tsv"), relative=True)
        records.append(_fuzz_record(
            "prepare audio --verify" if verify else "prepare audio", job, fz.bad if verify else header_bad,
            fz.named_in(_skipped_in_report(data), relative=True), data, None,
            bad_in_manifest=sorted(listed & fz.bad), good_in_manifest=len(listed - fz.bad)))
    return records


def label_manifest(data: Path, labeled: Path) -> None:
    """``labeled``: ``data``'s headers-only train.tsv with made-up .wrd/.ltr labels and a letter dictionary."""
    from speechcl.data.labels import write_dict

    labeled.mkdir(parents=True, exist_ok=True)
    lines = _read(data / "train.tsv").splitlines()
    (labeled / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    words = ["ABBA CAB", "BAD CAB", "DAB ABBA"]
    transcripts = [words[i % len(words)] for i in range(len(lines) - 1)]
    (labeled / "train.wrd").write_text("".join(t + "\n" for t in transcripts))
    (labeled / "train.ltr").write_text("".join(" ".join(t.replace(" ", "|")) + " |\n" for t in transcripts))
    write_dict(labeled / "dict.ltr.txt", [("|", 9), ("A", 9), ("B", 9), ("C", 3), ("D", 3)])


def fuzz_training(fz: Fuzzed, root: Path, base: Path) -> list[dict[str, Any]]:
    data, labeled = root / "data", root / "data_labeled"
    decode_bad = fz.named_in(_read(data / "train.tsv"), relative=True) & fz.bad  # headers-only lets them in
    label_manifest(data, labeled)
    common = {"data__train_subset": "train", "data__valid_subset": "''", "trainer__max_bad_item_share": 0.9,
              "trainer__valid_interval": 0, "trainer__save_interval": 4, "data__max_tokens": 96000}
    jobs = {
        "pretrain": pretrain_argv(data, root / "pretrain", **common, trainer__max_update=8),
        "finetune": finetune_argv(labeled, root / "finetune", base / "pretrain" / "checkpoints" / "last",
                                  **common, trainer__max_update=8, data__max_sample_size=96000,
                                  data__min_sample_size=0),  # labeled items longer are dropped: long.flac
    }
    records = []
    for verb, argv in jobs.items():
        exp = root / verb
        job = run(argv, root / "logs" / verb)
        named = fz.named_in(_read(exp / "bad_items.tsv"))
        records.append(_fuzz_record(verb, job, decode_bad, named, exp, _weights_finite(exp),
                                    updates=_updates(exp)))
    return records


def _updates(exp: Path) -> int | None:
    path = exp / "train_result.json"
    return json.loads(path.read_text()).get("num_updates") if path.exists() else None


def fuzz_inference(fz: Fuzzed, root: Path, base: Path) -> list[dict[str, Any]]:
    from speechcl.audio.io import AudioError, audio_info

    ctc, pretrained = base / "ctc" / "checkpoints" / "last", base / "pretrain" / "checkpoints" / "last"
    names = sorted(fz.verdicts)
    eval_data = root / "eval_data"
    eval_data.mkdir(parents=True, exist_ok=True)
    sizes = []
    for name in names:
        try:
            sizes.append(audio_info(fz.audio / name).num_samples())
        except AudioError:
            sizes.append(0)
    (eval_data / "fuzz.tsv").write_text(f"{fz.audio}\n" + "".join(f"{n}\t{s}\n" for n, s in zip(names, sizes,
                                                                                                 strict=True)))
    (eval_data / "fuzz.wrd").write_text("".join("A CAB\n" for _ in names))
    records = []

    out = root / "evaluate"
    job = run(speechcl("evaluate", "--model", ctc, "--manifest", eval_data / "fuzz.tsv", "--output", out,
                       "--device", "cpu", "--batch-size", 4, "--quiet"), root / "logs" / "evaluate")
    result = json.loads(_read(out / "result.fuzz.json") or "{}")
    numbers = [result.get(k) for k in ("wer", "cer")]
    nan = None if not result else not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers)
    records.append(_fuzz_record("evaluate", job, fz.bad, fz.named_in(_read(out / "bad.fuzz.tsv")), out, nan,
                                scored=result.get("utterances"), skipped=result.get("skipped")))

    job = run(speechcl("transcribe", "--model", ctc, "--device", "cpu", *[fz.audio / n for n in names]),
              root / "logs" / "transcribe")
    printed = {line.split("\t")[0] for line in job.stdout.splitlines()}
    transcribed = {n for n in names if str(fz.audio / n) in printed}
    records.append(_fuzz_record("transcribe", job, fz.bad, fz.named_in(job.stderr), None,
                                "nan" in job.stdout.lower().split(), transcribed=len(transcribed),
                                good_not_transcribed=sorted((set(names) - fz.bad) - transcribed)))

    for fmt in ("npy", "hdf5"):
        out = root / f"extract_{fmt}"
        job = run(speechcl("extract", "--model", pretrained, "--input", fz.audio, "--output", out, "--format", fmt,
                           "--device", "cpu", "--threads", 1, "--no-progress"), root / "logs" / f"extract_{fmt}")
        written = len(list(out.rglob("*.npy"))) if fmt == "npy" else \
            len(h5_arrays(out / "features.h5")) if (out / "features.h5").exists() else 0
        records.append(_fuzz_record(f"extract --format {fmt}", job, fz.bad, fz.named_in(_read(out / "failed.tsv")),
                                    out, _features_nan(out), written=written,
                                    named_on_stderr=sorted(fz.named_in(job.stderr))))
    return records


def soak_fuzzed(out: Path, base: Path, long_minutes: float, seed: int) -> dict[str, Any]:
    from speechcl.testing.fuzz import write_fuzzed_folder

    root = out / "fuzz"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.monotonic()
    fz = Fuzzed(root / "audio", write_fuzzed_folder(root / "audio", seed=seed, long_minutes=long_minutes))
    records = fuzz_prepare(fz, root)
    records += fuzz_training(fz, root, base)
    records += fuzz_inference(fz, root, base)
    for record in records:
        print(f"  fuzz {record['verb']}: exit {record['rc']}, named {len(record['named'])}/"
              f"{len(record['expected_named'])}, NaN written {record['nan_written']}, temp left "
              f"{len(record['temp_left'])}, traceback {record['traceback']}", flush=True)
    return {"files": fz.verdicts, "long_minutes": long_minutes, "wall_s": round(time.monotonic() - t0, 1),
            "verbs": records}


# ------------------------------------------------------------------------------------------------ report


def fuzz_ok(record: dict[str, Any]) -> bool:
    expected_rc = 1 if record["verb"].startswith(("transcribe", "extract")) else 0  # 1: some input failed
    return (record["rc"] == expected_rc and not record["not_named"] and not record["named_but_good"]
            and not record["nan_written"] and not record["temp_left"] and not record["traceback"])


def kills_ok(report: dict[str, Any]) -> bool:
    return "error" not in report and all(k["resume_ok"] and k["equal"] for k in report["kills"])


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Soak ({summary['date']}, seed {summary['seed']}, {summary['wall_s'] / 60:.1f} min on "
             f"{os.cpu_count()} CPUs)", ""]
    if summary["kills"]:
        lines += ["## Random SIGKILL, then rerun of the same command", "",
                  "| verb | kills survived / tried | checkpoint or file writes interrupted | outputs equal to the "
                  "uninterrupted run | max abs diff | temp files left after the rerun |", "|---|---|---|---|---|---|"]
        for r in summary["kills"]:
            kills = r["kills"]
            survived = sum(k["resume_ok"] for k in kills)
            killed = [k for k in kills if k["killed_at_s"] is not None]
            equal = sum(k["equal"] for k in kills)
            diffs = [k["max_diff"] for k in kills if not math.isnan(k["max_diff"])]
            worst = max(diffs, default=math.nan)
            diff = "0 (bit for bit)" if worst == 0 else f"{worst:.3g}"
            stale = sum(bool(k.get("temp_left_after_rerun")) for k in kills)
            lines.append(f"| {r['verb']} | {survived} / {len(killed)} | {sum(k['write_interrupted'] for k in kills)} "
                         f"| {equal} / {len(kills)} | {diff} | {stale} |" if "error" not in r else
                         f"| {r['verb']} | reference failed: {r['error']} | | | | |")
        lines += ["", "Equal means bit for bit: every weight, optimizer tensor and feature array with tolerance 0, "
                  "trainer state (updates, epoch, loader, scheduler, torch RNG, best, bad items) and output files "
                  "identical, logged figures within 1e-6 relative (timings aside). Reference wall times (s): "
                  + ", ".join(f"{r['verb']} {r['reference_wall_s']}" for r in summary["kills"]) + ".", ""]
    if summary.get("fuzz"):
        fz = summary["fuzz"]
        bad = sum(v != "ok" for v in fz["files"].values())
        lines += [f"## Fuzzed folder ({len(fz['files'])} files, {bad} bad, a {fz['long_minutes']:g}-minute file)",
                  "", "| verb | exit | bad files met / named | NaN written | temp files left | tracebacks | ok |",
                  "|---|---|---|---|---|---|---|"]
        for r in fz["verbs"]:
            nan = "n/a" if r["nan_written"] is None else ("yes" if r["nan_written"] else "no")
            lines.append(f"| {r['verb']} | {r['rc']} | {len(r['expected_named'])} / {len(r['named'])} | {nan} | "
                         f"{len(r['temp_left'])} | {'yes' if r['traceback'] else 'no'} | "
                         f"{'yes' if fuzz_ok(r) else 'NO'} |")
        admitted = next((r["bad_in_manifest"] for r in fz["verbs"] if r["verb"] == "prepare audio"), [])
        lines += ["", f"Bad files met: those the verb was given and had to notice. Headers-only `prepare audio` "
                  f"admits {len(admitted)} ({', '.join(admitted)}) to train.tsv, as documented; `pretrain` and "
                  "`finetune` train on that manifest and must name them in bad_items.tsv. `evaluate`, "
                  "`transcribe` and `extract` get every file. Exit 1 of transcribe/extract means \"some input "
                  "failed\". `finetune` drops the long file by its length limit (data.max_sample_size)."]
    problems = summary["problems"]
    lines += ["", "## Problems", ""] + ([f"- {p}" for p in problems] or ["none"])
    if summary["kills"]:
        lines += ["", "## Kill moments", "", "seconds after start (what the job had done; where the rerun resumed)", ""]
        for r in summary["kills"]:
            moments = [f"{k['killed_at_s']} s{' in a write' if k['write_interrupted'] else ''} ({k.get('position', '')}"
                       + (f"; {_short_resume(k.get('resumed_from', ''))}" if k.get("resumed_from") else "") + ")"
                       for k in r["kills"]]
            lines.append(f"- {r['verb']}: " + ", ".join(moments))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


def _short_resume(text: str) -> str:
    found = re.search(r"at update (\d+)", text)
    return f"resumed at update {found.group(1)}" if found else text


def problems_of(summary: dict[str, Any]) -> list[str]:
    out = []
    for r in summary["kills"]:
        if "error" in r:
            out.append(f"{r['verb']}: {r['error']}")
        for k in r["kills"]:
            if not (k["resume_ok"] and k["equal"]):
                out.append(f"{r['verb']} kill {k['index'] + 1} at {k['killed_at_s']} s ({k.get('position', '')}; "
                           f"resumed from {k.get('resumed_from', '?')}): " + "; ".join(k["notes"][:3]))
            if k.get("temp_left_after_rerun"):
                out.append(f"{r['verb']} kill {k['index'] + 1} at {k['killed_at_s']} s: the completed rerun left the "
                           f"killed run's temporary files: {k['temp_left_after_rerun'][:4]}")
    for r in (summary.get("fuzz") or {}).get("verbs", []):
        if not fuzz_ok(r):
            out.append(f"fuzz {r['verb']}: exit {r['rc']}, not named {r['not_named']}, named but good "
                       f"{r['named_but_good']}, NaN {r['nan_written']}, temp {r['temp_left'][:3]}, traceback "
                       f"{r['traceback']}: {r['last_stderr_line']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (corpus kept between runs)")
    parser.add_argument("--kills", type=int, default=10, help="kills per verb (default 10)")
    parser.add_argument("--verbs", default=DEFAULT_VERBS, help=f"comma-separated, of {', '.join(VERBS)} "
                        f"(default {DEFAULT_VERBS}); '' for none")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and the fuzzed folder")
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of training audio (default 3)")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="length of the fuzzed long file")
    parser.add_argument("--no-fuzz", action="store_true", help="skip the fuzzed folder")
    args = parser.parse_args(argv)
    verbs = [v for v in args.verbs.split(",") if v]
    unknown = set(verbs) - set(VERBS)
    if unknown:
        parser.error(f"unknown verbs {sorted(unknown)}; choose from {', '.join(VERBS)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"corpus and models in {out}", flush=True)
    corpus, data = build_corpus(out, args.minutes)
    base = build_models(out, data)
    rng = random.Random(args.seed)
    table = make_verbs(base, data, corpus)
    summary: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "seed": args.seed, "kills": []}
    for name in verbs:
        print(f"{name}: reference and {args.kills} kills", flush=True)
        summary["kills"].append(soak_verb(table[name], out / "kills" / name, args.kills, rng))
    summary["fuzz"] = None if args.no_fuzz else soak_fuzzed(out, base, args.long_minutes, args.seed)
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    summary["problems"] = problems_of(summary)
    (out / "soak.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "soak.md").write_text(markdown(summary))
    print((out / "soak.md").read_text())
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
