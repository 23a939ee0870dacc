"""Non-finite updates: a NaN loss is skipped and counted without touching the parameters; too many in a
row stop training with :class:`NonFiniteError`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from speechcl.training.trainer import NonFiniteError, TaskOutput, train
from tests.training.helpers import read_log, tiny_configs, tiny_pieces


class NaNOnAttempts:
    """Wraps a task: the loss of the chosen update attempts (1-based; one micro-batch each) is NaN.
    Snapshots the parameters at the start of every attempt."""

    def __init__(self, task: object, bad: set[int]) -> None:
        self.task, self.bad = task, bad
        self.attempt = 0
        self.snapshots: list[dict[str, Tensor]] = []

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput:
        self.attempt += 1
        self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        out = self.task.forward(model, batch, generator)
        if self.attempt in self.bad:
            out.loss = out.loss * float("nan")
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self.task, name)


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_single_nan_update_is_skipped_and_counted(manifest_dir: Path, tmp_path: Path) -> None:
    model, task, train_loader, _ = tiny_pieces(manifest_dir)
    wrapped = NaNOnAttempts(task, bad={3})
    trainer, optim, schedule = tiny_configs(max_update=4, save_interval=2)
    result = train(model, wrapped, train_loader, None, tmp_path, trainer, optim, schedule)

    assert result["num_updates"] == 4 and result["nonfinite_skipped"] == 1
    assert wrapped.attempt == 5  # 4 updates + the skipped one
    snaps = wrapped.snapshots
    assert not _same(snaps[0], snaps[1])  # ordinary updates change the parameters
    assert _same(snaps[2], snaps[3])  # the NaN attempt (3rd) left them as they were
    assert not _same(snaps[3], snaps[4])  # and training went on
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())

    log = read_log(tmp_path)
    train_lines = [r for r in log if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4]  # the skipped attempt is not logged as an update
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_lines)  # its NaN stats are not averaged in
    assert [r["nonfinite_skipped"] for r in train_lines] == [0, 0, 1, 1]
    warnings = [r["message"] for r in log if r["split"] == "warning"]
    assert len(warnings) == 1 and "non-finite" in warnings[0] and "skipped" in warnings[0]
    # counted in the checkpoint too (a resumed run keeps counting), and saved once per update count
    state = torch.load(tmp_path / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    assert state["nonfinite_skipped"] == 1 and state["num_updates"] == 4
    assert state["scheduler"]["step_num"] == 4  # the schedule did not advance on the skipped attempt


def test_consecutive_nan_updates_raise(manifest_dir: Path, tmp_path: Path) -> None:
    model, task, train_loader, _ = tiny_pieces(manifest_dir)
    wrapped = NaNOnAttempts(task, bad={2, 3, 4})
    trainer, optim, schedule = tiny_configs(max_update=6, max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteError, match=r"3 consecutive updates had a non-finite loss") as err:
        train(model, wrapped, train_loader, None, tmp_path, trainer, optim, schedule)
    assert "optim.lr" in str(err.value) and "bf16" in str(err.value)  # says what to do about it
    assert wrapped.attempt == 4
    assert _same(wrapped.snapshots[1], wrapped.snapshots[3])  # nothing was applied after update 1


def test_nan_streak_shorter_than_limit_resets(manifest_dir: Path, tmp_path: Path) -> None:
    model, task, train_loader, _ = tiny_pieces(manifest_dir)
    wrapped = NaNOnAttempts(task, bad={1, 2, 4, 5})  # two streaks of 2 < 3
    trainer, optim, schedule = tiny_configs(max_update=3, max_consecutive_nonfinite=3)
    result = train(model, wrapped, train_loader, None, tmp_path, trainer, optim, schedule)
    assert result["num_updates"] == 3 and result["nonfinite_skipped"] == 4
