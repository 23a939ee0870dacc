from __future__ import annotations

import pytest
import torch

from speechcl.models.masking import compute_channel_mask, compute_span_mask


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_masked_fraction_about_49_percent():
    """(0.65, 10) masks ≈49% of an utterance; equalising counts across a batch (fairseq's
    require_same_masks keeps the smallest count) lowers the batch average a little."""
    single = [compute_span_mask((1, 499), 0.65, 10, min_masks=2, generator=gen(s)).float().mean().item()
              for s in range(300)]
    assert 0.47 < sum(single) / len(single) < 0.51
    batched = [compute_span_mask((8, 499), 0.65, 10, min_masks=2, generator=gen(s)).float().mean().item()
               for s in range(100)]
    assert 0.42 < sum(batched) / len(batched) < 0.49


def test_same_count_per_row_and_padding_never_masked():
    lengths = torch.tensor([499, 300, 120, 60])
    for seed in range(20):
        mask = compute_span_mask((4, 499), 0.65, 10, lengths=lengths, min_masks=2, generator=gen(seed))
        counts = mask.sum(1)
        assert bool((counts == counts[0]).all()) and int(counts[0]) > 0
        pos = torch.arange(499)[None, :]
        assert not bool((mask & (pos >= lengths[:, None])).any())


def test_unequal_counts_when_not_required():
    lengths = torch.tensor([499, 60])
    mask = compute_span_mask((2, 499), 0.65, 10, lengths=lengths, require_same_masks=False, generator=gen(0))
    assert int(mask[0].sum()) > int(mask[1].sum())


def test_spans_are_contiguous_runs_of_span_length():
    # with one span and no overlap possible, the mask is exactly one run of `mask_length`
    mask = compute_span_mask((16, 200), 0.0, 7, min_masks=1, generator=gen(3))
    assert bool((mask.sum(1) == 7).all())
    diffs = mask.int().diff(dim=1)
    assert bool(((diffs == 1).sum(1) <= 1).all())


def test_min_masks_and_short_utterances():
    mask = compute_span_mask((3, 50), 0.0, 10, lengths=torch.tensor([50, 12, 11]), min_masks=2,
                             require_same_masks=False, generator=gen(1))
    assert bool((mask.sum(1) >= 2).all())
    assert not bool(mask[2, 11:].any())


def test_seeded_and_device_local():
    a = compute_span_mask((4, 300), 0.65, 10, min_masks=2, generator=gen(42))
    b = compute_span_mask((4, 300), 0.65, 10, min_masks=2, generator=gen(42))
    c = compute_span_mask((4, 300), 0.65, 10, min_masks=2, generator=gen(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.bool and a.device.type == "cpu"


def test_channel_mask_shape():
    mask = compute_channel_mask(5, 768, 0.5, 64, generator=gen(0))
    assert mask.shape == (5, 768)
    assert 0.1 < mask.float().mean().item() < 0.6


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask_length"):
        compute_span_mask((2, 10), 0.5, 0)
    with pytest.raises(ValueError, match="lengths"):
        compute_span_mask((2, 10), 0.5, 2, lengths=torch.tensor([11, 3]))
