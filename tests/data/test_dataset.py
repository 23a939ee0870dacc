import numpy as np
import pytest
import torch

from speechcl.data.dataset import TARGET_PAD, AudioDataset
from speechcl.data.labels import Dictionary, read_lines
from speechcl.data.loader import build_dataloader
from speechcl.data.manifest import read_manifest
from speechcl.data.sampler import BucketBatchSampler

from .conftest import SMALL

TRAIN = SMALL.train_split


@pytest.fixture(scope="module")
def manifest(prepared):
    return read_manifest(prepared / f"{TRAIN}.tsv")


def test_random_crop_is_seeded_per_epoch_and_item(manifest):
    crop = int(np.median(manifest.sizes))
    a = AudioDataset(manifest, max_sample_size=crop, seed=1)
    b = AudioDataset(manifest, max_sample_size=crop, seed=1)
    assert (a.sizes <= crop).all() and a.sizes.max() == crop and not a.pad
    long = int(np.argmax(a.sizes))
    assert manifest.sizes[long] > crop
    first = a[long]["source"]
    assert first.shape == (crop,) and first.dtype == torch.float32
    assert torch.equal(first, b[(long, 0)]["source"])
    assert not torch.equal(first, a[(long, 1)]["source"])
    assert not torch.equal(first, AudioDataset(manifest, max_sample_size=crop, seed=2)[long]["source"])
    start = AudioDataset(manifest, max_sample_size=crop, random_crop=False)[long]["source"]
    full = AudioDataset(manifest)[long]["source"]
    assert torch.equal(start, full[:crop])


def test_collate_crop_to_shortest_or_pad(manifest):
    crop_ds = AudioDataset(manifest, max_sample_size=200_000)
    samples = [crop_ds[i] for i in range(4)]
    lengths = [s["source"].numel() for s in samples]
    batch = crop_ds.collater(samples)
    assert batch["source"].shape == (4, min(lengths)) and not batch["padding_mask"].any()
    assert batch["id"].tolist() == [0, 1, 2, 3] and "target" not in batch
    pad_ds = AudioDataset(manifest, pad=True)
    batch = pad_ds.collater([pad_ds[i] for i in range(4)])
    assert batch["source"].shape == (4, max(lengths))
    assert batch["padding_mask"].sum(1).tolist() == [max(lengths) - n for n in lengths]
    for row, n in enumerate(lengths):
        assert torch.equal(batch["source"][row, :n], pad_ds[row]["source"])
        assert (batch["source"][row, n:] == 0).all()


def test_normalize_and_min_size(manifest):
    ds = AudioDataset(manifest, normalize=True)
    wave = ds[0]["source"]
    assert abs(float(wave.mean())) < 1e-4 and abs(float(wave.std()) - 1) < 1e-2  # layer_norm eps=1e-5, as fairseq
    threshold = int(np.median(manifest.sizes))
    filtered = AudioDataset(manifest, min_sample_size=threshold)
    assert len(filtered) == sum(n >= threshold for n in manifest.sizes) and filtered.num_dropped > 0
    assert (filtered.sizes >= threshold).all()
    assert filtered.path(0) == manifest.full_path(int(filtered.indices[0]))


def test_labeled_targets(prepared, manifest):
    dictionary = Dictionary.load(prepared / "dict.ltr.txt")
    ds = AudioDataset.from_files(prepared / f"{TRAIN}.tsv", prepared / f"{TRAIN}.ltr", dictionary)
    assert ds.pad
    words = read_lines(prepared / f"{TRAIN}.wrd")
    batch = ds.collater([ds[i] for i in (0, 1, 2)])
    assert batch["target"].dtype == torch.int64 and batch["target_lengths"].dtype == torch.int64
    for row, i in enumerate((0, 1, 2)):
        n = int(batch["target_lengths"][row])
        assert dictionary.decode_words(batch["target"][row, :n].tolist()) == words[i]
        assert (batch["target"][row, n:] == TARGET_PAD).all()
    limit = int(np.median(manifest.sizes))
    short = AudioDataset.from_files(prepared / f"{TRAIN}.tsv", prepared / f"{TRAIN}.ltr", dictionary,
                                    max_sample_size=limit)
    assert (short.sizes <= limit).all() and len(short) < len(ds)  # long labeled items dropped, never cropped
    with pytest.raises(ValueError, match="pad=True"):
        AudioDataset(manifest, labels=[[4]] * len(manifest), pad=False)
    with pytest.raises(ValueError, match="line up"):
        AudioDataset.from_files(prepared / f"{TRAIN}.tsv", prepared / "dev-clean.ltr", dictionary)


def test_changed_file_is_detected(manifest):
    broken = manifest.subset([0])
    broken.sizes[0] += 1
    item = AudioDataset(broken)[0]
    assert "source" not in item and "re-run speechcl prepare" in item["bad"]


def test_unreadable_items_are_left_out_of_the_batch_and_named(prepared, tmp_path):
    dictionary = Dictionary.load(prepared / "dict.ltr.txt")
    ds = AudioDataset.from_files(prepared / f"{TRAIN}.tsv", prepared / f"{TRAIN}.ltr", dictionary)
    words = read_lines(prepared / f"{TRAIN}.wrd")
    bad_path = ds.path(1)
    nan = np.full(int(ds.sizes[1]), np.nan, dtype=np.float32)
    import soundfile as sf

    copy = tmp_path / "nan.wav"
    sf.write(copy, nan, 16000, subtype="FLOAT")
    ds.manifest.paths[int(ds.indices[1])] = str(copy)  # item 1 now points at NaN audio
    batch = ds.collater([ds[i] for i in (0, 1, 2)])
    assert batch["id"].tolist() == [0, 2] and batch["source"].shape[0] == 2
    assert [(i, p) for i, p, _ in batch["bad"]] == [(1, str(copy))] and "NaN" in batch["bad"][0][2]
    for row, i in enumerate((0, 2)):  # targets stay with their own audio
        n = int(batch["target_lengths"][row])
        assert dictionary.decode_words(batch["target"][row, :n].tolist()) == words[i]
    only_bad = ds.collater([ds[1]])
    assert only_bad["source"].shape[0] == 0 and only_bad["target"].shape[0] == 0 and len(only_bad["bad"]) == 1
    assert bad_path != str(copy)


def _loader(manifest, workers, epoch=0):
    ds = AudioDataset(manifest, max_sample_size=80_000, seed=9)
    sampler = BucketBatchSampler(ds.sizes, 250_000, seed=9)
    loader = build_dataloader(ds, sampler, num_workers=workers)
    loader.set_epoch(epoch)
    return loader


def test_loader_batches_respect_max_tokens_and_resume_exactly(manifest):
    reference = [(b["id"].tolist(), b["source"]) for b in _loader(manifest, 0, epoch=2)]
    assert sorted(i for ids, _ in reference for i in ids) == list(range(len(manifest)))
    for _, source in reference:
        assert source.numel() <= 250_000

    loader = _loader(manifest, 2, epoch=2)
    seen = []
    for batch in loader:
        seen.append((batch["id"].tolist(), batch["source"]))
        if len(seen) == 3:
            break
    state = loader.state_dict()
    assert state["position"] == 3 and state["epoch"] == 2  # consumed, not prefetched
    resumed = _loader(manifest, 2)
    resumed.load_state_dict(state)
    seen += [(b["id"].tolist(), b["source"]) for b in resumed]
    assert [ids for ids, _ in seen] == [ids for ids, _ in reference]
    for (_, a), (_, b) in zip(seen, reference):
        assert torch.equal(a, b)  # same crops in workers, after resuming, as in the main process
    assert resumed.state_dict()["position"] == len(resumed)
    resumed.set_epoch(3)
    assert resumed.state_dict()["position"] == 0


def test_real_corpus_two_ranks_cover_every_item_once(manifest):
    ds = AudioDataset(manifest, max_sample_size=100_000)
    ids = []
    lengths = set()
    for rank in range(2):
        loader = build_dataloader(ds, BucketBatchSampler(ds.sizes, 300_000, seed=1, rank=rank, world_size=2))
        batches = list(loader)
        lengths.add(len(batches))
        for batch in batches:
            assert batch["source"].numel() <= 300_000
            ids += batch["id"].tolist()
    assert len(lengths) == 1 and sorted(ids) == list(range(len(ds)))


def test_loader_breaking_out_continues_where_the_caller_stopped(manifest):
    reference = [b["id"].tolist() for b in _loader(manifest, 0)]
    loader = _loader(manifest, 2)
    got = []
    for batch in loader:  # e.g. a mid-epoch validation interrupts the loop
        got.append(batch["id"].tolist())
        if len(got) == 2:
            break
    got += [b["id"].tolist() for b in loader]
    assert got == reference
    assert [b["id"].tolist() for b in loader] == reference  # a completed epoch repeats unless set_epoch moves on
