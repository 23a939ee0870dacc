"""Streaming from shards: the plan's invariants, coverage across ranks and workers, the same audio as the
manifest, exact mid-epoch resume, and ``speechcl pretrain`` from shards resumed after a crash."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechcl.data.labels import Dictionary, read_lines
from speechcl.data.manifest import read_manifest
from speechcl.data.shard_stream import (
    assign_shards,
    balance_ranks,
    buffer_batches,
    build_shard_loader,
    check_format,
)
from speechcl.data.shards import ShardIndex, write_shards
from speechcl.training import pretrain as pretrain_module
from speechcl.training.finetune import FinetuneDataConfig, build_labeled_loader
from speechcl.training.pretrain import DataConfig, build_loader

from .conftest import SMALL

TRAIN = SMALL.train_split
STREAM = {"max_tokens": 300_000, "max_sample_size": 96_000, "min_sample_size": 60_000, "seed": 5,
          "shuffle_buffer": 4}


@pytest.fixture(scope="module")
def shards(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stream_shards")
    write_shards(prepared, TRAIN, out, shard_size=2, jobs=2)  # 16 items: 8 shards, 2 for each of 2 x 2 streams
    return out


def _loader(shards: Path, workers: int = 2, rank: int = 0, world_size: int = 1, epoch: int = 0, **kwargs: object):
    loader = build_shard_loader(shards, TRAIN, num_workers=workers, rank=rank, world_size=world_size,
                                **(STREAM | kwargs))
    loader.set_epoch(epoch)
    return loader


def _ids(batches: list[dict]) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def test_buffer_batches_bound_cover_and_window() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1_000, 50_000, 300)
    batches, reads = buffer_batches(sizes, 40, 120_000, max_batch_size=6, rng=np.random.default_rng(1))
    assert sorted(p for b in batches for p in b) == list(range(300))
    assert all(len(b) * sizes[b].max() <= 120_000 and len(b) <= 6 for b in batches)
    out = 0
    for batch, read in zip(batches, reads):  # a batch leaves only once all its items were read, and the
        assert max(batch) < read             # items read but not yet out never exceed the buffer
        out += len(batch)
        assert read - out < 40
    assert reads == sorted(reads) and reads[-1] == 300
    again, _ = buffer_batches(sizes, 40, 120_000, max_batch_size=6, rng=np.random.default_rng(1))
    other, _ = buffer_batches(sizes, 40, 120_000, max_batch_size=6, rng=np.random.default_rng(2))
    assert again == batches and other != batches
    with pytest.raises(ValueError, match="shuffle_buffer"):
        buffer_batches(sizes, 0, 120_000)


def test_assign_shards_and_balance_ranks() -> None:
    samples = [10, 0, 10, 10, 30, 10, 10, 10]
    plan = assign_shards(samples, world_size=2, num_streams=2, seed=3, epoch=0)
    dealt = sorted(s for rank in plan for stream in rank for s in stream)
    assert dealt == [0, 2, 3, 4, 5, 6, 7]  # every shard with audio once, the empty one left out
    assert assign_shards(samples, 2, 2, seed=3, epoch=1) != plan
    assert assign_shards(samples, 2, 2, seed=None) == assign_shards(samples, 2, 2, seed=None, epoch=5)
    assert assign_shards([1] * 4, 2, 2, seed=None) == [[[0], [2]], [[1], [3]]]  # ranks first, then streams
    batches = [[[[0, 1, 2, 3], [4]], [[5, 6]]], [[[7]], [[8, 9]]]]
    reads = [[[4, 5], [7]], [[1], [3]]]
    assert balance_ranks(batches, reads) == 0
    assert [sum(len(s) for s in r) for r in batches] == [3, 3]
    assert batches[1] == [[[7]], [[8], [9]]] and reads[1] == [[1], [3, 3]]
    few = [[[[0], [1], [2]]], [[[3]]]]
    assert balance_ranks(few, [[[1, 2, 3]], [[1]]]) == 2  # rank 1 cannot be split: rank 0 drops two batches
    assert few == [[[[0]]], [[[3]]]]


def test_two_ranks_by_two_workers_cover_every_item_once(shards: Path) -> None:
    seen, counts, shards_of = [], [], []
    for rank in range(2):
        loader = _loader(shards, workers=2, rank=rank, world_size=2, epoch=1)
        plan = loader.sampler.plan()
        batches = _ids(list(loader))
        assert batches == [plan.streams[s][k] for s, k in plan.order]  # the plan's order, whatever the timing
        seen += [i for b in batches for i in b]
        counts.append(len(batches))
        index = loader.dataset.index
        for stream in plan.streams:  # a worker reads only its own shards
            shards_of.append({int(index.shard[loader.dataset.indices[i]]) for b in stream for i in b})
    dataset = loader.dataset
    assert sorted(seen) == list(range(len(dataset))) and len(dataset) > 8  # every item exactly once
    assert counts[0] == counts[1]  # the same number of steps on every rank
    assert all(not (a & b) for i, a in enumerate(shards_of) for b in shards_of[i + 1:])
    assert sum(map(len, shards_of)) >= 7  # (8 shards, one may hold only filtered-out items)


def test_same_audio_per_epoch_as_the_manifest(prepared: Path, shards: Path) -> None:
    settings = {"train_subset": TRAIN, "max_sample_size": 10**6, "min_sample_size": 60_000, "max_tokens": 400_000,
                "pad": True, "num_workers": 0}
    totals = {}
    for data_format in ("manifest", "shards"):
        data = DataConfig(manifest_dir=str(prepared), format=data_format, shards_dir=str(shards), **settings)
        loader = build_loader(data, TRAIN, True)
        loader.set_epoch(1)
        totals[data_format] = sum(int((~b["padding_mask"]).sum()) for b in loader)
    manifest = read_manifest(prepared / f"{TRAIN}.tsv")
    expected = sum(n for n in manifest.sizes if n >= 60_000)
    assert totals == {"manifest": expected, "shards": expected}


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(shards: Path) -> None:
    reference = [(b["id"].tolist(), b["source"]) for b in _loader(shards, epoch=2)]
    assert len(reference) >= 4
    for stop in (0, 1, len(reference) - 1, len(reference)):
        first = _loader(shards, epoch=2)
        it = iter(first)
        head = [next(it)["id"].tolist() for _ in range(stop)]
        del it  # the run is killed here
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        resumed = _loader(shards)
        resumed.load_state_dict(state)
        rest = [(b["id"].tolist(), b["source"]) for b in resumed]
        assert head == [ids for ids, _ in reference[:stop]]
        tail = reference[stop:] if stop < len(reference) else reference  # a finished epoch starts over
        assert [ids for ids, _ in rest] == [ids for ids, _ in tail]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, tail))
        if stop == 1:  # the interrupted loader itself also goes on where its caller stopped
            assert _ids(list(first)) == [ids for ids, _ in tail]
    assert state["streams"][0]["shard"] == -1  # at the end every stream has read all its shards


def test_resume_reads_only_what_remains(shards: Path) -> None:
    """Resuming seeks: the items of the batches already handed out are not read again."""
    first = _loader(shards, workers=0, epoch=1)
    it = iter(first)
    for _ in range(3):
        next(it)
    del it
    resumed = _loader(shards, workers=0)
    resumed.load_state_dict(first.state_dict())
    reads = []
    real = resumed.dataset.index.read_wave
    resumed.dataset.index.read_wave = lambda item: reads.append(item) or real(item)
    rest = _ids(list(resumed))
    assert len(reads) == sum(map(len, rest)) and len(rest) == len(first) - 3


def test_resume_refuses_another_setting(shards: Path) -> None:
    loader = _loader(shards)
    it = iter(loader)
    next(it)
    del it
    state = loader.state_dict()
    assert state["position"] == 1 and {"batch", "shard", "offset"} == set(state["streams"][0])
    for kwargs, message in (({"workers": 1}, "num_streams=2 .* data.num_workers"), ({"seed": 6}, "seed=5"),
                            ({"shuffle_buffer": 8}, "shuffle_buffer=4")):
        with pytest.raises(ValueError, match=message):
            _loader(shards, **kwargs).load_state_dict(state)
    with pytest.raises(ValueError, match="stream positions"):
        _loader(shards).load_state_dict(state | {"streams": [{"batch": 1, "shard": 0, "offset": 0}] * 2})
    with pytest.raises(ValueError, match="manifest loader"):
        _loader(shards).load_state_dict({"epoch": 0, "position": 1, "seed": 5})
    with pytest.raises(ValueError, match="data.shards_dir is required"):
        check_format("shards", "x", "")
    with pytest.raises(ValueError, match="data.format must be one of"):
        check_format("tar", "x", "y")


def test_a_crash_mid_epoch_still_ends_the_process(shards: Path) -> None:
    """Workers ignore SIGTERM; an uncaught exception that leaves the loader alive must not hang the exit."""
    script = (f"from speechcl.data.shard_stream import build_shard_loader\n"
              f"loader = build_shard_loader({str(shards)!r}, {TRAIN!r}, 300_000, num_workers=2)\n"
              "for batch in loader:\n    raise RuntimeError('crash mid-epoch')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1 and "crash mid-epoch" in proc.stderr


def test_crops_are_drawn_as_the_manifest_dataset_draws_them(shards: Path) -> None:
    from speechcl.data.dataset import crop_offset
    from speechcl.data.shard_stream import ShardDataset

    dataset = ShardDataset.from_dir(shards, TRAIN, max_sample_size=50_000, seed=3)
    long = [i for i in range(len(dataset)) if dataset.index.sizes[dataset.indices[i]] > 60_000][:3]
    for index in long:
        whole = dataset.index.read_wave(int(dataset.indices[index]))
        for epoch in (0, 1):
            start = crop_offset(whole.numel(), 50_000, 3, epoch, index)
            assert torch.equal(dataset[(index, epoch)]["source"], whole[start: start + 50_000])
        assert not torch.equal(dataset[(index, 0)]["source"], dataset[(index, 1)]["source"])


def test_finetune_labels_come_with_their_audio(prepared: Path, shards: Path) -> None:
    dictionary = Dictionary.load(shards / "dict.ltr.txt")
    data = FinetuneDataConfig(format="shards", shards_dir=str(shards), max_tokens=600_000, num_workers=0,
                              train_subset=TRAIN)
    loader = build_labeled_loader(data, TRAIN, dictionary, True)
    index = ShardIndex.load(shards, TRAIN)
    manifest = read_manifest(prepared / f"{TRAIN}.tsv")
    letters = read_lines(prepared / f"{TRAIN}.ltr")
    by_key = {p.rsplit(".", 1)[0]: i for i, p in enumerate(manifest.paths)}
    seen = 0
    for batch in loader:
        for row, i in enumerate(batch["id"].tolist()):
            source = by_key[index.keys[int(loader.dataset.indices[i])]]
            n = int(batch["target_lengths"][row])
            assert batch["target"][row, :n].tolist() == dictionary.encode(letters[source])
            assert int((~batch["padding_mask"][row]).sum()) == manifest.sizes[source]
            seen += 1
    assert seen == len(manifest)


@pytest.mark.slow
def test_pretrain_from_shards_resumes_after_a_crash(manifest_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.training.helpers import TRAIN as PT_TRAIN
    from tests.training.helpers import (
        VALID,
        max_abs_diff,
        overrides,
        read_log,
        read_state,
        read_weights,
        run_pretrain_verb,
    )

    out = tmp_path / "shards"
    for split in (PT_TRAIN, VALID):
        write_shards(manifest_dir, split, out, shard_size=3, jobs=1)
    settings = {"data__format": "shards", "data__shards_dir": out, "trainer__max_update": 8,
                "trainer__save_interval": 1}

    def argv(exp: Path) -> list[str]:
        return ["--config-name", "pretrain_cpu", *overrides(manifest_dir, exp, **settings)]

    assert run_pretrain_verb(argv(tmp_path / "reference")) == 0
    real, calls = pretrain_module.PretrainTask.forward, []

    def crashes_at_update_6(self, *args: object, **kwargs: object):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pretrain_module.PretrainTask, "forward", crashes_at_update_6)
    with pytest.raises(RuntimeError, match="killed"):
        run_pretrain_verb(argv(tmp_path / "crashed"))
    crashed = read_state(tmp_path / "crashed" / "checkpoints" / "last")
    assert crashed["num_updates"] == 5 and crashed["loader"]["format"] == "shards"
    assert 0 < crashed["loader"]["position"] < 4  # mid-epoch (4 batches per epoch)
    monkeypatch.setattr(pretrain_module.PretrainTask, "forward", real)
    assert run_pretrain_verb(argv(tmp_path / "crashed")) == 0

    last, ref = tmp_path / "crashed" / "checkpoints" / "last", tmp_path / "reference" / "checkpoints" / "last"
    assert max_abs_diff(read_weights(last), read_weights(ref)) == 0.0
    assert read_state(last)["loader"] == read_state(ref)["loader"] and read_state(last)["num_updates"] == 8
    log = {r["step"]: r["loss"] for r in read_log(tmp_path / "crashed") if r["split"] == "train"}
    ref_log = {r["step"]: r["loss"] for r in read_log(tmp_path / "reference") if r["split"] == "train"}
    assert log == ref_log and sorted(log) == list(range(1, 9))
