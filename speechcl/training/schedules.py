"""Learning-rate schedules as pure functions of the update number, plus a small stateful wrapper.

The position in a schedule is usually the number of updates done; a run whose schedule spans a time budget
(``trainer.schedule_span=budget``) passes a fractional position instead (see :class:`Scheduler`).

- ``polynomial``: linear warmup from 0 to ``lr`` over ``warmup_updates``, then polynomial decay (power 1 =
  linear) to ``end_lr`` at ``total_updates`` (fairseq ``polynomial_decay``; BASE pretraining: 32k of 400k).
- ``tri_stage``: warmup from ``init_lr_scale·lr`` to ``lr`` (linear), hold, then exponential decay to
  ``final_lr_scale·lr`` (fairseq ``tri_stage``; fine-tuning: 10% / 40% / 50%, 0.01 and 0.05).
- ``constant``: ``lr`` after an optional linear warmup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass
class ScheduleConfig:
    """LR schedule settings (names from fairseq)."""

    kind: Literal["polynomial", "tri_stage", "constant"] = "polynomial"
    warmup_updates: int = 32_000
    end_lr: float = 0.0
    power: float = 1.0
    # tri-stage phases as fractions of the total updates (used when kind == "tri_stage")
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05


def polynomial_lr(step: float, lr: float, total: int, warmup: int, end_lr: float = 0.0, power: float = 1.0) -> float:
    if warmup > 0 and step < warmup:
        return lr * max(step, 1) / warmup  # as fairseq: the first update uses lr / warmup, not 0
    if step >= total:
        return end_lr
    remaining = 1.0 - (step - warmup) / max(total - warmup, 1)
    return (lr - end_lr) * remaining**power + end_lr


def tri_stage_lr(step: float, lr: float, total: int, phase_ratio: tuple[float, float, float],
                 init_lr_scale: float, final_lr_scale: float) -> float:
    if abs(sum(phase_ratio) - 1.0) > 1e-6:
        raise ValueError(f"tri-stage phase_ratio must sum to 1, got {phase_ratio}")
    warmup = int(total * phase_ratio[0])
    hold = int(total * phase_ratio[1])
    decay = max(total - warmup - hold, 1)
    init_lr = init_lr_scale * lr
    if step < warmup:
        return init_lr + (lr - init_lr) * step / max(warmup, 1)
    if step < warmup + hold:
        return lr
    t = min(step - warmup - hold, decay)
    return lr * math.exp(math.log(final_lr_scale) * t / decay)


def constant_lr(step: float, lr: float, warmup: int) -> float:
    return lr * max(step, 1) / warmup if warmup > 0 and step < warmup else lr


def lr_at(cfg: ScheduleConfig, step: float, lr: float, total: int) -> float:
    """The learning rate for update ``step`` (0-based) of ``total``; a fractional ``step`` lies between two."""
    if cfg.kind == "polynomial":
        return polynomial_lr(step, lr, total, cfg.warmup_updates, cfg.end_lr, cfg.power)
    if cfg.kind == "tri_stage":
        return tri_stage_lr(step, lr, total, tuple(cfg.phase_ratio), cfg.init_lr_scale, cfg.final_lr_scale)
    if cfg.kind == "constant":
        return constant_lr(step, lr, cfg.warmup_updates)
    raise ValueError(f"unknown schedule kind {cfg.kind!r}; choose polynomial, tri_stage or constant")


class Scheduler:
    """Sets ``optimizer``'s learning rate from :func:`lr_at` before every update.

    ``position`` is where the run is in the schedule: the number of updates done, or, when the trainer's
    schedule spans a time budget, the larger of that and the budget's spent share times ``total`` (passed to
    :meth:`step`), so the schedule ends when either runs out. It is saved, so a resumed run starts where the
    interrupted one stopped (a larger budget on resume moves it back to the new budget's share)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr: float, total: int) -> None:
        self.optimizer, self.cfg, self.lr, self.total = optimizer, cfg, lr, total
        self.step_num = 0
        self.position = 0.0
        self.apply()

    def apply(self) -> float:
        value = lr_at(self.cfg, self.position, self.lr, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = value * group.get("lr_scale", 1.0)
        return value

    def step(self, position: float | None = None) -> float:
        """One more update done; ``position`` (if given) moves the schedule at least that far."""
        self.step_num += 1
        self.position = max(float(self.step_num), position if position is not None else 0.0)
        return self.apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step_num": self.step_num, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_num = int(state["step_num"])
        self.position = float(state.get("position", self.step_num))  # checkpoints from before budget spans
        self.apply()
