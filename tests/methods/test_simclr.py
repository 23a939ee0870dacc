"""objective=simclr: crops inside the valid audio, padding, views from the augment chain, the one-item rule,
COLA's variant and the collapse guard (the CLI / resume / load side is tests/methods/test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch

import speechcl
from speechcl.audio.augment import Augmenter
from speechcl.methods import build_method, method_config
from speechcl.methods.simclr import SimCLR, draw_crops, take_crops

pytestmark = pytest.mark.usefixtures("one_thread")

CHAIN = {"transforms": [{"name": "gain", "p": 1.0, "db": [-6, 6]}, {"name": "noise", "p": 1.0, "snr_db": [5, 20]}],
         "seed": 0}


def _method(**settings: object) -> SimCLR:
    torch.manual_seed(0)
    return build_method(speechcl.preset("tiny"), {"name": "simclr", **settings})


def _batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    source = torch.zeros(len(lengths), width)
    mask = torch.ones(len(lengths), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = 0.1 * torch.randn(n, generator=g)
        mask[i, :n] = False
    return {"source": source, "padding_mask": mask, "id": torch.arange(len(lengths)) + 10,
            "epoch": torch.zeros(len(lengths), dtype=torch.long)}


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("disjoint", [False, True])
def test_crops_stay_within_the_valid_audio(disjoint: bool) -> None:
    lengths = torch.tensor([100, 399, 400, 401, 799, 800, 801, 5000] * 50)
    starts, crop = draw_crops(lengths, 400, _gen(), disjoint)
    assert crop.tolist() == lengths.clamp(max=400).tolist()
    assert bool((starts >= 0).all()) and bool((starts + crop[:, None] <= lengths[:, None]).all())
    lo, hi = starts.min(1).values, starts.max(1).values
    holds_two = lengths >= 2 * crop
    if disjoint:
        assert bool((hi[holds_two] >= lo[holds_two] + crop[holds_two]).all())  # no overlap where possible
        short = ~holds_two
        assert bool((lo[short] == 0).all()) and bool((hi[short] == lengths[short] - crop[short]).all())
        assert bool((starts[:, 0] > starts[:, 1]).any()) and bool((starts[:, 0] < starts[:, 1]).any())
    else:
        long = lengths == 5000
        assert bool((starts[long, 0] != starts[long, 1]).any())  # independent draws
        assert int(starts[long].max()) > 4000 and int(starts[long].min()) < 500  # the whole range is reached
    again, _ = draw_crops(lengths, 400, _gen(), disjoint)
    other, _ = draw_crops(lengths, 400, _gen(2), disjoint)
    assert torch.equal(starts, again) and not torch.equal(starts, other)


def test_take_crops_copies_the_segment_and_pads_with_zeros() -> None:
    source = torch.arange(20.0).reshape(2, 10)
    wave, mask = take_crops(source, torch.tensor([3, 0]), torch.tensor([4, 2]))
    assert wave.tolist() == [[3.0, 4.0, 5.0, 6.0], [10.0, 11.0, 0.0, 0.0]]
    assert mask.tolist() == [[False] * 4, [False, False, True, True]]
    assert take_crops(source, torch.tensor([6, 1]), torch.tensor([4, 4]))[1] is None


def test_views_of_a_padded_short_item_never_read_its_padding() -> None:
    method = _method(segment_seconds=0.1)  # 1600 samples
    batch = _batch([8000, 1000, 6000])
    batch["source"] = batch["source"].masked_fill(batch["padding_mask"], 100.0)  # padding that must not leak
    wave, mask, overlap = method.views(batch, _gen())
    assert wave.shape == (6, 1600) and mask is not None
    assert float(wave.abs().max()) < 100.0
    assert (~mask).sum(1).tolist() == [1600, 1000, 1600] * 2
    assert overlap[1] == 1.0  # the short item is taken whole, twice


def test_a_padded_item_is_embedded_as_if_alone() -> None:
    method = _method().eval()
    batch = _batch([12000, 7000])
    z = method.embed(batch["source"], batch["padding_mask"])
    alone = method.embed(batch["source"][1:, :7000], None)
    assert torch.allclose(z[1], alone[0], atol=1e-5)
    out = method(batch, _gen())
    assert out.sample_size == 4 and math.isfinite(out.loss.item())


def test_views_come_from_the_augment_chain_and_are_reproducible() -> None:
    method = _method(segment_seconds=2.0).eval()  # longer than the items: both crops are the whole item
    batch = _batch([8000, 8000, 8000])
    augment = Augmenter(CHAIN)
    raw, _, _ = method.views(batch, _gen())
    assert torch.equal(raw[:3], raw[3:]) and torch.equal(raw[:3], batch["source"])
    views, _, _ = method.views(batch, _gen(), augment)
    assert not torch.allclose(views, raw, atol=1e-3)  # the chain changes the views ...
    assert not torch.allclose(views[:3], views[3:], atol=1e-3)  # ... independently for view 0 and view 1
    again, _, _ = method.views(batch, _gen(5), augment)
    assert torch.equal(views, again)  # (the chain is seeded by item, epoch and view, not the generator)
    loss = method(batch, _gen(), augment).loss.item()
    assert loss == method(batch, _gen(), augment).loss.item()
    assert loss != method(batch, _gen(), None).loss.item()


def test_same_seed_same_loss_in_training_mode() -> None:
    method = _method().train()
    batch, augment = _batch([16000, 12000, 16000, 9000]), Augmenter(CHAIN)
    losses = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)  # dropout (the trainer reseeds it per micro-batch)
        losses.append(method(batch, _gen(seed), augment).loss.item())
    assert losses[0] == losses[1] != losses[2]


def test_one_item_adds_nothing_but_reaches_every_parameter() -> None:
    method = _method().train()
    full = method(_batch([9000, 9000]), _gen())
    out = method(_batch([9000]), _gen())
    assert out.sample_size == 0 and out.loss.item() == 0.0
    assert set(out.stats) == set(full.stats) and not any(out.stats.values())  # DDP sums the same keys
    out.loss.backward()
    unused = {"encoder.mask_emb"}  # never masked
    for name, p in method.named_parameters():
        if name not in unused:
            assert p.grad is not None and float(p.grad.abs().max()) == 0.0, name


def test_summary_hand_computed() -> None:
    method = _method()
    out = method(_batch([9000, 9000, 9000]), _gen())
    s = method.summarize(out.stats)
    assert s["chance"] == pytest.approx(1 / 5) and s["chance_loss"] == pytest.approx(math.log2(5))
    assert s["loss"] == pytest.approx(out.loss.item() / 6 / math.log(2))
    assert s["anchors"] == 6 and 0 <= s["accuracy"] <= 1 and -1 <= s["neg_sim"] <= s["pos_sim"] + 1
    assert math.isnan(method.summarize({})["loss"])


def test_cola_variant_bilinear_head_and_pair_negatives() -> None:
    method = _method(similarity="bilinear", head="cola", proj_dim=16, negatives="positives").train()
    out = method(_batch([9000, 9000, 9000, 9000]), _gen())
    assert out.sample_size == 4 and method.summarize(out.stats)["chance"] == pytest.approx(1 / 4)
    out.loss.backward()
    assert method.bilinear is not None and float(method.bilinear.grad.abs().sum()) > 0
    z = method.embed(_batch([9000])["source"], None)
    assert z.shape == (1, 16) and z.abs().max().item() <= 1.0  # tanh head
    assert _method().bilinear is None


def test_collapse_guard_fires_on_constant_embeddings() -> None:
    method = _method(collapse_after=10)
    with torch.no_grad():
        last = method.projector.net[-1]
        last.weight.zero_()
        last.bias.uniform_()  # every projection is this bias
    summary = method.summarize(method(_batch([9000, 9000, 9000]), _gen()).stats)
    assert summary["z_std"] == pytest.approx(0.0, abs=1e-6) and summary["pos_sim"] == pytest.approx(1.0)
    assert method.collapse(summary, 9) is None  # still warming up
    assert "collapsed" in method.collapse(summary, 10)
    spread = summary | {"z_std": 1 / math.sqrt(128)}
    assert method.collapse(spread, 1000) is None


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="objective.crop"):
        method_config("simclr", {"crop": "random"})
    with pytest.raises(ValueError, match="objective.similarity"):
        method_config("simclr", {"similarity": "dot"})
    with pytest.raises(ValueError, match="segment_seconds"):
        method_config("simclr", {"segment_seconds": 0.0})
    with pytest.raises(ValueError, match="fewer than one encoder frame"):
        _method(segment_seconds=0.01)(_batch([9000, 9000]), _gen())
