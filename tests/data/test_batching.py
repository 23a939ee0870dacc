"""The one length-sorted packing rule: bounds hold, every item once, sorted order, seeded ties."""

from __future__ import annotations

import numpy as np
import pytest

from speechcl.data.batching import length_sorted_batches


@pytest.mark.parametrize("longest_first", [False, True])
@pytest.mark.parametrize("max_batch_size", [None, 3])
def test_bounds_cover_and_order(longest_first, max_batch_size):
    sizes = np.random.default_rng(0).integers(1, 100, size=200)
    batches = length_sorted_batches(sizes, 400, max_batch_size, longest_first=longest_first)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    for b in batches:
        assert len(b) * max(sizes[i] for i in b) <= 400
        assert max_batch_size is None or len(b) <= max_batch_size
    flat = [int(sizes[i]) for b in batches for i in b]
    assert flat == sorted(flat, reverse=longest_first)
    # greedy: the next batch's first item would not have fitted into the batch before it
    for prev, nxt in zip(batches, batches[1:]):
        grown = prev + nxt[:1]
        full = max_batch_size is not None and len(prev) == max_batch_size
        assert full or len(grown) * max(sizes[i] for i in grown) > 400


def test_ties_keep_index_order_or_follow_the_generator():
    sizes = [7, 3, 7, 3, 7, 3]
    assert length_sorted_batches(sizes, max_batch_size=3) == [[1, 3, 5], [0, 2, 4]]
    shuffled = length_sorted_batches(sizes, max_batch_size=1, rng=np.random.default_rng(5))
    assert [sizes[b[0]] for b in shuffled] == [3, 3, 3, 7, 7, 7]
    assert shuffled == length_sorted_batches(sizes, max_batch_size=1, rng=np.random.default_rng(5))
    assert [b[0] for b in shuffled] != [1, 3, 5, 0, 2, 4]


def test_an_item_over_the_budget_is_alone_and_bad_bounds_raise():
    assert length_sorted_batches([5, 50, 5], 20, longest_first=True) == [[1], [0, 2]]
    with pytest.raises(ValueError, match="max_tokens"):
        length_sorted_batches([1, 2], 0)
    with pytest.raises(ValueError, match="max_batch_size"):
        length_sorted_batches([1, 2], max_batch_size=0)
    with pytest.raises(ValueError, match="1-D"):
        length_sorted_batches([[1, 2]])
