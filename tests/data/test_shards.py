"""``speechcl prepare shards``: WebDataset tars + index that round-trip the manifest, resume, verify."""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechcl.audio.io import audio_info, load_audio
from speechcl.cli import main
from speechcl.data import shards as shards_module
from speechcl.data.labels import read_lines
from speechcl.data.manifest import Manifest, read_manifest, write_manifest
from speechcl.data.shards import ShardIndex, index_path, plan_shards, shard_key, write_shards

from .conftest import SMALL

TRAIN = SMALL.train_split


@pytest.fixture(scope="module")
def written(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    result = write_shards(prepared, TRAIN, out, shard_size=5, jobs=2)
    assert (result.num_shards, result.written, result.kept) == (4, 4, 0)  # 16 items: 5 + 5 + 5 + 1
    return out


def _snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob("*.tar"))}


def test_every_item_round_trips(prepared: Path, written: Path) -> None:
    manifest = read_manifest(prepared / f"{TRAIN}.tsv")
    labels = {ext: read_lines(prepared / f"{TRAIN}.{ext}") for ext in ("wrd", "ltr", "spk", "phn")}
    index = ShardIndex.load(written, TRAIN)
    meta = json.loads(index_path(written, TRAIN).read_text())
    order = [i for shard in meta["shards"] for i in shard["manifest_index"]]
    assert sorted(order) == list(range(len(manifest))) and order != sorted(order)  # all once, shuffled
    assert index.num_items == len(manifest) and meta["total_samples"] == manifest.total_samples()
    assert meta["labels"] == ["ltr", "phn", "spk", "wrd"]
    for item, source in enumerate(order):
        wave, _ = load_audio(manifest.full_path(source))
        assert index.read(item, "flac") == Path(manifest.full_path(source)).read_bytes()  # FLAC copied as it is
        assert torch.equal(index.read_wave(item), wave)
        assert index.sizes[item] == manifest.sizes[source]
        item_meta = index.read_meta(item)
        assert item_meta["key"] == index.keys[item] == shard_key(manifest.paths[source])
        assert item_meta["source"] == manifest.paths[source] and item_meta["num_samples"] == manifest.sizes[source]
        assert item_meta["transcript"] == labels["wrd"][source] and item_meta["speaker"] == labels["spk"][source]
        assert item_meta["labels"] == {"ltr": labels["ltr"][source], "phn": labels["phn"][source]}
    for ext, lines in labels.items():  # the copied label files are in index order
        assert read_lines(written / f"{TRAIN}.{ext}") == [lines[i] for i in order]
    assert (written / "dict.ltr.txt").read_bytes() == (prepared / "dict.ltr.txt").read_bytes()


def test_tars_are_plain_webdataset_tars(written: Path) -> None:
    index = ShardIndex.load(written, TRAIN)
    for shard in range(index.num_shards):
        with tarfile.open(index.shard_path(shard)) as tar:
            members = tar.getmembers()
            items = index.shard_items[shard]
            assert [m.name for m in members] == [f"{index.keys[i]}.{ext}" for i in items for ext in ("flac", "json")]
            for row, item in enumerate(items):  # the index's offsets are where tarfile finds the members
                flac, meta = members[2 * row], members[2 * row + 1]
                assert (flac.offset, flac.offset_data, flac.size) == (index.start[item], *index.flac[item])
                assert (meta.offset_data, meta.size) == tuple(index.json[item])
                assert tar.extractfile(flac).read() == index.read(item, "flac")
    wds = pytest.importorskip("webdataset")
    urls = [str(index.shard_path(s)) for s in range(index.num_shards)]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == index.keys
    assert [json.loads(s["json"])["num_samples"] for s in samples] == index.sizes.tolist()


def test_plan_shards_by_items_or_megabytes() -> None:
    assert plan_shards([1] * 7, shard_size=3) == [(0, 3), (3, 6), (6, 7)]
    mb = 1_000_000
    assert plan_shards([mb, mb, 3 * mb, mb], shard_mb=2) == [(0, 2), (2, 3), (3, 4)]  # a big item alone
    assert plan_shards([], shard_size=2) == []
    for kwargs in ({}, {"shard_size": 2, "shard_mb": 1.0}, {"shard_size": 0}, {"shard_mb": -1.0}):
        with pytest.raises(ValueError, match="shard"):
            plan_shards([1, 2], **kwargs)
    assert shard_key("a/b.c/x.y.flac") == "a/b_c/x_y"


def test_rerun_keeps_verified_shards_and_rewrites_the_rest(prepared: Path, written: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(written, out)
    before = _snapshot(out)
    names = sorted(before)
    (out / names[0]).unlink()  # lost
    data = bytearray((out / names[1]).read_bytes())
    (out / names[1]).write_bytes(data[: len(data) // 2])  # truncated
    index = ShardIndex.load(written, TRAIN)
    item = index.shard_items[2][0]
    offset, size = index.flac[item]
    data = bytearray((out / names[2]).read_bytes())
    data[offset: offset + size] = bytes(size)  # same size, no longer FLAC: only --verify can tell
    (out / names[2]).write_bytes(bytes(data))
    keep = (out / names[3]).stat().st_mtime_ns

    result = write_shards(prepared, TRAIN, out, shard_size=5, jobs=1)
    assert (result.written, result.kept) == (2, 2)
    assert (out / names[2]).read_bytes() == bytes(data) and (out / names[3]).stat().st_mtime_ns == keep
    result = write_shards(prepared, TRAIN, out, shard_size=5, jobs=1, verify=True)
    assert (result.written, result.kept) == (1, 3)
    after = _snapshot(out)
    assert {n: b for n, (_, b) in after.items()} == {n: b for n, (_, b) in before.items()}  # deterministic bytes
    assert after[names[3]][0] == keep  # never rewritten
    assert not list(out.glob(".*tmp"))

    # a changed transcript: only the shard holding that item is written again
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    words = read_lines(data / f"{TRAIN}.wrd")
    (data / f"{TRAIN}.wrd").write_text("\n".join(["SOMETHING ELSE", *words[1:]]) + "\n")
    result = write_shards(data, TRAIN, out, shard_size=5, jobs=1)
    assert (result.written, result.kept) == (1, 3)
    changed = [i for i in range(16) if ShardIndex.load(out, TRAIN).read_meta(i)["transcript"] == "SOMETHING ELSE"]
    assert len(changed) == 1 and read_lines(out / f"{TRAIN}.wrd")[changed[0]] == "SOMETHING ELSE"

    # other settings: the shards of the old plan are rewritten or removed, the index follows
    result = write_shards(prepared, TRAIN, out, shard_size=8, jobs=1)
    assert (result.num_shards, result.written, result.removed) == (2, 2, names[2:])
    assert sorted(p.name for p in out.glob("*.tar")) == names[:2]
    assert ShardIndex.load(out, TRAIN).num_items == 16


def test_an_interrupted_write_leaves_no_partial_shard(prepared: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = shards_module._flac_bytes, []

    def dies_on_the_seventh(item: object) -> bytes:
        calls.append(item)
        if len(calls) == 7:
            raise KeyboardInterrupt  # like a kill in the middle of shard 1
        return real(item)

    monkeypatch.setattr(shards_module, "_flac_bytes", dies_on_the_seventh)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_shards(prepared, TRAIN, out, shard_size=5, jobs=1)
    assert sorted(p.name for p in out.iterdir()) == [f"{TRAIN}-000000.tar"]  # no partial shard, no index yet
    monkeypatch.setattr(shards_module, "_flac_bytes", real)
    result = write_shards(prepared, TRAIN, out, shard_size=5, jobs=1)
    assert (result.written, result.kept) == (3, 1)


def test_other_sources_are_decoded_and_re_encoded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root, data = tmp_path / "audio", tmp_path / "data"
    root.mkdir()
    files = {"a.b.wav": (22050, 2), "c.flac": (8000, 1)}  # a dot in the name, resampled, mixed down
    for name, (rate, channels) in files.items():
        sf.write(root / name, rng.uniform(-0.5, 0.5, (rate // 2, channels)), rate, subtype="PCM_16")
    # and a 16 kHz mono FLAC encoded differently from libsndfile's default: still copied as it is
    sf.write(root / "d.flac", 0.3 * np.sin(np.arange(8000) * 0.05), 16000, subtype="PCM_16", compression_level=0.0)
    paths = [*sorted(files), "d.flac"]
    write_manifest(data / "x.tsv", Manifest(str(root), paths, [audio_info(root / p).num_samples() for p in paths]))
    write_shards(data, "x", tmp_path / "out", shard_size=1, shuffle=False, verify=True)
    index = ShardIndex.load(tmp_path / "out", "x")
    assert index.keys == ["a_b", "c", "d"]
    assert index.read(2, "flac") == (root / "d.flac").read_bytes()
    for item, name in enumerate(paths):
        wave, _ = load_audio(root / name)
        decoded = index.read_wave(item)
        assert decoded.shape == wave.shape and float((decoded - wave).abs().max()) <= 1.0 / 32768 + 1e-7
        assert index.read_meta(item)["speaker"] is None and "transcript" not in index.read_meta(item)


def test_bad_input_is_named(prepared: Path, written: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv not found.*train-clean-100"):
        write_shards(prepared, "nope", tmp_path / "o")
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    lines = read_lines(data / f"{TRAIN}.ltr")
    (data / f"{TRAIN}.ltr").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"\.ltr has 15 lines for 16 items"):
        write_shards(data, TRAIN, tmp_path / "o")
    broken = tmp_path / "broken"
    shutil.copytree(written, broken)
    name = sorted(broken.glob("*.tar"))[1]
    name.write_bytes(name.read_bytes() + bytes(512))
    with pytest.raises(ValueError, match=f"{name.name} is .* bytes but .* says"):
        ShardIndex.load(broken, TRAIN)
    name.unlink()
    with pytest.raises(FileNotFoundError, match=f"{name.name}.*not found"):
        ShardIndex.load(broken, TRAIN)
    with pytest.raises(FileNotFoundError, match="run `speechcl prepare shards"):
        ShardIndex.load(broken, "dev-clean")


def test_command_line(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert main(["prepare", "shards", str(prepared), "dev-clean", str(out), "--shard-size", "3", "--jobs", "1",
                 "--verify"]) == 0
    assert "dev-clean: 7 items in 3 shards" in capsys.readouterr().out
    assert main(["prepare", "shards", str(prepared), "dev-clean", str(out), "--shard-size", "3"]) == 0
    assert "0 written, 3 kept" in capsys.readouterr().out
    assert main(["prepare", "shards", str(prepared), "nope", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: manifest ")
    with pytest.raises(SystemExit):
        main(["prepare", "shards", str(prepared), "dev-clean", str(out), "--shard-size", "3", "--shard-mb", "1"])
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if it were not installed
    assert main(["prepare", "shards", str(prepared), "dev-clean", str(tmp_path / "o2")]) == 2
    assert "pip install 'speechcl[shards]'" in capsys.readouterr().err
