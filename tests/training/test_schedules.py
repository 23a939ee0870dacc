"""Learning-rate schedules: fairseq's polynomial_decay and tri_stage values at their phase boundaries."""

from __future__ import annotations

import math

import pytest
import torch

from speechcl.training.schedules import ScheduleConfig, Scheduler, lr_at, polynomial_lr, tri_stage_lr

LR = 5e-4


def test_polynomial_warmup_then_linear_decay() -> None:
    total, warmup = 400_000, 32_000
    # fairseq: the first update already uses lr / warmup (never a wasted update at lr 0)
    assert polynomial_lr(0, LR, total, warmup) == pytest.approx(LR / warmup)
    assert polynomial_lr(1, LR, total, warmup) == pytest.approx(LR / warmup)
    assert polynomial_lr(warmup // 2, LR, total, warmup) == pytest.approx(LR / 2)
    assert polynomial_lr(warmup, LR, total, warmup) == pytest.approx(LR)
    middle = warmup + (total - warmup) // 2
    assert polynomial_lr(middle, LR, total, warmup) == pytest.approx(LR / 2)
    assert polynomial_lr(total, LR, total, warmup) == 0.0
    assert polynomial_lr(total + 10, LR, total, warmup, end_lr=1e-6) == 1e-6
    values = [polynomial_lr(s, LR, total, warmup) for s in range(0, total, 997)]
    peak = values.index(max(values))
    assert all(a <= b for a, b in zip(values[:peak], values[1: peak + 1]))  # rises, then
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))  # falls


def test_polynomial_power_and_end_lr() -> None:
    total, warmup, end = 100, 0, 1e-5
    assert polynomial_lr(0, LR, total, warmup, end) == pytest.approx(LR)  # no warmup: full lr at once
    assert polynomial_lr(50, LR, total, warmup, end, power=2.0) == pytest.approx((LR - end) * 0.25 + end)
    assert polynomial_lr(100, LR, total, warmup, end, power=2.0) == pytest.approx(end)


def test_tri_stage_phase_boundaries_and_end_value() -> None:
    total, phases = 1000, (0.1, 0.4, 0.5)  # fairseq fine-tuning: 10% warmup, 40% hold, 50% decay

    def lr(step: int) -> float:
        return tri_stage_lr(step, LR, total, phases, init_lr_scale=0.01, final_lr_scale=0.05)

    assert lr(0) == pytest.approx(0.01 * LR)  # warmup starts at init_lr_scale * lr
    assert lr(50) == pytest.approx(0.01 * LR + (LR - 0.01 * LR) * 0.5)  # linear warmup
    assert lr(100) == pytest.approx(LR)  # hold starts at update 10%
    assert lr(499) == pytest.approx(LR)  # ... and lasts until 50%
    assert lr(500) == pytest.approx(LR)  # exponential decay starts from the peak
    assert lr(750) == pytest.approx(LR * math.sqrt(0.05))  # halfway: geometric mean of peak and end
    assert lr(1000) == pytest.approx(0.05 * LR)  # end value final_lr_scale * lr
    assert lr(5000) == pytest.approx(0.05 * LR)  # and it stays there
    decay = [lr(s) for s in range(500, 1001)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    with pytest.raises(ValueError, match="sum to 1"):
        tri_stage_lr(0, LR, total, (0.1, 0.4, 0.4), 0.01, 0.05)


def test_constant_and_unknown_kind() -> None:
    cfg = ScheduleConfig(kind="constant", warmup_updates=10)
    assert lr_at(cfg, 5, LR, 100) == pytest.approx(LR / 2)
    assert lr_at(cfg, 50, LR, 100) == LR
    with pytest.raises(ValueError, match="unknown schedule kind"):
        lr_at(ScheduleConfig(kind="cosine"), 0, LR, 100)  # type: ignore[arg-type]


def test_scheduler_sets_optimizer_lr_and_resumes() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    cfg = ScheduleConfig(kind="polynomial", warmup_updates=4)
    scheduler = Scheduler(optimizer, cfg, LR, total=20)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(cfg, 0, LR, 20))
    for _ in range(6):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(cfg, 6, LR, 20))
    other = Scheduler(torch.optim.AdamW([param], lr=1.0), cfg, LR, total=20)
    other.load_state_dict(scheduler.state_dict())
    assert other.optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert other.step() == scheduler.step()
