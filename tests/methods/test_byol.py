"""objective=byol: the symmetric loss against a hand computation, the EMA target network and its schedules, targets
without gradient, the views (one crop for BYOL-A), BatchNorm with one item, and the collapse guard (the CLI /
resume / load side is tests/methods/test_contract.py)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import speechcl
from speechcl.methods import METHODS, build_method
from speechcl.methods.byol import BYOL, BatchNorm, BYOLConfig
from speechcl.objectives.byol import byol_loss, symmetric_byol_loss
from speechcl.training.pretrain import MethodTask
from speechcl.training.trainer import CollapseError
from tests.methods.helpers import random_batch, seeded

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = Path(__file__).resolve().parents[2] / "conf" / "objective" / "byol.yaml"


def test_registered_with_the_yaml_defaults() -> None:
    assert METHODS["byol"] is BYOL
    yaml = OmegaConf.to_container(OmegaConf.load(CONF))
    assert yaml == {"name": "byol", **dataclasses.asdict(BYOL.Config())}


def _model(**settings: object) -> BYOL:
    torch.manual_seed(0)
    return build_method(speechcl.preset("tiny"), {"name": "byol", "proj_hidden": 32, "proj_dim": 16, **settings})


def _hand_pair_loss(p: torch.Tensor, z: torch.Tensor) -> float:
    total = 0.0
    for i in range(p.shape[0]):
        pn = [float(v) / math.sqrt(sum(float(u) ** 2 for u in p[i])) for v in p[i]]
        zn = [float(v) / math.sqrt(sum(float(u) ** 2 for u in z[i])) for v in z[i]]
        total += sum((a - b) ** 2 for a, b in zip(pn, zn))  # ‖p̂ − ẑ‖², BYOL eq. 2
    return total


def test_symmetric_loss_matches_a_hand_computation() -> None:
    g = seeded(0)
    p0, p1, z0, z1 = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(4))
    p0.requires_grad_(True)
    z1.requires_grad_(True)
    loss = symmetric_byol_loss(p0, p1, z0, z1)
    expected = _hand_pair_loss(p0.detach(), z1.detach()) + _hand_pair_loss(p1, z0)  # view 0 -> 1, view 1 -> 0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    assert float(byol_loss(p0.detach(), 2.5 * p0.detach())) == pytest.approx(0.0, abs=1e-12)  # same direction: 0
    assert float(byol_loss(p0.detach(), -p0.detach())) == pytest.approx(4.0 * 3, rel=1e-12)  # opposite: 4 per pair
    loss.backward()
    assert p0.grad is not None and z1.grad is None  # no gradient into the targets
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        byol_loss(torch.randn(3, 4), torch.randn(3, 5))


def test_ema_update_moves_the_target_encoder_and_projector() -> None:
    model = _model(ema_decay=0.9)
    with torch.no_grad():
        for p in list(model.encoder.parameters()) + list(model.projector.parameters()):
            p.add_(torch.randn_like(p))
    online = list(model.encoder.parameters()) + list(model.projector.parameters())
    before = [p.clone() for p in list(model.target_encoder.parameters()) + list(model.target_projector.parameters())]
    model.after_update(1)
    after = list(model.target_encoder.parameters()) + list(model.target_projector.parameters())
    for t0, s, t1 in zip(before, online, after, strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
    assert model.summarize({})["ema_decay"] == 0.9
    assert not any("predictor" in name for name, _ in model.named_parameters() if name.startswith("target_"))


def test_decay_schedules() -> None:
    assert _model().decay_at(0) == _model().decay_at(10**6) == 0.99  # BYOL-A: constant
    byol = _model(ema_decay=0.996, ema_schedule="cosine", ema_updates=100)  # BYOL: 0.996 -> 1, cosine
    assert byol.decay_at(0) == pytest.approx(0.996)
    assert byol.decay_at(50) == pytest.approx(0.998)
    assert byol.decay_at(25) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert byol.decay_at(100) == byol.decay_at(500) == pytest.approx(1.0)
    byol.set_num_updates(50)
    assert byol.summarize({})["ema_decay"] == pytest.approx(0.998)
    with pytest.raises(ValueError, match="objective.ema_updates"):
        BYOLConfig(ema_schedule="cosine")
    with pytest.raises(ValueError, match="objective.head_norm"):
        BYOLConfig(head_norm="group")


def test_targets_carry_no_gradient_and_no_dropout() -> None:
    model = _model().train()
    assert not model.target_encoder.training and model.target_projector.training and model.encoder.training
    out = model(random_batch([0, 1, 2], seed=1), seeded(5))
    out.loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is None for p in model.target_projector.parameters())
    assert model.predictor[0].weight.grad is not None and model.encoder.post_extract_proj.weight.grad is not None
    wave = random_batch([0, 1], seed=2)["source"][:, :16000]
    torch.testing.assert_close(model.target(wave, None), model.target(wave, None), rtol=0, atol=0)


def test_loss_is_the_objective_of_the_views() -> None:
    model = _model().eval()
    batch = random_batch([0, 1, 2], seed=7, samples=24000)
    out = model(batch, seeded(3))
    (w0, m0), (w1, m1) = model.views(batch, seeded(3))
    assert torch.equal(w0, w1)  # BYOL-A: one segment; without augmentation the two views are the same
    (_, _, p0), (_, _, p1) = model.online(w0, m0), model.online(w1, m1)
    expected = symmetric_byol_loss(p0, p1, model.target(w0, m0), model.target(w1, m1)).detach()
    torch.testing.assert_close(out.loss.detach(), expected)
    assert out.sample_size == 3
    summary = model.summarize(out.stats)
    assert summary["loss"] == pytest.approx(float(expected) / 3)
    assert summary["cosine"] == pytest.approx(1 - float(expected) / 12, abs=1e-6)  # loss = Σ (2 − 2cos) over 6
    independent = _model(crop="independent").eval()
    (a, _), (b, _) = independent.views(batch, seeded(3))
    assert a.shape == (3, 16000) and not torch.equal(a, b)  # two 1 s segments of a 1.5 s utterance


def test_identical_views_warn_once() -> None:
    model = _model().train()
    out = model(random_batch([0, 1], seed=1), seeded(1))
    summary = model.summarize(out.stats)
    assert "identical" in model.check(summary, 10)[0]
    assert model.check(summary, 20) == []


def test_batch_norm_of_a_single_item_uses_the_running_statistics() -> None:
    norm = BatchNorm(3).train()
    norm.running_mean.fill_(1.0)
    norm.running_var.fill_(4.0)
    x = torch.tensor([[3.0, 1.0, -1.0]])
    torch.testing.assert_close(norm(x).detach(), (x - 1.0) / torch.sqrt(torch.tensor(4.0 + norm.eps)))
    assert norm.running_mean.tolist() == [1.0] * 3
    out = _model().train()(random_batch([4], seed=3), seeded(1))  # a one-item micro-batch trains
    assert math.isfinite(float(out.loss.detach())) and out.stats["std_count"] == 0.0


def test_collapse_guard_names_what_collapsed() -> None:
    model = _model()  # floor: 0.05 / sqrt(16) = 0.0125
    task = MethodTask(model)
    spread = {"loss": 0.1, "cosine": 0.97, "z_std": 0.2, "target_std": 0.2, "repr_std": 0.1, "ema_decay": 0.99}
    assert task.check(spread | {"target_std": 0.001}, 99) == []  # before collapse_after
    with pytest.raises(CollapseError, match="target network's projections collapsed: target_std"):
        task.check(spread | {"target_std": 0.001}, 100)
    with pytest.raises(CollapseError, match="online projections collapsed: z_std"):
        task.check(spread | {"z_std": 0.012}, 100)
    assert task.check(spread | {"z_std": 0.013}, 100) == []
    with pytest.raises(CollapseError, match="encoder's representations .* collapsed: repr_std"):
        task.check(spread | {"repr_std": 0.0062}, 100)  # floor 0.05 / sqrt(64): the tiny encoder's width
    assert task.check(spread | {"repr_std": 0.0063}, 100) == []
    assert task.check(spread | {"z_std": float("nan"), "target_std": float("nan")}, 500) == []
