import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcl.audio import load_audio
from speechcl.cli import main
from speechcl.data.labels import Dictionary, read_lines, words_to_letters
from speechcl.data.manifest import read_manifest
from speechcl.data.prepare import REPORT_NAME, prepare_audio, prepare_librispeech
from speechcl.data.subsets import parse_duration, parse_subset_spec, select_subset

from .conftest import SMALL


def _transcripts(root: Path) -> dict[str, str]:
    out = {}
    for trans in root.rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            out[utt_id] = text
    return out


def _report(out: Path) -> list[list[str]]:
    lines = (out / REPORT_NAME).read_text().splitlines()
    assert lines[0] == "split\tpath\taction\treason"
    return [line.split("\t") for line in lines[1:]]


def test_manifests_match_files(corpus, prepared):
    transcripts = _transcripts(corpus)
    for split in (SMALL.train_split, "dev-clean", "test-clean"):
        manifest = read_manifest(prepared / f"{split}.tsv")
        assert Path(manifest.root) == corpus.resolve()
        files = sorted(str(p.relative_to(corpus)) for p in (corpus / split).rglob("*.flac"))
        assert manifest.paths == files
        for i, rel in enumerate(manifest.paths):
            assert manifest.sizes[i] == sf.info(corpus / rel).frames
        wrd = read_lines(prepared / f"{split}.wrd")
        ltr = read_lines(prepared / f"{split}.ltr")
        assert len(wrd) == len(ltr) == len(manifest)
        for rel, words, letters in zip(manifest.paths, wrd, ltr):
            assert words == transcripts[Path(rel).stem]
            assert letters == words_to_letters(words) and letters.endswith(" |")


def test_dictionary_from_training_split(prepared):
    lines = read_lines(prepared / "dict.ltr.txt")
    counts = [(line.split()[0], int(line.split()[1])) for line in lines]
    assert [c for _, c in counts] == sorted((c for _, c in counts), reverse=True)
    symbols = {s for s, _ in counts}
    assert "|" in symbols and symbols <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'|")
    train = read_lines(prepared / f"{SMALL.train_split}.ltr")
    assert dict(counts)["|"] == sum(line.split().count("|") for line in train)
    dictionary = Dictionary.load(prepared / "dict.ltr.txt")
    assert dictionary.symbols[4] == counts[0][0]


def test_bad_files_get_documented_treatment(corpus, tmp_path):
    root = tmp_path / "Libri"
    shutil.copytree(corpus / "dev-clean", root / "dev-clean")
    chapter = sorted((root / "dev-clean").glob("*/*"))[0]
    speaker, chap = chapter.parent.name, chapter.name
    trans = chapter / f"{speaker}-{chap}.trans.txt"
    lines = trans.read_text().splitlines()
    good = len(list((root / "dev-clean").rglob("*.flac")))

    def utt(n: int) -> str:
        return f"{speaker}-{chap}-{n:04d}"

    (chapter / f"{utt(900)}.flac").write_bytes(b"fLaC this is not audio" * 50)  # corrupt
    (chapter / f"{utt(901)}.flac").write_bytes(b"")  # empty
    sf.write(chapter / f"{utt(902)}.wav", np.zeros(0, np.float32), 16000)  # zero-length
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((44100 * 2 + 17, 2))).astype(np.float32)
    sf.write(chapter / f"{utt(903)}.flac", stereo, 44100)  # 44.1 kHz stereo: kept
    sf.write(chapter / f"{utt(904)}.flac", stereo[:16000, 0], 16000)  # missing transcript
    lines += [f"{utt(n)} SOME WORDS HERE" for n in (900, 901, 902, 903)] + [f"{utt(905)} NO AUDIO FOR THIS"]
    trans.write_text("\n".join(lines) + "\n")

    out = tmp_path / "out"
    assert main(["prepare", "librispeech", str(root), str(out)]) == 0
    rows = _report(out)
    by_file = {}
    for split, path, action, reason in rows:
        assert split == "dev-clean"
        by_file.setdefault(Path(path).name, []).append((action, reason))
    assert by_file[f"{utt(900)}.flac"][0][0] == "skipped" and "cannot read" in by_file[f"{utt(900)}.flac"][0][1]
    assert by_file[f"{utt(901)}.flac"] == [("skipped", "file is empty (0 bytes); re-create or remove it")]
    assert by_file[f"{utt(902)}.wav"][0][0] == "skipped" and "no samples" in by_file[f"{utt(902)}.wav"][0][1]
    assert sorted(a for a, _ in by_file[f"{utt(903)}.flac"]) == ["mixed_down", "resampled"]
    assert by_file[f"{utt(904)}.flac"][0][0] == "skipped" and "no transcript" in by_file[f"{utt(904)}.flac"][0][1]
    assert by_file[f"{speaker}-{chap}.trans.txt"] == [("skipped", f"transcript line {utt(905)} has no audio file")]

    manifest = read_manifest(out / "dev-clean.tsv")
    names = [Path(p).name for p in manifest.paths]
    assert len(manifest) == good + 1 and f"{utt(903)}.flac" in names
    size = manifest.sizes[names.index(f"{utt(903)}.flac")]
    wave, _ = load_audio(root / manifest.paths[names.index(f"{utt(903)}.flac")])
    assert size == wave.numel() == int(np.ceil(stereo.shape[0] * 16000 / 44100))
    assert len(read_lines(out / "dev-clean.ltr")) == len(manifest)

    # a header-valid but truncated file passes the header check and is caught by --verify
    data = (chapter / f"{utt(0)}.flac").read_bytes()
    (chapter / f"{utt(0)}.flac").write_bytes(data[: len(data) // 3])
    prepare_librispeech(root, out)
    assert len(read_manifest(out / "dev-clean.tsv")) == good + 1
    result = prepare_librispeech(root, out, verify=True, workers=1)
    assert result.items["dev-clean"] == good
    assert any(r.action == "skipped" and r.path.endswith(f"{utt(0)}.flac") for r in result.report)


def test_nothing_usable_exits_nonzero(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.flac").write_bytes(b"garbage" * 10)
    assert main(["prepare", "audio", str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    assert "nothing usable" in capsys.readouterr().err
    assert _report(tmp_path / "out")[0][2] == "skipped"
    spk = tmp_path / "ls" / "dev-clean" / "1" / "2"
    spk.mkdir(parents=True)
    (spk / "1-2-0000.flac").write_bytes(b"")
    (spk / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    assert main(["prepare", "librispeech", str(tmp_path / "ls"), str(tmp_path / "out2")]) == 1
    with pytest.raises(ValueError, match="not found"):
        prepare_librispeech(tmp_path / "ls", tmp_path / "out3", splits=["train-other-500"])


def test_prepare_audio_folder(corpus, tmp_path):
    out = tmp_path / "out"
    # the CLI once through a real subprocess
    proc = subprocess.run([sys.executable, "-m", "speechcl", "prepare", "audio", str(corpus), str(out),
                           "--valid-percent", "0.1", "--ext", "flac"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    train, valid = read_manifest(out / "train.tsv"), read_manifest(out / "valid.tsv")
    everything = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*.flac"))
    assert sorted(train.paths + valid.paths) == everything
    assert len(valid) == round(0.1 * len(everything)) and set(train.paths).isdisjoint(valid.paths)
    assert train.paths == sorted(train.paths)
    again = prepare_audio(corpus, tmp_path / "again", valid_percent=0.1, extensions=["FLAC"])
    assert read_manifest(tmp_path / "again" / "valid.tsv").paths == valid.paths  # seeded
    assert prepare_audio(corpus, tmp_path / "none", extensions=["wav"]).usable == 0
    assert again.usable == len(everything)


def test_prepare_audio_and_extract_find_the_same_files(tmp_path):
    from speechcl.features.inputs import discover_inputs

    folder = tmp_path / "audio"
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 4000).astype(np.float32)
    for rel in ("a/one.flac", "a/two.wav", "b/c/three.ogg", "four.OGG", ".hidden/five.flac", ".six.wav"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / rel, wave, 16000, format="OGG" if rel.lower().endswith(".ogg") else None)
    (folder / "notes.txt").write_text("not audio")
    assert main(["prepare", "audio", str(folder), str(tmp_path / "out"), "--valid-percent", "0"]) == 0
    prepared = read_manifest(tmp_path / "out" / "train.tsv").paths
    extracted = [str(Path(item.path).relative_to(folder)) for item in discover_inputs(folder)]
    assert sorted(prepared) == sorted(extracted) == ["a/one.flac", "a/two.wav", "b/c/three.ogg", "four.OGG"]


def test_random_subsets(corpus, prepared, tmp_path):
    out = tmp_path / "out"
    code = main(["prepare", "librispeech", str(corpus), str(out), "--splits", SMALL.train_split,
                 "--subset", f"{SMALL.train_split}:20s", "--subset", f"{SMALL.train_split}:40s", "--seed", "3"])
    assert code == 0
    full = read_manifest(out / f"{SMALL.train_split}.tsv")
    small = read_manifest(out / f"{SMALL.train_split}-20s.tsv")
    large = read_manifest(out / f"{SMALL.train_split}-40s.tsv")
    assert set(small.paths) < set(large.paths) <= set(full.paths)
    for manifest, seconds in ((small, 20), (large, 40)):
        total = sum(manifest.sizes)
        assert seconds * 16000 <= total < seconds * 16000 + max(full.sizes)
        assert len(read_lines(out / f"{SMALL.train_split}-{seconds}s.ltr")) == len(manifest)
    assert not (out / "dev-clean.tsv").exists()


def test_select_subset_is_pure():
    sizes = list(range(1, 101))
    a = select_subset(sizes, 500, seed=1)
    assert a == select_subset(sizes, 500, seed=1) and a == sorted(a)
    assert sum(sizes[i] for i in a) >= 500 and sum(sizes[i] for i in a[:-1]) < 500 + 100
    assert set(a) <= set(select_subset(sizes, 1000, seed=1))
    assert select_subset(sizes, 10**9, seed=0) == list(range(100))
    assert parse_duration("10m") == 600 and parse_duration("1.5h") == 5400 and parse_duration("90s") == 90
    assert parse_subset_spec("train-clean-100:1h").name == "train-clean-100-1h"
    for bad in ("10", "ten minutes", "0m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError, match="SPLIT:DURATION"):
        parse_subset_spec("10m")


def test_librilight_layout(corpus, tmp_path):
    root = tmp_path / "LibriSpeech"
    shutil.copytree(corpus / "dev-clean", root / "dev-clean")
    chapters = sorted((corpus / SMALL.train_split).glob("*/*"))
    ll = root / "librispeech_finetuning"
    for chapter, part in zip(chapters, ("1h/0/clean", "1h/1/other", "9h/clean", "9h/other")):
        shutil.copytree(chapter, ll / part / chapter.parent.name / chapter.name)
    result = prepare_librispeech(root, tmp_path / "out")
    assert set(result.items) == {"dev-clean", "librilight-10m", "librilight-1h", "librilight-10h"}
    sets = {name: read_manifest(tmp_path / "out" / f"{name}.tsv") for name in ("librilight-10m", "librilight-1h",
                                                                               "librilight-10h")}
    assert set(sets["librilight-10m"].paths) < set(sets["librilight-1h"].paths) < set(sets["librilight-10h"].paths)
    assert all(p.startswith("librispeech_finetuning/1h/0/") for p in sets["librilight-10m"].paths)
    assert len(sets["librilight-10h"]) == sum(len(list(c.glob("*.flac"))) for c in chapters[:4])


def test_cli_reports_user_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "librispeech", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no LibriSpeech splits" in capsys.readouterr().err
    assert main(["prepare", "librispeech", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert main(["prepare", "audio", str(tmp_path / "empty"), str(tmp_path / "o"), "--valid-percent", "2"]) == 2
    assert "valid_percent" in capsys.readouterr().err


def _split(data: Path, name: str, root: str, items: list[tuple[str, int, str]], labels=("wrd", "ltr")) -> None:
    """A prepared split written by hand: ``items`` are (relative path, samples, words)."""
    lines = [root] + [f"{p}\t{n}" for p, n, _ in items]
    (data / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    if "wrd" in labels:
        (data / f"{name}.wrd").write_text("".join(f"{w}\n" for _, _, w in items))
    if "ltr" in labels:
        (data / f"{name}.ltr").write_text("".join(f"{words_to_letters(w)}\n" for _, _, w in items))


def test_combine_splits_concatenates_manifests_and_labels(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _split(data, "a", "/corpus", [("a/1.flac", 100, "ONE"), ("a/2.flac", 200, "TWO WORDS")])
    _split(data, "b", "/corpus", [("b/3.flac", 300, "THREE")])
    assert main(["prepare", "combine", str(data), "ab", "a", "b"]) == 0
    assert "ab: 3 items from a, b with .wrd and .ltr labels" in capsys.readouterr().out
    combined = read_manifest(data / "ab.tsv")
    assert combined.root == "/corpus" and combined.paths == ["a/1.flac", "a/2.flac", "b/3.flac"]
    assert combined.sizes == [100, 200, 300]
    assert read_lines(data / "ab.wrd") == ["ONE", "TWO WORDS", "THREE"]
    assert read_lines(data / "ab.ltr") == read_lines(data / "a.ltr") + read_lines(data / "b.ltr")
    # recombined from parts without letter labels: the old ab.ltr would be misaligned, so it goes
    _split(data, "c", "/corpus", [("c/4.flac", 400, "FOUR")], labels=("wrd",))
    _split(data, "d", "/corpus", [("d/5.flac", 500, "FIVE")], labels=("wrd",))
    assert main(["prepare", "combine", str(data), "ab", "c", "d"]) == 0
    assert read_lines(data / "ab.wrd") == ["FOUR", "FIVE"] and not (data / "ab.ltr").exists()


def test_combine_splits_rebases_other_roots_and_keeps_every_file(tmp_path: Path) -> None:
    from speechcl.data.manifest import Manifest, combine_manifests

    parts = [Manifest("/data/LibriSpeech", ["train-clean-100/1.flac"], [10]),
             Manifest("/data/mine/wavs", ["x/2.wav"], [20])]
    combined = combine_manifests(parts)
    assert combined.root == "/data"
    assert [combined.full_path(i) for i in range(2)] == [parts[0].full_path(0), parts[1].full_path(0)]
    with pytest.raises(ValueError, match="absolute and relative"):
        combine_manifests([parts[0], Manifest("relative/root", ["y.wav"], [5])])
    with pytest.raises(ValueError, match="at least one"):
        combine_manifests([])


def test_combine_splits_errors_name_the_file(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _split(data, "a", "/c", [("1.flac", 1, "A")])
    _split(data, "nolabels", "/c", [("2.flac", 2, "B")], labels=("wrd",))
    assert main(["prepare", "combine", str(data), "x", "a", "missing"]) == 2
    assert "missing.tsv not found" in capsys.readouterr().err
    assert main(["prepare", "combine", str(data), "x", "a", "nolabels"]) == 2
    assert ".ltr labels exist for ['a'] but not for ['nolabels']" in capsys.readouterr().err
    assert main(["prepare", "combine", str(data), "a", "a", "nolabels"]) == 2
    assert "also one of the parts" in capsys.readouterr().err
    (data / "a.wrd").write_text("A\nEXTRA\n")
    assert main(["prepare", "combine", str(data), "x", "a", "nolabels"]) == 2
    assert "a.wrd has 2 lines for 1 items" in capsys.readouterr().err
    assert not (data / "x.tsv").exists()  # nothing written on error
