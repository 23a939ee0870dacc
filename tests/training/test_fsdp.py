"""trainer.strategy=fsdp on 2 CPU ranks (gloo), pretraining from tar shards: the same updates as DDP, and a
run killed with SIGKILL resumes to the uninterrupted result, with either strategy."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from speechcl.api import load_model
from speechcl.cli import main as cli_main
from speechcl.data.shards import write_shards
from speechcl.training.checkpoints import CheckpointManager
from speechcl.training.sharding import export_weights, has_shards
from tests.training.helpers import (
    TRAIN,
    VALID,
    max_abs_diff,
    optimizer_tensors,
    overrides,
    read_log,
    read_state,
    read_weights,
    run_pretrain_verb,
    subprocess_env,
)
from tests.training.test_distributed import _torchrun

TIMEOUT = 300
MAX_UPDATE = 10
KILL_AFTER = 5  # SIGKILL the whole torchrun group once update 5 is logged (a checkpoint every update, 2 per epoch)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="needs torch.distributed with gloo"),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's ranks through /proc"),
]


def _launch(manifest_dir: Path, shards: Path, exp: Path, strategy: str, **extra: object) -> subprocess.Popen:
    """2-rank pretraining from ``shards``, in fp32 (so FSDP and DDP compare closely) unless ``extra`` says
    otherwise; layerdrop on: the ranks must agree on the layers they skip (FSDP would deadlock otherwise)."""
    settings = {"trainer__max_update": MAX_UPDATE, "trainer__precision": "fp32"} | extra
    argv = overrides(manifest_dir, exp, data__format="shards", data__shards_dir=shards, trainer__strategy=strategy,
                     trainer__save_interval=1, trainer__valid_interval=4, model__layerdrop=0.3, optim__lr=0.005,
                     schedule__warmup_updates=1, **settings)
    out = open(exp.parent / f"{exp.name}.out", "a")  # noqa: SIM115 - the child writes to it until it ends
    return subprocess.Popen([*_torchrun(), "-m", "speechcl", "pretrain", "--config-name", "pretrain_cpu", *argv],
                            env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(proc: subprocess.Popen, exp: Path) -> None:
    assert proc.wait(TIMEOUT) == 0, (exp.parent / f"{exp.name}.out").read_text()[-4000:]


def _logged_step(exp: Path) -> int:
    try:
        lines = (exp / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line).get("step", 0) for line in lines if line.endswith("}")), default=0)


def _kill_group_after(proc: subprocess.Popen, exp: Path, step: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while _logged_step(exp) < step:
        assert proc.poll() is None, f"the run ended before update {step}: " + \
            (exp.parent / f"{exp.name}.out").read_text()[-3000:]
        assert time.monotonic() < deadline, f"no update {step} logged in {exp}"
        time.sleep(0.02)
    tree = [proc.pid, *_descendants(proc.pid)]  # torchrun starts each rank in a session of its own
    for pid in tree:  # torchrun, both ranks and their loader workers at once, as a node failure would
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert len(tree) >= 3, tree
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in tree):
        assert time.monotonic() < deadline, f"processes {tree} still alive after SIGKILL"
        time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _train_losses(exp: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(exp) if r["split"] == "train"}


def test_fsdp_matches_ddp_and_both_resume_after_a_kill(manifest_dir: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    for split in (TRAIN, VALID):
        write_shards(manifest_dir, split, shards, shard_size=2, jobs=1)
    runs = {(s, kind): tmp_path / f"{s}_{kind}" for s in ("ddp", "fsdp") for kind in ("reference", "killed")}

    # the two references side by side, then the two victims side by side, each killed mid-run, then resumed
    refs = {s: _launch(manifest_dir, shards, runs[s, "reference"], s) for s in ("ddp", "fsdp")}
    for s, proc in refs.items():
        _wait(proc, runs[s, "reference"])
    # bf16 FSDP (bf16 gathered parameters, fp32 masters and reduction) with gradient accumulation runs too
    bf16 = _launch(manifest_dir, shards, tmp_path / "fsdp_bf16", "fsdp", trainer__precision="bf16",
                   trainer__max_update=2, trainer__update_freq=2)
    victims = {s: _launch(manifest_dir, shards, runs[s, "killed"], s) for s in ("ddp", "fsdp")}
    for s, proc in victims.items():
        _kill_group_after(proc, runs[s, "killed"], KILL_AFTER)
        assert CheckpointManager(runs[s, "killed"]).exists("last")
        at = read_state(runs[s, "killed"] / "checkpoints" / "last")["num_updates"]
        assert KILL_AFTER - 1 <= at < MAX_UPDATE and not (runs[s, "killed"] / "train_result.json").exists(), at
    _wait(bf16, tmp_path / "fsdp_bf16")
    bf16_losses = _train_losses(tmp_path / "fsdp_bf16")
    assert sorted(bf16_losses) == [1, 2] and all(0 < loss < 100 for loss in bf16_losses.values()), bf16_losses
    resumed = {s: _launch(manifest_dir, shards, runs[s, "killed"], s) for s in ("ddp", "fsdp")}
    for s, proc in resumed.items():
        _wait(proc, runs[s, "killed"])
        assert "resumed from" in (tmp_path / f"{s}_killed.out").read_text()

    ddp, fsdp = (runs[s, "reference"] / "checkpoints" / "last" for s in ("ddp", "fsdp"))
    assert has_shards(fsdp) and not has_shards(ddp)
    # FSDP's reduce-scatter and DDP's all-reduce take the same updates (float rounding apart)
    diff = max_abs_diff(read_weights(fsdp), read_weights(ddp))
    assert diff <= 1e-5, f"FSDP vs DDP weights: max abs difference {diff:.3g}"
    ddp_losses, fsdp_losses = _train_losses(runs["ddp", "reference"]), _train_losses(runs["fsdp", "reference"])
    assert sorted(fsdp_losses) == list(range(1, MAX_UPDATE + 1))
    for step, loss in ddp_losses.items():
        assert fsdp_losses[step] == pytest.approx(loss, rel=1e-4), step
    ddp_state, fsdp_state = read_state(ddp), read_state(fsdp)
    assert fsdp_state["optimizer"] is None and fsdp_state["loader"] == ddp_state["loader"]

    # a killed run resumes to the uninterrupted one, for each strategy
    for s in ("ddp", "fsdp"):
        last, ref = runs[s, "killed"] / "checkpoints" / "last", runs[s, "reference"] / "checkpoints" / "last"
        diff = max_abs_diff(read_weights(last), read_weights(ref))
        assert diff <= 1e-6, f"{s}: resumed vs uninterrupted weights: max abs difference {diff:.3g}"
        assert read_state(last)["num_updates"] == MAX_UPDATE
        losses, ref_losses = _train_losses(runs[s, "killed"]), _train_losses(runs[s, "reference"])
        for step, loss in ref_losses.items():
            assert losses[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), (s, step)
    opt, ref_opt = optimizer_tensors(read_state(runs["ddp", "killed"] / "checkpoints" / "last")), \
        optimizer_tensors(ddp_state)
    for name in ref_opt:
        torch.testing.assert_close(opt[name], ref_opt[name], rtol=1e-5, atol=1e-8, msg=name)

    # the DCP shards hold the same model as the gathered weights: a checkpoint with shards only (as
    # trainer.fsdp_full_weights=false writes it) loads as it is, and `speechcl convert` exports it
    shards_only = tmp_path / "shards_only"
    shutil.copytree(fsdp, shards_only)
    (shards_only / "model.safetensors").unlink()
    assert max_abs_diff(load_model(shards_only).state_dict(), read_weights(fsdp)) == 0.0
    assert cli_main(["convert", str(shards_only), str(tmp_path / "exported")]) == 0
    exported = tmp_path / "exported"
    assert max_abs_diff(read_weights(exported), read_weights(fsdp)) == 0.0
    assert max_abs_diff(read_weights(export_weights(shards_only, tmp_path / "exported2")), read_weights(fsdp)) == 0.0
    assert json.loads((exported / "config.json").read_text())["architecture"] == \
        json.loads((fsdp / "config.json").read_text())["architecture"]

    # an FSDP checkpoint cannot be resumed by a single process: a clear error, the checkpoint untouched
    before = read_weights(fsdp)
    argv = ["--config-name", "pretrain_cpu", *overrides(manifest_dir, runs["fsdp", "reference"], data__format="shards",
                                                        data__shards_dir=shards, trainer__max_update=MAX_UPDATE + 2)]
    assert run_pretrain_verb(argv) == 2
    assert max_abs_diff(read_weights(fsdp), before) == 0.0


def test_moco_key_encoder_and_queue_under_fsdp_match_ddp(manifest_dir: Path, tmp_path: Path) -> None:
    """MoCo's EMA key encoder (sharded like the query encoder, moved shard by shard) and its queue (a buffer
    filled with keys gathered from both ranks) end where DDP's do. Validation runs on the dev split, where one
    rank's batches hold a statistic (the queue's) the other's lack: the ranks reduce the union of keys (before,
    both strategies aborted on mismatched collectives)."""
    procs = {}
    for strategy in ("ddp", "fsdp"):
        exp = tmp_path / strategy
        argv = overrides(manifest_dir, exp, objective="moco", trainer__strategy=strategy, trainer__max_update=3,
                         trainer__precision="fp32", optim__lr=0.005,
                         schedule__warmup_updates=1, **{"objective.queue_size": 16, "objective.momentum": 0.5})
        out = open(tmp_path / f"{strategy}.out", "w")  # noqa: SIM115 - the child writes to it until it ends
        procs[strategy] = subprocess.Popen([*_torchrun(), "-m", "speechcl", "pretrain", "--config-name",
                                            "pretrain_cpu", *argv], env=subprocess_env(), stdout=out,
                                           stderr=subprocess.STDOUT)
    for strategy, proc in procs.items():
        _wait(proc, tmp_path / strategy)
    ddp, fsdp = (read_weights(tmp_path / s / "checkpoints" / "last") for s in ("ddp", "fsdp"))
    teacher = [k for k in ddp if k.startswith(("key_", "queue"))]
    assert any("queue" in k for k in teacher) and len(teacher) > 10, sorted(ddp)[:20]
    assert max_abs_diff(fsdp, ddp) <= 1e-5
    assert int(ddp["queue_fill"]) > 0 and torch.equal(fsdp["queue_fill"], ddp["queue_fill"])  # keys were enqueued
