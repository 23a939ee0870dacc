"""A pretraining run killed with SIGKILL and started again ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from speechcl.training.checkpoints import CheckpointManager
from tests.training.helpers import (
    max_abs_diff,
    optimizer_tensors,
    pretrain_argv,
    read_log,
    read_state,
    read_weights,
    subprocess_env,
)

KILL_AFTER_STEP = 7  # kill once update 7 is logged: the last checkpoint is then at update 6 (mid-epoch 1) or later
TIMEOUT = 240


def _logged_step(exp: Path) -> int:
    try:
        lines = (exp / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines if line.endswith("}")]
    return max(steps, default=0)


def _kill_when_logged(proc: subprocess.Popen, exp: Path, step: int) -> bool:
    """SIGKILL ``proc`` once its log shows ``step``; False when it finished (or died) before that."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _logged_step(exp) >= step:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no update {step} logged in {exp} within {TIMEOUT} s")


def _last_per_step(exp: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_log(exp) if r["split"] == "train"}


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(manifest_dir: Path, tmp_path: Path) -> None:
    env = subprocess_env()
    for max_update in (16, 64):  # a larger run if the machine was so fast the first one finished unkilled
        settings = {"trainer__max_update": max_update, "trainer__save_interval": 2, "trainer__valid_interval": 3}
        ref_exp, exp = tmp_path / f"reference_{max_update}", tmp_path / f"killed_{max_update}"
        with open(tmp_path / f"reference_{max_update}.out", "w") as ref_out:
            reference = subprocess.Popen(pretrain_argv(manifest_dir, ref_exp, **settings), env=env,
                                         stdout=ref_out, stderr=subprocess.STDOUT)
        with open(tmp_path / f"killed_{max_update}.out", "w") as out:
            victim = subprocess.Popen(pretrain_argv(manifest_dir, exp, **settings), env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        killed = _kill_when_logged(victim, exp, KILL_AFTER_STEP)
        if killed:
            break
        assert victim.returncode == 0, (tmp_path / f"killed_{max_update}.out").read_text()[-3000:]
        reference.wait(TIMEOUT)
    else:
        pytest.fail(f"the run finished all {max_update} updates before it could be killed at update "
                    f"{KILL_AFTER_STEP}; raise max_update in this test")
    assert victim.returncode == -signal.SIGKILL

    # the kill really interrupted it: a checkpoint from the middle of the run
    assert CheckpointManager(exp).exists("last")  # (finishes a checkpoint swap the kill may have cut short)
    interrupted_at = int(read_state(exp / "checkpoints" / "last")["num_updates"])
    assert KILL_AFTER_STEP - 1 <= interrupted_at < max_update

    resumed = subprocess.run(pretrain_argv(manifest_dir, exp, **settings), env=env, capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at update {interrupted_at}" in resumed.stderr  # "resumed from ... at update N (epoch E)"
    assert reference.wait(TIMEOUT) == 0, (tmp_path / f"reference_{max_update}.out").read_text()[-3000:]

    last, ref_last = exp / "checkpoints" / "last", ref_exp / "checkpoints" / "last"
    diff = max_abs_diff(read_weights(last), read_weights(ref_last))
    assert diff <= 1e-6, f"max abs difference {diff:.3g}"
    state, ref_state = read_state(last), read_state(ref_last)
    for key in ("num_updates", "scheduler", "loader", "best", "nonfinite_skipped"):
        assert state[key] == ref_state[key], key
    assert state["num_updates"] == max_update
    opt, ref_opt = optimizer_tensors(state), optimizer_tensors(ref_state)
    assert opt.keys() == ref_opt.keys() and len(opt) > 0
    for name in opt:
        torch.testing.assert_close(opt[name], ref_opt[name], rtol=1e-6, atol=1e-9, msg=name)

    # every update after the resume point computed the same losses as the uninterrupted run
    log, ref_log = _last_per_step(exp), _last_per_step(ref_exp)
    assert sorted(log) == sorted(ref_log) == list(range(1, max_update + 1))
    for step in log:
        for key in ("loss", "accuracy", "code_perplexity", "lr", "grad_norm"):
            assert log[step][key] == pytest.approx(ref_log[step][key], rel=1e-6, abs=1e-9), (step, key)
