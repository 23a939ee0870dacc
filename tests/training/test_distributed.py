"""torchrun with 2 CPU ranks (gloo) takes the same updates as one process accumulating 2 micro-batches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechcl.api import load_model
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechcl.training.pretrain import DataConfig, build_loader
from tests.training.helpers import (
    BATCHES_PER_EPOCH,
    DATA,
    TRAIN,
    max_abs_diff,
    optimizer_tensors,
    overrides,
    pretrain_argv,
    read_log,
    read_state,
    read_weights,
    subprocess_env,
)

TIMEOUT = 240


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_ranks_equal_one_process_with_update_freq_2(manifest_dir: Path, tmp_path: Path) -> None:
    # each update consumes 2 global batches, so an even number per epoch gives both runs the same batches
    loader = build_loader(DataConfig(manifest_dir=str(manifest_dir), **DATA), TRAIN, True)
    assert len(loader) == BATCHES_PER_EPOCH and BATCHES_PER_EPOCH % 2 == 0

    # a large first step (no warmup), so that a wrong gradient could not hide in a tiny update
    settings = {"trainer__max_update": 2, "trainer__valid_interval": 1, "optim__lr": 0.005, "schedule__warmup_updates": 1}
    env = subprocess_env()
    one_exp, ddp_exp = tmp_path / "one", tmp_path / "ddp"
    with open(tmp_path / "one.out", "w") as out:
        one = subprocess.Popen(pretrain_argv(manifest_dir, one_exp, trainer__update_freq=2, **settings), env=env,
                               stdout=out, stderr=subprocess.STDOUT)
    ddp = subprocess.run([*_torchrun(), "-m", "speechcl", "pretrain", "--config-name", "pretrain_cpu",
                          *overrides(manifest_dir, ddp_exp, trainer__update_freq=1, **settings)],
                         env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-4000:]
    assert one.wait(TIMEOUT) == 0, (tmp_path / "one.out").read_text()[-3000:]

    last, one_last = ddp_exp / "checkpoints" / "last", one_exp / "checkpoints" / "last"
    weights, one_weights = read_weights(last), read_weights(one_last)
    diff = max_abs_diff(weights, one_weights)
    assert diff <= 1e-5, f"max abs difference {diff:.3g}"
    cfg = load_model(last).cfg  # tiny with pretrain_cpu's model overrides
    torch.manual_seed(1)  # trainer.seed: the initial weights, to show the updates did something
    init = {k: v for k, v in Wav2Vec2ForPretraining(cfg).state_dict().items()}
    diff = max_abs_diff(weights, init)
    assert diff > 1e-4, f"max abs difference {diff:.3g}"

    state, one_state = read_state(last), read_state(one_last)
    assert state["num_updates"] == one_state["num_updates"] == 2
    assert state["loader"]["world_size"] == 2 and state["loader"]["position"] == 2  # batches 0-3 between 2 ranks
    assert one_state["loader"]["position"] == 4
    opt, one_opt = optimizer_tensors(state), optimizer_tensors(one_state)
    for name in opt:
        torch.testing.assert_close(opt[name], one_opt[name], rtol=1e-5, atol=1e-8, msg=name)

    # the logged (all-reduced) statistics agree, training and validation
    log, one_log = read_log(ddp_exp), read_log(one_exp)
    pick = [(r["split"], r["step"]) for r in log if r["split"] in ("train", "valid")]
    assert pick == [("train", 1), ("valid", 1), ("train", 2), ("valid", 2)]
    for record, other in zip([r for r in log if "loss" in r], [r for r in one_log if "loss" in r]):
        for key in ("loss", "accuracy", "masked_steps"):
            assert record[key] == pytest.approx(other[key], rel=1e-5), (record["split"], record["step"], key)
    assert (ddp_exp / "checkpoints" / "best").is_dir()
