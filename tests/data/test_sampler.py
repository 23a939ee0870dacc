import numpy as np
import pytest

from speechcl.data.sampler import BucketBatchSampler, batch_by_size, divisible_batches, shard_batches


def _sizes(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(16_000, 250_000, size=n)
    sizes[: n // 5] = 250_000  # cropped items share a length, as in pretraining
    return sizes


def _check_cover(batches, n):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))


@pytest.mark.parametrize("max_batch_size", [None, 3])
def test_batch_by_size_bounds_and_cover(max_batch_size):
    sizes = _sizes()
    batches = batch_by_size(sizes, 1_000_000, max_batch_size=max_batch_size, seed=1, epoch=0)
    _check_cover(batches, len(sizes))
    for b in batches:
        assert len(b) * sizes[b].max() <= 1_000_000
        assert max_batch_size is None or len(b) <= max_batch_size
    assert batches == batch_by_size(sizes, 1_000_000, max_batch_size=max_batch_size, seed=1, epoch=0)
    assert batches != batch_by_size(sizes, 1_000_000, max_batch_size=max_batch_size, seed=1, epoch=1)
    ordered = batch_by_size(sizes, 1_000_000, seed=None)
    assert [max(sizes[b]) for b in ordered] == sorted(max(sizes[b]) for b in ordered)


def test_oversized_item_is_rejected():
    with pytest.raises(ValueError, match="item 1 has 300 samples > max_tokens=200"):
        batch_by_size([100, 300, 50], 200)
    with pytest.raises(ValueError, match="max_tokens"):
        BucketBatchSampler([100, 300], 200)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_ranks_share_every_item_once(world_size):
    sizes = _sizes(301, seed=world_size)
    for epoch in range(2):
        per_rank = []
        for rank in range(world_size):
            sampler = BucketBatchSampler(sizes, 700_000, seed=5, rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
            assert len(per_rank[-1]) == len(sampler)
        assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank
        _check_cover([b for batches in per_rank for b in batches], len(sizes))
        for batches in per_rank:
            for b in batches:
                assert len(b) * sizes[b].max() <= 700_000


def test_divisible_batches_split_or_drop():
    batches = [[0, 1, 2, 3], [4], [5, 6]]
    out = divisible_batches(batches, 2)
    assert out == [[0, 1], [2, 3], [4], [5, 6]]
    assert shard_batches(out, 1, 2) == [[2, 3], [5, 6]]
    with pytest.warns(UserWarning, match="dropping the last 1"):
        assert divisible_batches([[0], [1], [2]], 2) == [[0], [1]]
    with pytest.raises(ValueError, match="evenly"):
        shard_batches([[0]], 0, 2)


def test_resume_mid_epoch_yields_the_rest_exactly():
    sizes = _sizes(200)
    full = BucketBatchSampler(sizes, 800_000, seed=3, rank=1, world_size=2)
    full.set_epoch(4)
    expected = list(full)
    interrupted = BucketBatchSampler(sizes, 800_000, seed=3, rank=1, world_size=2)
    interrupted.set_epoch(4)
    head = []
    for batch in interrupted:
        head.append(batch)
        if len(head) == 7:
            break
    state = interrupted.state_dict()
    assert state["epoch"] == 4 and state["position"] == 7
    resumed = BucketBatchSampler(sizes, 800_000, seed=3, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the training loop calling set_epoch for the current epoch keeps the position
    assert head + list(resumed) == expected
    resumed.set_epoch(5)
    assert resumed.state_dict()["position"] == 0 and len(list(resumed)) == len(resumed)


def test_state_mismatch_is_refused():
    sampler = BucketBatchSampler(_sizes(50), 800_000, seed=3)
    other = BucketBatchSampler(_sizes(50), 800_000, seed=4)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="ranks"):
        BucketBatchSampler([1, 2], 10, rank=0, world_size=3)
    shards_state = {"format": "shards", "epoch": 0, "position": 0}  # a data.format=shards run's loader state
    with pytest.raises(ValueError, match="data.format=shards"):
        sampler.load_state_dict(shards_state)
