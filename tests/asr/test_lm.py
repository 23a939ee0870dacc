"""The Kneser-Ney estimator, ARPA round trip, KenLM loading and the lexicon writer."""

from __future__ import annotations

import random

import pytest

from speechcl.asr.lm import (
    BOS,
    EOS,
    UNK,
    arpa_vocabulary,
    build_lm,
    estimate_kneser_ney,
    read_arpa,
    write_arpa,
    write_lexicon,
)

WORDS = "THE CAT SAT ON A MAT DOG RAN".split()


def corpus(n: int = 150, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(0, 6))] for _ in range(n)]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_probabilities_normalise_for_every_context(tmp_path, order):
    lm = estimate_kneser_ney(corpus(), order)
    write_arpa(lm, tmp_path / "lm.arpa")
    loaded = read_arpa(tmp_path / "lm.arpa")  # score what was written, not the in-memory tables
    assert loaded.order == order
    predictable = [w for w in loaded.vocabulary if w != BOS]
    assert set(predictable) == set(WORDS) | {EOS, UNK}
    contexts = [(), (BOS,), ("THE",), (BOS, "DOG"), ("THE", "CAT"), ("MAT", "MAT", "ON"), ("UNSEEN", "THE")]
    for ctx in contexts:
        total = sum(10 ** loaded.logprob(w, ctx) for w in predictable)
        assert total == pytest.approx(1.0, abs=1e-4), ctx
    assert loaded.logprob("ZEBRA", ("THE",)) == loaded.logprob(UNK, ("THE",))


def test_kneser_ney_prefers_seen_continuations(tmp_path):
    lm = estimate_kneser_ney([["THE", "CAT", "SAT"]] * 5 + [["A", "CUT"]] * 2, 3)
    assert lm.logprob("CAT", (BOS, "THE")) > lm.logprob("CUT", (BOS, "THE"))
    assert lm.sentence_logprob(["THE", "CAT", "SAT"]) > lm.sentence_logprob(["THE", "CUT", "SAT"])


def test_arpa_file_layout(tmp_path):
    lm = estimate_kneser_ney(corpus(30), 2)
    path = tmp_path / "lm.arpa"
    write_arpa(lm, path)
    text = path.read_text()
    assert text.lstrip().startswith("\\data\\\nngram 1=")
    assert "\\1-grams:" in text and "\\2-grams:" in text and text.rstrip().endswith("\\end\\")
    for line in text.split("\\2-grams:")[1].splitlines()[1:-2]:
        if line:
            assert len(line.split("\t")) == 2  # top order: no backoff weights
    assert arpa_vocabulary(path) == lm.vocabulary


def test_estimator_and_reader_errors(tmp_path):
    with pytest.raises(ValueError, match="order"):
        estimate_kneser_ney([["A"]], 0)
    with pytest.raises(ValueError, match="no sentences"):
        estimate_kneser_ney([], 3)
    with pytest.raises(ValueError, match="reserved"):
        estimate_kneser_ney([["A", "</s>"]], 2)
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1\tA\n\\end\\\n")
    with pytest.raises(ValueError, match="declares 3 1-grams"):
        read_arpa(bad)


def test_kenlm_through_flashlight_loads_the_arpa_file(tmp_path):
    kenlm_module = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    fl_dict = pytest.importorskip("flashlight.lib.text.dictionary")
    lm = estimate_kneser_ney(corpus(), 3)
    path = tmp_path / "lm.arpa"
    write_arpa(lm, path)
    words = fl_dict.Dictionary()
    for w in lm.vocabulary:
        words.add_entry(w)
    kenlm = kenlm_module.KenLM(str(path), words)
    state = kenlm.start(False)
    history = [BOS]
    for word in ["THE", "CAT", "ON", "MAT"]:
        state, value = kenlm.score(state, words.get_index(word))
        assert value == pytest.approx(lm.logprob(word, history), abs=1e-4)  # KenLM scores in log10
        history.append(word)
    _, value = kenlm.finish(state)
    assert value == pytest.approx(lm.logprob(EOS, history), abs=1e-4)


def test_lexicon_spells_words_with_a_trailing_boundary(tmp_path):
    path = tmp_path / "lexicon.txt"
    n = write_lexicon(["HELLO", "WORLD", BOS, EOS, UNK, "HELLO", "CAFÉ"], path, symbols=list("|HELOWRD"))
    assert n == 2
    assert path.read_text().splitlines() == ["HELLO H E L L O |", "WORLD W O R L D |"]


def test_build_lm_from_wrd_file(tmp_path):
    text = tmp_path / "train.wrd"
    text.write_text("the cat sat\nTHE  DOG RAN\n\n")
    lm, n = build_lm(text, tmp_path / "lm.arpa", order=2, lexicon_out=tmp_path / "lex.txt")
    assert n == 5 and lm.order == 2
    loaded = read_arpa(tmp_path / "lm.arpa")
    for written, estimated in zip(loaded.logprobs, lm.logprobs):
        assert written.keys() == estimated.keys()
        assert all(abs(written[g] - estimated[g]) < 1e-5 for g in written)  # 6 significant digits
    assert (tmp_path / "lex.txt").read_text().splitlines()[0] == "CAT C A T |"
    empty = tmp_path / "empty.wrd"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no words"):
        build_lm(empty, tmp_path / "x.arpa")
