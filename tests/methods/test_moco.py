"""MoCo's method state: the queue (FIFO, wrap-around, fill, age), the momentum encoder, keys without gradient,
no enqueue in validation, and the DDP enqueue order (gather_rows replaced by an in-process all-gather)."""

from __future__ import annotations

import pytest
import torch

import speechcl
from speechcl.methods import moco as moco_module
from speechcl.methods.moco import MoCo, MoCoConfig, random_segments
from speechcl.objectives.moco import moco_loss
from speechcl.training.pretrain import MethodTask
from speechcl.training.trainer import CollapseError
from tests.methods.helpers import after_update_on_ranks, in_process_all_gather, random_batch, seeded

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**cfg: object) -> MoCo:
    torch.manual_seed(0)
    return MoCo(speechcl.preset("tiny"), MoCoConfig(**({"queue_size": 8} | cfg)))


def test_queue_is_fifo_and_wraps_around() -> None:
    model = _model(queue_size=5)
    keys = torch.randn(8, 128, generator=seeded(0))
    model.enqueue(keys[:3], torch.tensor([10, 11, 12]), num_updates=1)
    assert int(model.queue_ptr) == 3 and int(model.queue_fill) == 3
    assert model.queue_ids.tolist() == [10, 11, 12, -1, -1]
    model.enqueue(keys[3:7], torch.tensor([13, 14, 15, 16]), num_updates=2)  # wraps: 13, 14 at 3, 4; 15, 16 at 0, 1
    assert model.queue_ids.tolist() == [15, 16, 12, 13, 14]
    assert model.queue_step.tolist() == [2, 2, 1, 2, 2]
    assert int(model.queue_ptr) == 2 and int(model.queue_fill) == 5
    assert torch.equal(model.queue[0], keys[5]) and torch.equal(model.queue[2], keys[2])
    model.enqueue(torch.randn(7, 128), torch.arange(20, 27), num_updates=3)  # more than K: the newest 5 stay
    assert sorted(model.queue_ids.tolist()) == [22, 23, 24, 25, 26]
    assert model.queue_ids.tolist() == [23, 24, 25, 26, 22] and int(model.queue_ptr) == 4  # as written one by one


def test_momentum_update_formula() -> None:
    model = _model(momentum=0.9)
    with torch.no_grad():
        for p in list(model.encoder.parameters()) + list(model.head.parameters()):
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.key_encoder.parameters()] + [p.clone() for p in model.key_head.parameters()]
    online = list(model.encoder.parameters()) + list(model.head.parameters())
    model.after_update(1)
    after = list(model.key_encoder.parameters()) + list(model.key_head.parameters())
    for t0, s, t1 in zip(before, online, after, strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
    assert model.momentum == 0.9


def test_momentum_schedule() -> None:
    model = _model(momentum=0.99, momentum_end=1.0, momentum_schedule="cosine", momentum_updates=10)
    assert model.momentum_at(0) == pytest.approx(0.99)
    assert model.momentum_at(5) == pytest.approx(0.995)
    assert model.momentum_at(10) == pytest.approx(1.0)


def test_heads_and_temperatures_of_the_versions() -> None:
    v1, v2 = _model(version=1), _model()
    assert isinstance(v1.head, torch.nn.Linear) and v1.temperature == 0.07
    assert len([m for m in v2.head.modules() if isinstance(m, torch.nn.Linear)]) == 2 and v2.temperature == 0.2
    assert _model(temperature=0.5).temperature == 0.5
    with pytest.raises(ValueError, match="objective.version"):
        MoCoConfig(version=3)


def test_keys_carry_no_gradient_and_ignore_dropout() -> None:
    model = _model().train()
    assert not model.key_encoder.training and model.encoder.training
    batch = random_batch([0, 1, 2], seed=1)
    model.enqueue(torch.nn.functional.normalize(torch.randn(4, 128), dim=-1), torch.tensor([7, 8, 9, 10]), 0)
    out = model(batch, seeded(5))
    out.loss.backward()
    assert all(p.grad is None for p in model.key_encoder.parameters())
    assert all(p.grad is None for p in model.key_head.parameters())
    assert model.head.net[0].weight.grad is not None and model.encoder.post_extract_proj.weight.grad is not None
    keys, _ = model._stash[0]
    assert not keys.requires_grad
    wave = batch["source"][:, :16000]
    torch.testing.assert_close(model._key(wave, None), model._key(wave, None), rtol=0, atol=0)  # eval: no dropout


def test_micro_batches_see_the_queue_before_the_update_and_enqueue_after() -> None:
    model = _model().train()
    model.set_num_updates(0)
    first = model(random_batch([0, 1, 2], seed=1), seeded(1))
    second = model(random_batch([3, 4], seed=2), seeded(2))
    assert first.stats["negatives_sum"] == 0 and second.stats["negatives_sum"] == 0  # queue still empty
    assert int(model.queue_fill) == 0
    model.after_update(1)
    assert model.queue_ids.tolist()[:5] == [0, 1, 2, 3, 4] and int(model.queue_fill) == 5
    model.set_num_updates(3)
    out = model(random_batch([5, 6], seed=3), seeded(3))
    assert out.stats["negatives_sum"] == 2 * 5
    assert out.stats["staleness_sum"] == pytest.approx(2.0)  # enqueued after update 1, now 3 done
    assert model.summarize(out.stats)["queue_fill"] == pytest.approx(5 / 8)


def test_the_queued_keys_are_the_key_encoders() -> None:
    model = _model().train()
    batch = random_batch([0, 1], seed=4)
    g = seeded(9)
    model(batch, g)
    g = seeded(9)
    random_segments(batch["source"], None, 16000, g)  # view 0
    view1, mask1 = random_segments(batch["source"], None, 16000, g)
    model.after_update(1)  # momentum update: the key encoder moves only by (1 - m) × 0 (same weights)
    torch.testing.assert_close(model.queue[:2], model._key(view1, mask1))


def test_negatives_exclude_empty_slots_and_the_querys_own_item() -> None:
    model = _model().train()
    model.enqueue(torch.nn.functional.normalize(torch.randn(3, 128), dim=-1), torch.tensor([1, 5, 6]), 0)
    batch = random_batch([0, 1], seed=6)
    out = model(batch, seeded(2))
    assert out.stats["negatives_sum"] == 3 + 2  # item 1 does not see its own queued key
    assert out.stats["chance_sum"] == pytest.approx(1 / 4 + 1 / 3)
    model.method_cfg.exclude_same_item = False
    assert model(batch, seeded(2)).stats["negatives_sum"] == 6


def test_loss_is_the_objective_of_the_query_and_key() -> None:
    model = _model().eval()
    model.enqueue(torch.nn.functional.normalize(torch.randn(4, 128), dim=-1), torch.tensor([7, 8, 9, 10]), 0)
    batch = random_batch([0, 1, 2], seed=7)
    out = model(batch, seeded(3))
    g = seeded(3)
    v0, m0 = random_segments(batch["source"], None, 16000, g)
    v1, m1 = random_segments(batch["source"], None, 16000, g)
    expected = moco_loss(model._query(v0, m0, g), model._key(v1, m1), model.queue[:4], 0.2)
    torch.testing.assert_close(out.loss, expected.loss)
    sym = _model(symmetric=True).eval()
    assert sym(batch, seeded(3)).sample_size == 6


def test_validation_does_not_enqueue() -> None:
    model = _model().eval()
    model(random_batch([0, 1, 2], seed=1), seeded(1))
    model.after_update(1)
    assert int(model.queue_fill) == 0 and model.queue_ids.tolist() == [-1] * 8


def test_a_skipped_update_drops_its_keys() -> None:
    model = _model().train()
    model.set_num_updates(0)
    model(random_batch([0, 1, 2], seed=1), seeded(1))  # this update turns out non-finite: no after_update
    model.set_num_updates(0)
    model(random_batch([3], seed=2), seeded(2))
    model.after_update(1)
    assert model.queue_ids.tolist()[:2] == [3, -1]


def test_a_stand_in_batch_enqueues_nothing() -> None:
    model = _model().train()
    model(random_batch([0, 1], seed=1) | {"stand_in": True}, seeded(1))
    assert len(model._stash) == 1 and model._stash[0][0].shape[0] == 0
    model.after_update(1)
    assert int(model.queue_fill) == 0


def test_random_segments() -> None:
    wave = torch.arange(2 * 100, dtype=torch.float32).reshape(2, 100)
    pad = torch.zeros(2, 100, dtype=torch.bool)
    pad[1, 30:] = True
    out, mask = random_segments(wave, pad, 40, seeded(0))
    assert out.shape == (2, 40)
    start = int(out[0, 0])
    assert torch.equal(out[0], wave[0, start:start + 40]) and 0 <= start <= 60
    assert torch.equal(out[1, :30], wave[1, :30]) and bool(mask[1, 30:].all()) and not bool(mask[1, :30].any())
    assert float(out[1, 30:].abs().sum()) == 0.0 and not bool(mask[0].any())
    again, _ = random_segments(wave, pad, 40, seeded(0))
    assert torch.equal(out, again)
    starts = {int(random_segments(wave[:1], None, 40, seeded(s))[0][0, 0]) for s in range(200)}
    assert min(starts) == 0 and max(starts) == 60  # every start is reachable


@pytest.mark.parametrize("world,freq", [(2, 1), (2, 2)])
def test_ddp_enqueue_equals_one_process_with_update_freq(monkeypatch: pytest.MonkeyPatch, world: int,
                                                         freq: int) -> None:
    # global batch j of an update = micro-batch j of one process with update_freq = world·freq; under DDP it is
    # micro-batch j // world of rank j % world (the trainer's position · world + rank)
    batches = [random_batch([10 * j, 10 * j + 1, 10 * j + 2][: 2 + j % 2], seed=j) for j in range(world * freq)]
    single = _model(queue_size=16).train()
    for j, batch in enumerate(batches):
        single(batch, seeded(j))
    single.after_update(1)

    local, gather = in_process_all_gather(world)
    monkeypatch.setattr(moco_module, "gather_rows", gather)
    ranks = [_model(queue_size=16).train() for _ in range(world)]
    for rank, model in enumerate(ranks):
        for f in range(freq):
            j = f * world + rank
            model(batches[j], seeded(j))

    after_update_on_ranks(ranks, local, 1)
    for model in ranks:
        for name in ("queue", "queue_ids", "queue_step", "queue_ptr", "queue_fill"):
            torch.testing.assert_close(getattr(model, name), getattr(single, name), rtol=0, atol=1e-6, msg=name)
    assert int(single.queue_fill) == sum(b["id"].numel() for b in batches)


def test_collapse_guard_stops_the_run() -> None:
    model = _model()
    task = MethodTask(model)
    summary = {"z_std": 0.001, "accuracy": 0.15, "chance": 0.1, "queue_fill": 1.0}
    assert task.check(summary, 199) == []
    with pytest.raises(CollapseError, match="z_std"):
        task.check(summary, 200)
    assert task.check(summary | {"z_std": 0.08}, 500) == []
    assert task.check(summary | {"z_std": float("nan")}, 500) == []
    assert task.check(summary | {"accuracy": 0.5}, 500) == []  # a narrow cone that still ranks its keys first
    assert task.check(summary | {"z_std": 0.08, "accuracy": 0.15}, 1000)  # near chance: a warning


def test_in_batch_accuracy_counts_own_key_first_among_the_batch_keys() -> None:
    from speechcl.methods.moco import in_batch_stats

    q = torch.nn.functional.normalize(torch.randn(2 * 5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    same = in_batch_stats(q, q, blocks=2)  # every query's own key is itself: all first
    assert same == {"batch_correct": 10.0, "batch_chance_sum": 2.0, "batch_queries": 10.0}
    shifted = torch.cat([q[:5].roll(1, 0), q[5:].roll(1, 0)])  # each query's key is another query's vector
    assert in_batch_stats(q, shifted, blocks=2)["batch_correct"] == 0.0
    # blocks (the symmetric loss's two directions) are scored apart: with both blocks the same vectors, a
    # query of block 2 would tie with block 1's copy of its key (argmax takes the first) if they were mixed
    twice = torch.cat([q[:5], q[:5]])
    assert in_batch_stats(twice, twice, blocks=2)["batch_correct"] == 10.0
    assert in_batch_stats(twice, twice, blocks=1)["batch_correct"] == 5.0
    assert in_batch_stats(q[:1], q[:1]) == {}
