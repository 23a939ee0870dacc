import pytest

from speechcl.data.labels import Dictionary, count_symbols, letters_to_words, words_to_letters, write_dict
from speechcl.data.manifest import Manifest, read_manifest, write_manifest


def test_letters():
    assert words_to_letters("HELLO WORLD") == "H E L L O | W O R L D |"
    assert words_to_letters(" it's  fine ") == "I T ' S | F I N E |"
    assert letters_to_words("H E L L O | W O R L D |") == "HELLO WORLD"
    assert count_symbols(["A B |", "B |"]) == [("B", 2), ("|", 2), ("A", 1)]


def test_dictionary_layout_and_roundtrip(tmp_path):
    write_dict(tmp_path / "dict.ltr.txt", [("|", 10), ("E", 5), ("T", 3), ("'", 1)])
    d = Dictionary.load(tmp_path / "dict.ltr.txt")
    assert d.symbols[:4] == ["<blank>", "<pad>", "</s>", "<unk>"]
    assert (d.blank_index, d.pad_index, d.eos_index, d.unk_index) == (0, 1, 2, 3)
    assert d.index("|") == 4 and d.index("E") == 5 and len(d) == 8
    ids = d.encode("T E E | T ' |")
    assert ids == [6, 5, 5, 4, 6, 7, 4]
    assert d.decode(ids) == "T E E | T ' |" and d.decode_words(ids) == "TEE T'"
    assert d.encode("Q |") == [3, 4]
    assert d.decode([0, 6, 1, 2, 4]) == "T |"
    with pytest.raises(ValueError, match="outside"):
        d.decode([99])


def test_dictionary_errors(tmp_path):
    (tmp_path / "bad.txt").write_text("A 1\nB\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        Dictionary.load(tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="twice"):
        Dictionary(["A", "A"])


def test_manifest_roundtrip(tmp_path):
    m = Manifest("/data", ["a/b.flac", "c.wav"], [16000, 320])
    write_manifest(tmp_path / "x.tsv", m)
    assert (tmp_path / "x.tsv").read_text() == "/data\na/b.flac\t16000\nc.wav\t320\n"
    back = read_manifest(tmp_path / "x.tsv")
    assert back == m and back.full_path(1) == "/data/c.wav" and back.subset([1]).paths == ["c.wav"]
    (tmp_path / "bad.tsv").write_text("/data\na.flac 12\n")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        read_manifest(tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match="tabs"):
        write_manifest(tmp_path / "y.tsv", Manifest("/", ["a\tb"], [1]))
