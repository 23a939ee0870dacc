"""The fuzzed folder (and broken LibriSpeech trees) through ``prepare``: every bad file is kept out of the
manifests and named in the report, the run exits 0, and nothing but the outputs is left behind."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcl.audio import load_audio
from speechcl.cli import main
from speechcl.data.labels import read_lines
from speechcl.data.manifest import read_manifest
from speechcl.data.prepare import MIN_SAMPLES, REPORT_NAME, prepare_audio, prepare_librispeech
from speechcl.models.config import BASE_CONV_LAYERS
from speechcl.models.feature_encoder import conv_geometry
from speechcl.testing import fuzz
from speechcl.testing.fuzz import HEADER_VERDICTS, write_fuzzed_folder

# words the report's reason holds for each verdict of the fuzzed folder
REASON_WORDS = {
    "empty": "file is empty",
    "no-samples": "no samples",
    "too-short": "too short",
    "unreadable": "cannot read audio header",
    "undecodable": "cannot decode audio",
    "non-finite": "NaN or infinite",
}
OUTPUTS = {"train.tsv", "valid.tsv", REPORT_NAME}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("fuzzed")
    return folder, write_fuzzed_folder(folder, seed=3)


def _report(out: Path) -> dict[str, list[tuple[str, str]]]:
    lines = (out / REPORT_NAME).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "split\tpath\taction\treason"
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in lines[1:]:
        cells = line.split("\t")
        assert len(cells) == 4, line
        rows.setdefault(cells[1], []).append((cells[2], cells[3]))
    return rows


def _listed(out: Path) -> dict[str, int]:
    items = {}
    for name in ("train.tsv", "valid.tsv"):
        manifest = read_manifest(out / name)
        items.update(zip(manifest.paths, manifest.sizes))
    return items


def _skip_reason(rows: dict[str, list[tuple[str, str]]], path: str) -> str:
    skipped = [reason for action, reason in rows.get(path, []) if action == "skipped"]
    assert len(skipped) == 1, (path, rows.get(path))
    return skipped[0]


def test_verify_admits_exactly_the_good_files(fuzzed, tmp_path, capsys):
    folder, verdicts = fuzzed
    out = tmp_path / "out"
    assert main(["prepare", "audio", str(folder), str(out), "--verify", "--valid-percent", "0.2"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    listed = _listed(out)
    assert sorted(listed) == sorted(p for p, v in verdicts.items() if v == "ok")
    for path, size in listed.items():
        assert size == load_audio(folder / path)[0].numel() >= MIN_SAMPLES
    rows = _report(out)
    for path, verdict in verdicts.items():
        if verdict != "ok":
            assert REASON_WORDS[verdict] in _skip_reason(rows, path), (path, verdict)
    skipped = sum(v != "ok" for v in verdicts.values())
    assert f"{skipped} skipped" in captured.out
    assert {p.name for p in out.iterdir()} == OUTPUTS  # no temporary file left behind


def test_headers_only_keeps_out_every_file_whose_header_tells(fuzzed, tmp_path, capsys):
    folder, verdicts = fuzzed
    out = tmp_path / "out"
    assert main(["prepare", "audio", str(folder), str(out), "--valid-percent", "0"]) == 0
    assert "--verify decodes every file" in capsys.readouterr().out
    listed = _listed(out)
    assert sorted(listed) == sorted(p for p, v in verdicts.items() if v not in HEADER_VERDICTS)
    rows = _report(out)
    for path, verdict in verdicts.items():
        if verdict in HEADER_VERDICTS:
            assert REASON_WORDS[verdict] in _skip_reason(rows, path), (path, verdict)
        else:
            assert all(action != "skipped" for action, _ in rows.get(path, []))


def test_verify_in_worker_processes_gives_the_same_verdicts(fuzzed, tmp_path):
    folder, verdicts = fuzzed
    tree = tmp_path / "tree"
    for copy in range(4):  # more than 64 files: decoded by a process pool
        shutil.copytree(folder, tree / f"c{copy}")
    result = prepare_audio(tree, tmp_path / "out", valid_percent=0.0, verify=True, workers=2)
    assert sorted(_listed(tmp_path / "out")) == sorted(f"c{c}/{p}" for c in range(4)
                                                       for p, v in verdicts.items() if v == "ok")
    assert len(result.skipped()) == 4 * sum(v != "ok" for v in verdicts.values())


def test_min_samples_is_configurable(fuzzed, tmp_path, capsys):
    folder, verdicts = fuzzed
    assert MIN_SAMPLES == fuzz.MIN_SAMPLES == conv_geometry(BASE_CONV_LAYERS)[1]
    prepare_audio(folder, tmp_path / "none", valid_percent=0.0, verify=True, min_samples=0)
    short = {p for p, v in verdicts.items() if v == "too-short"}
    assert short and short <= set(_listed(tmp_path / "none"))
    prepare_audio(folder, tmp_path / "long", valid_percent=0.0, min_samples=25_000)
    assert all(n >= 25_000 for n in _listed(tmp_path / "long").values())
    rows = _report(tmp_path / "long")
    kept_out = [p for p, v in verdicts.items() if v == "ok" and p not in _listed(tmp_path / "long")]
    assert kept_out and all("min_samples=25000" in _skip_reason(rows, p) for p in kept_out)
    for corpus in ("audio", "librispeech"):
        assert main(["prepare", corpus, str(folder), str(tmp_path / "bad"), "--min-samples", "-1"]) == 2
        assert "min_samples must be" in capsys.readouterr().err


def test_names_a_manifest_cannot_hold_are_skipped(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    wave = np.zeros(1600, np.float32)
    sf.write(folder / "fine.wav", wave, 16000)
    sf.write(folder / "tab\there.wav", wave, 16000)
    sf.write(folder / "line\nbreak.wav", wave, 16000)
    sf.write(os.fsencode(folder) + b"/latin1-caf\xe9.wav", wave, 16000)
    result = prepare_audio(folder, tmp_path / "out", valid_percent=0.0)
    assert _listed(tmp_path / "out") == {"fine.wav": 1600}
    assert len(result.skipped()) == 3
    rows = _report(tmp_path / "out")  # still one line per row, and valid UTF-8
    assert sum("rename the file" in _skip_reason(rows, p) for p in rows) == 3


def test_progress_bar_names_the_check(fuzzed, tmp_path, capsys):
    folder, _ = fuzzed
    prepare_audio(folder, tmp_path / "out", verify=True, progress=True)
    assert "decoding audio" in capsys.readouterr().err


def _libri_tree(root: Path, fuzzed_folder: Path) -> tuple[Path, list[str]]:
    chapter = root / "dev-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    ids = [f"1-2-{n:04d}" for n in range(5)]
    for utt, name in zip(ids, ["good_0.flac", "good_1.wav", "nan.wav", "truncated.flac", "int32.wav"]):
        shutil.copy(fuzzed_folder / name, chapter / f"{utt}{Path(name).suffix}")
    lines = [f"{ids[0]} HELLO WORLD".encode(), f"{ids[1]} A CAF".encode() + b"\xe9 LATIN ONE",
             f"{ids[2]} NOT A NUMBER".encode(), f"{ids[3]} CUT SHORT".encode(), f"{ids[4]} GOOD AGAIN".encode()]
    (chapter / "1-2.trans.txt").write_bytes(b"\n".join(lines) + b"\n")
    return chapter, ids


def test_librispeech_bad_audio_and_bad_utf8_transcript_are_reported(fuzzed, tmp_path, capsys):
    chapter, ids = _libri_tree(tmp_path / "Libri", fuzzed[0])
    out = tmp_path / "out"
    assert main(["prepare", "librispeech", str(tmp_path / "Libri"), str(out), "--verify"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    manifest = read_manifest(out / "dev-clean.tsv")
    assert [Path(p).name.split(".")[0] for p in manifest.paths] == [ids[0], ids[4]]
    assert read_lines(out / "dev-clean.wrd") == ["HELLO WORLD", "GOOD AGAIN"]
    rows = _report(out)
    rel = {utt: f"dev-clean/1/2/{next(chapter.glob(utt + '.*')).name}" for utt in ids}
    reason = _skip_reason(rows, rel[ids[1]])
    assert "not valid UTF-8" in reason and "dev-clean/1/2/1-2.trans.txt" in reason and "line 2" in reason
    assert "NaN or infinite" in _skip_reason(rows, rel[ids[2]])
    assert "cannot decode" in _skip_reason(rows, rel[ids[3]])
    # without --verify the audio faults need decoding to show, but the transcript is still refused
    prepare_librispeech(tmp_path / "Libri", tmp_path / "headers")
    names = [Path(p).name.split(".")[0] for p in read_manifest(tmp_path / "headers" / "dev-clean.tsv").paths]
    assert names == [ids[0], ids[2], ids[3], ids[4]]
    assert all("\ufffd" not in line for line in read_lines(tmp_path / "headers" / "dev-clean.wrd"))
