"""CheckpointManager: atomic directory swaps survive an interruption, step_* pruning, safe loading."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from speechcl.models.config import preset
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechcl.training.checkpoints import STATE_NAME, CheckpointManager, rng_state, set_rng_state


@pytest.fixture(scope="module")
def model() -> Wav2Vec2ForPretraining:
    torch.manual_seed(0)
    return Wav2Vec2ForPretraining(preset("tiny"))


def _state(step: int) -> dict:
    return {"num_updates": step, "rng": rng_state(), "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}}}


def _step_of(ckpt: CheckpointManager, tag: str) -> int:
    return int(torch.load(ckpt.path(tag) / STATE_NAME, weights_only=True)["num_updates"])


def test_save_load_roundtrip_with_weights_only(tmp_path: Path, model: Wav2Vec2ForPretraining) -> None:
    ckpt = CheckpointManager(tmp_path)
    assert not ckpt.exists("last")
    ckpt.save("last", model, _state(3), extra_config={"run": {"seed": 1}})
    assert ckpt.exists("last")
    assert {p.name for p in ckpt.path("last").iterdir()} == {"config.json", "model.safetensors", STATE_NAME}
    assert [p.name for p in ckpt.root.iterdir()] == ["last"]  # no temporary left behind
    torch.manual_seed(123)
    other = Wav2Vec2ForPretraining(preset("tiny"))
    state = ckpt.load("last", other)
    assert state["num_updates"] == 3
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_rng_state_roundtrip() -> None:
    import random

    import numpy as np

    state = rng_state()
    draws = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


def test_interrupted_swap_leaves_old_checkpoint(tmp_path: Path, model: Wav2Vec2ForPretraining,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = CheckpointManager(tmp_path)
    ckpt.save("last", model, _state(2))
    real_replace = os.replace
    calls = []

    def crash_on_second_rename(src: str | Path, dst: str | Path) -> None:
        if Path(dst).parent == ckpt.root:  # a directory swap (not a file write inside the new checkpoint)
            calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # after last -> .old-last, before .tmp-last-* -> last
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr("speechcl.training.checkpoints.os.replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("last", model, _state(4))
    monkeypatch.setattr("speechcl.training.checkpoints.os.replace", real_replace)
    assert calls[0] == ("last", ".old-last")
    assert not ckpt.path("last").exists() and (ckpt.root / ".old-last").exists()
    # a killed process leaves its temporary directory under its own pid
    (stale,) = ckpt.root.glob(".tmp-last-*")
    stale.rename(ckpt.root / ".tmp-last-999999")
    # the next start finds the old checkpoint, complete
    assert CheckpointManager(tmp_path).exists("last")
    assert _step_of(ckpt, "last") == 2
    assert sorted(p.name for p in ckpt.root.iterdir()) == ["last"]  # .old-last and the stale temporary gone
    ckpt.save("last", model, _state(6))
    assert _step_of(ckpt, "last") == 6
    assert sorted(p.name for p in ckpt.root.iterdir()) == ["last"]


def test_recover_by_hand(tmp_path: Path, model: Wav2Vec2ForPretraining) -> None:
    ckpt = CheckpointManager(tmp_path)
    ckpt.save("last", model, _state(5))
    os.replace(ckpt.path("last"), ckpt.root / ".old-last")  # killed after the first rename
    assert ckpt.exists("last") and _step_of(ckpt, "last") == 5
    assert ckpt.load("last", model)["num_updates"] == 5
    # killed after the second rename, before the old copy was removed: the new one wins
    ckpt.save("last", model, _state(7))
    shutil.copytree(ckpt.path("last"), ckpt.root / ".old-last")
    assert ckpt.exists("last") and _step_of(ckpt, "last") == 7
    assert not (ckpt.root / ".old-last").exists()


def test_copy_and_prune_keep_last(tmp_path: Path, model: Wav2Vec2ForPretraining) -> None:
    ckpt = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        ckpt.save("last", model, _state(step))
        ckpt.copy("last", f"step_{step:08d}")
        ckpt.prune()
    names = sorted(p.name for p in ckpt.root.iterdir())
    assert names == ["last", "step_00000030", "step_00000040"]
    assert _step_of(ckpt, "step_00000030") == 30
    # copy over an existing target, also when a killed copy left its .old- directory behind
    ckpt.copy("step_00000030", "best")
    shutil.copytree(ckpt.path("best"), ckpt.root / ".old-best")
    ckpt.copy("last", "best")
    assert _step_of(ckpt, "best") == 40
    assert not (ckpt.root / ".old-best").exists()


def test_incomplete_checkpoint_is_reported(tmp_path: Path, model: Wav2Vec2ForPretraining) -> None:
    ckpt = CheckpointManager(tmp_path)
    ckpt.save("last", model, _state(1))
    (ckpt.path("last") / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ckpt.load("last", model)
