"""PIRL's method state and views: the temporal jigsaw, the memory bank (momentum write and renormalisation,
deferred to after the step, in micro-batch order, never in validation), ids outside the bank, the NCE
normaliser, the collapse guard, the augment transform, and the DDP write order (gather_rows replaced by an
in-process all-gather)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import speechcl
from speechcl.audio.augment import Augmenter
from speechcl.methods import pirl as pirl_module
from speechcl.methods.pirl import PIRL, PIRLConfig, jigsaw, unjigsaw, update_bank_
from speechcl.training.pretrain import MethodTask
from speechcl.training.trainer import CollapseError
from tests.methods.helpers import after_update_on_ranks, in_process_all_gather, random_batch, seeded

pytestmark = pytest.mark.usefixtures("one_thread")

NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "dropout_input": 0.0, "dropout_features": 0.0}


def _model(**cfg: object) -> PIRL:
    torch.manual_seed(0)
    values = {"bank_size": 40, "num_negatives": 16, "crop_seconds": 1.0} | cfg
    return PIRL(speechcl.preset("tiny", **NO_DROPOUT), PIRLConfig(**values))


def test_jigsaw_permutes_chunks_and_the_inverse_restores_the_signal() -> None:
    wave = torch.arange(3 * 24, dtype=torch.float32).reshape(3, 24)
    shuffled, perm = jigsaw(wave, 4, seeded(0))
    assert shuffled.shape == wave.shape and perm.shape == (3, 4)
    for b in range(3):
        assert sorted(perm[b].tolist()) == [0, 1, 2, 3]
        for j in range(4):
            k = int(perm[b, j])
            assert torch.equal(shuffled[b, 6 * j: 6 * j + 6], wave[b, 6 * k: 6 * k + 6])
    assert torch.equal(unjigsaw(shuffled, perm), wave)
    again, perm2 = jigsaw(wave, 4, seeded(0))
    assert torch.equal(again, shuffled) and torch.equal(perm2, perm)
    perms = {tuple(jigsaw(wave[:1], 4, seeded(s))[1][0].tolist()) for s in range(60)}
    assert len(perms) > 12  # uniform over 24 orders: most of them appear
    with pytest.raises(ValueError, match="multiple"):
        jigsaw(wave[:, :23], 4)


def test_bank_write_is_the_momentum_mix_renormalised() -> None:
    bank = F.normalize(torch.randn(5, 4, generator=seeded(1)), dim=-1)
    old = bank.clone()
    written = torch.full((5,), -1, dtype=torch.long)
    v = torch.randn(2, 4, generator=seeded(2)) * 3
    update_bank_(bank, written, torch.tensor([3, 1]), v, 0.5, step=7)
    for row, vec in ((3, v[0]), (1, v[1])):
        mix = 0.5 * old[row] + 0.5 * vec / vec.norm()
        torch.testing.assert_close(bank[row], mix / mix.norm())
        assert float(bank[row].norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(bank[[0, 2, 4]], old[[0, 2, 4]])
    assert written.tolist() == [-1, 7, -1, 7, -1]


def test_bank_writes_a_repeated_id_in_order() -> None:
    bank = F.normalize(torch.randn(4, 3, generator=seeded(3)), dim=-1)
    step_by_step = bank.clone()
    written = torch.full((4,), -1, dtype=torch.long)
    ids, v = torch.tensor([2, 0, 2, 1]), torch.randn(4, 3, generator=seeded(4))
    update_bank_(bank, written, ids, v, 0.5, step=1)
    for i in range(4):
        update_bank_(step_by_step, torch.zeros(4, dtype=torch.long), ids[i:i + 1], v[i:i + 1], 0.5, step=1)
    torch.testing.assert_close(bank, step_by_step, rtol=0, atol=1e-7)


def test_training_writes_the_bank_only_after_the_update() -> None:
    model = _model().train()
    before = model.bank.clone()
    model.set_num_updates(0)
    batch = random_batch([4, 9, 30], seed=1)
    out = model(batch, seeded(1))
    assert out.sample_size == 3 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.equal(model.bank, before)  # read during the step, written after it
    model(random_batch([5, 6], seed=2), seeded(2))  # a second micro-batch sees the same bank
    assert torch.equal(model.bank, before)
    # the f(v_I) of the first micro-batch, recomputed (same crop from the same generator, no dropout)
    g = seeded(1)
    with torch.no_grad():
        f = model.f_head(model._pooled(model._crop(batch["source"], None, g), None, g))
    model.after_update(1)
    for b, row in enumerate([4, 9, 30]):
        mix = 0.5 * before[row] + 0.5 * F.normalize(f[b], dim=-1)
        torch.testing.assert_close(model.bank[row], mix / mix.norm(), rtol=0, atol=1e-5)
    changed = sorted((model.bank != before).any(1).nonzero().flatten().tolist())
    assert changed == [4, 5, 6, 9, 30]
    assert sorted((model.bank_written == 1).nonzero().flatten().tolist()) == [4, 5, 6, 9, 30]
    assert int((model.bank_written == -1).sum()) == 35


def test_the_positive_is_the_items_own_bank_row() -> None:
    model = _model(bank_momentum=0.0).train()  # m_I ← f(v_I): the bank then holds exactly f
    batch = random_batch([2, 11, 17], seed=3)
    model.set_num_updates(0)
    with torch.no_grad():
        model(batch, seeded(5))
    model.after_update(1)
    model.set_num_updates(1)
    with torch.no_grad():
        out = model(batch, seeded(5))  # the same crop: f(v_I) = m_I
    summary = model.summarize(out.stats)
    assert summary["pos_sim_f"] == pytest.approx(1.0, abs=1e-5)
    assert summary["accuracy_f"] == 1.0
    assert summary["bank_staleness"] == 0.0 and summary["bank_coverage"] == pytest.approx(3 / 40)
    model.bank[[2, 11, 17]] *= -1  # the anchors now point away from f(v_I)
    with torch.no_grad():
        flipped = model.summarize(model(batch, seeded(5)).stats)
    assert flipped["pos_sim_f"] == pytest.approx(-1.0, abs=1e-5) and flipped["accuracy_f"] == 0.0


def test_validation_does_not_write_the_bank_nor_need_a_row() -> None:
    model = _model().eval()
    before = model.bank.clone()
    with torch.no_grad():
        out = model(random_batch([0, 39, 1000], seed=4), seeded(4))  # validation ids index another set: no check
    model.after_update(1)
    assert torch.equal(model.bank, before) and int((model.bank_written >= 0).sum()) == 0
    assert not model._stash and float(model.nce_norm) == 0.0
    summary = model.summarize(out.stats)
    assert "loss_f" not in summary and math.isfinite(summary["loss"])
    distinct = 39 * (1 - (1 - 1 / 39) ** 16)  # expected distinct rows among 16 draws from the 39 others
    assert summary["chance"] == pytest.approx(1 / (1 + distinct))
    assert _model(bank_size=2).chance == 0.5 and _model(bank_size=10_000, num_negatives=4).chance == pytest.approx(
        1 / 5, rel=1e-3)


def test_ids_outside_the_bank_are_refused_in_training() -> None:
    model = _model().train()
    with pytest.raises(ValueError, match="bank_size=40"):
        model(random_batch([3, 40], seed=1), seeded(1))
    with pytest.raises(ValueError, match="bank_size=0"):
        _model(bank_size=0)


def test_the_nce_normaliser_is_fixed_by_the_first_training_batch() -> None:
    model = _model().train()
    model(random_batch([0, 1], seed=1), seeded(1))
    first = float(model.nce_norm)
    assert first > 0
    model(random_batch([2, 3], seed=2), seeded(2))
    assert float(model.nce_norm) == first
    assert "nce_norm" in dict(model.named_buffers())


def test_a_skipped_update_and_a_stand_in_write_nothing() -> None:
    model = _model().train()
    model.set_num_updates(0)
    model(random_batch([0, 1], seed=1), seeded(1))  # non-finite update: no after_update
    model.set_num_updates(0)
    assert not model._stash
    model(random_batch([2, 3], seed=1) | {"stand_in": True}, seeded(1))
    assert len(model._stash) == 1 and model._stash[0][0].shape[0] == 0
    model.after_update(1)
    assert int((model.bank_written >= 0).sum()) == 0


def test_a_crop_too_short_for_the_chunks_is_refused() -> None:
    model = _model(num_chunks=9).train()
    with pytest.raises(ValueError, match="receptive field"):
        model(random_batch([0, 1], seed=1, samples=3000), seeded(1))


def test_mean_pooled_jigsaw_and_augment_transform() -> None:
    mean = _model(jigsaw_pool="mean").train()
    assert mean.g_head.in_features == 128 and not mean.uses_augment
    assert torch.isfinite(mean(random_batch([0, 1], seed=1), seeded(1)).loss)
    aug = _model(transform="augment").train()
    assert aug.uses_augment and not hasattr(aug, "chunk_head")
    with pytest.raises(ValueError, match="augment"):
        aug(random_batch([0, 1], seed=1), seeded(1))
    chain = Augmenter([{"name": "gain", "db": [-6, 6]}, {"name": "noise", "snr_db": [5, 20]}])
    out = aug(random_batch([0, 1, 2], seed=1), seeded(1), chain)
    assert torch.isfinite(out.loss) and out.sample_size == 3


@pytest.mark.parametrize("world,freq", [(2, 1), (2, 2)])
def test_ddp_bank_writes_equal_one_process_with_update_freq(monkeypatch: pytest.MonkeyPatch, world: int,
                                                            freq: int) -> None:
    # global batch j of an update is micro-batch j of one process with update_freq = world·freq, and micro-batch
    # j // world of rank j % world under DDP; item 7 appears in every micro-batch (an epoch boundary)
    batches = [random_batch([7, 10 + j, 20 + j][: 2 + j % 2], seed=j) for j in range(world * freq)]
    single = _model().train()
    single.set_num_updates(0)
    for j, batch in enumerate(batches):
        single(batch, seeded(j))
    single.after_update(1)

    local, gather = in_process_all_gather(world)
    monkeypatch.setattr(pirl_module, "gather_rows", gather)
    ranks = [_model().train() for _ in range(world)]
    for rank, model in enumerate(ranks):
        model.set_num_updates(0)
        for k in range(freq):
            j = k * world + rank
            model(batches[j], seeded(j))

    after_update_on_ranks(ranks, local, 1)
    for model in ranks:
        torch.testing.assert_close(model.bank, single.bank, rtol=0, atol=1e-6)
        assert torch.equal(model.bank_written, single.bank_written)
    assert int((single.bank_written == 1).sum()) == 1 + sum(b["id"].numel() - 1 for b in batches)


def test_collapse_guard_stops_the_run() -> None:
    model = _model()
    task = MethodTask(model)
    summary = {"z_std": 0.001, "z_std_t": 0.08, "accuracy": 0.1, "accuracy_f": 0.0, "chance": 1 / 17}
    assert task.check(summary, 199) == []
    # a narrow cone whose views still find their own bank row (either view above 2x chance) trains on
    assert task.check(summary | {"accuracy": 0.2}, 300) == []
    assert task.check(summary | {"accuracy_f": 0.2}, 300) == []
    with pytest.raises(CollapseError, match="embedding std"):
        task.check(summary, 200)
    with pytest.raises(CollapseError, match="embedding std"):
        task.check(summary | {"z_std": 0.08, "z_std_t": 0.002}, 300)
    assert task.check(summary | {"z_std": 0.08}, 500) == []
    assert task.check({"accuracy": 0.5, "chance": 0.1}, 500) == []  # no z_std logged: no verdict
    assert task.check(summary | {"z_std": 0.08, "accuracy": 0.06}, 1000)  # near chance: a warning
