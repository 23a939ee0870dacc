"""The Kneser-Ney estimator, ARPA round trip, KenLM loading and the lexicon writer."""

from __future__ import annotations

import math
import random
from fractions import Fraction as F

import pytest

from speechcl.asr.lm import (
    BOS,
    EOS,
    UNK,
    arpa_vocabulary,
    build_lm,
    estimate_kneser_ney,
    modified_kneser_ney_discounts,
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


def assert_log10(written: float, expected: F) -> None:
    """An ARPA value (6 significant digits) against the log10 of an exact probability."""
    assert written == pytest.approx(math.log10(expected), rel=5e-6, abs=1e-12)


def test_modified_kneser_ney_bigram_by_hand(tmp_path):
    """A bigram model worked out on paper: three discounts per order, continuation counts below the top."""
    sentences = [["A", "A"]] * 3 + [["A", "B"], ["B", "B"]] + [["C"]] * 2 + [[]]
    # Bigram (top order) raw counts, <s> A A </s> x3, <s> A B </s>, <s> B B </s>, <s> C </s> x2, <s> </s>:
    #   <s> A 4 | <s> B 1 | <s> C 2 | <s> </s> 1 | A A 3 | A B 1 | A </s> 3 | B B 1 | B </s> 2 | C </s> 2
    # count-of-counts n1..n4 = 4, 3, 2, 1:
    #   1: <s> B, <s> </s>, A B, B B | 2: <s> C, B </s>, C </s> | 3: A A, A </s> | 4: <s> A
    y = F(4, 4 + 2 * 3)
    b1, b2, b3 = 1 - 2 * y * F(3, 4), 2 - 3 * y * F(2, 3), 3 - 4 * y * F(1, 2)
    assert (b1, b2, b3) == (F(2, 5), F(6, 5), F(11, 5))
    # Unigram continuation counts (distinct words before it): A {<s>, A} 2, B {<s>, A, B} 3, C {<s>} 1,
    # </s> {<s>, A, B, C} 4, <unk> 0; count-of-counts n1..n4 = 1, 1, 1, 1
    y = F(1, 1 + 2 * 1)
    u1, u2, u3 = 1 - 2 * y * F(1, 1), 2 - 3 * y * F(1, 1), 3 - 4 * y * F(1, 1)
    assert (u1, u2, u3) == (F(1, 3), F(1), F(5, 3))
    # unigrams: total 2 + 3 + 1 + 4 = 10, interpolated with 1/5 (A, B, C, </s>, <unk>)
    gamma = (u2 + u3 + u1 + u3) / 10
    uniform = F(1, 5)
    p = {"A": (2 - u2) / 10 + gamma * uniform, "B": (3 - u3) / 10 + gamma * uniform,
         "C": (1 - u1) / 10 + gamma * uniform, EOS: (4 - u3) / 10 + gamma * uniform, UNK: gamma * uniform}
    assert (gamma, p["A"], p["B"], p["C"], p[EOS], p[UNK]) == (
        F(7, 15), F(29, 150), F(17, 75), F(4, 25), F(49, 150), F(7, 75))
    # bigram contexts: <s> (A 4, B 1, C 2, </s> 1; total 8), A (A 3, B 1, </s> 3; total 7),
    # B (B 1, </s> 2; total 3), C (</s> 2; total 2)
    backoff = {BOS: (b3 + b1 + b2 + b1) / 8, "A": (b3 + b1 + b3) / 7, "B": (b1 + b2) / 3, "C": b2 / 2}
    assert backoff == {BOS: F(21, 40), "A": F(24, 35), "B": F(8, 15), "C": F(3, 5)}
    bigram = {
        (BOS, "A"): (4 - b3) / 8 + backoff[BOS] * p["A"],
        (BOS, "C"): (2 - b2) / 8 + backoff[BOS] * p["C"],
        ("A", "A"): (3 - b3) / 7 + backoff["A"] * p["A"],
        ("A", "B"): (1 - b1) / 7 + backoff["A"] * p["B"],
        ("B", EOS): (2 - b2) / 3 + backoff["B"] * p[EOS],
        ("C", EOS): (2 - b2) / 2 + backoff["C"] * p[EOS],
    }
    assert list(bigram.values()) == [F(653, 2000), F(23, 125), F(216, 875), F(211, 875), F(496, 1125),
                                     F(149, 250)]

    write_arpa(estimate_kneser_ney(sentences, 2), tmp_path / "lm.arpa")
    lm = read_arpa(tmp_path / "lm.arpa")
    assert [len(g) for g in lm.logprobs] == [6, 10]  # <s> A B C </s> <unk>; the ten bigrams
    for word, value in p.items():
        assert_log10(lm.logprobs[0][(word,)], value)
    for gram, value in bigram.items():
        assert_log10(lm.logprobs[1][gram], value)
    for word, value in backoff.items():
        assert_log10(lm.backoffs[(word,)], value)
    assert_log10(lm.logprob("A", ["C"]), backoff["C"] * p["A"])  # C A is unseen: backoff to p(A)


def test_tiny_trigram_uses_fallback_discounts_and_raw_counts_after_bos(tmp_path):
    """Too little data for count-of-counts: every order discounts 1/2, 1, 3/2 (1, 2, 3+)."""
    sentences = [["A", "B"], ["A", "B"], ["B"]]
    d1, d2 = F(1, 2), F(1)
    # trigrams (raw): <s> A B 2, A B </s> 2, <s> B </s> 1 -> n3 = 0, fallback
    # bigrams: <s> A 2 and <s> B 1 keep raw counts (nothing comes before <s>); A B 1 ({<s>}) and
    #   B </s> 2 ({A, <s>}) are continuation counts (their raw counts are 2 and 3) -> n3 = 0, fallback
    # unigrams (continuation): A 1 ({<s>}), B 2 ({<s>, A}), </s> 1 ({B}) -> n3 = 0, fallback
    gamma = (d1 + d2 + d1) / 4
    p = {"A": (1 - d1) / 4 + gamma / 4, "B": (2 - d2) / 4 + gamma / 4, EOS: (1 - d1) / 4 + gamma / 4,
         UNK: gamma / 4}
    assert list(p.values()) == [F(1, 4), F(3, 8), F(1, 4), F(1, 8)]
    backoff = {(BOS,): (d2 + d1) / 3, ("A",): d1 / 1, ("B",): d2 / 2, (BOS, "A"): d2 / 2, ("A", "B"): d2 / 2,
               (BOS, "B"): d1 / 1}
    assert set(backoff.values()) == {F(1, 2)}
    bigram = {(BOS, "A"): (2 - d2) / 3 + backoff[(BOS,)] * p["A"],
              (BOS, "B"): (1 - d1) / 3 + backoff[(BOS,)] * p["B"],
              ("A", "B"): (1 - d1) / 1 + backoff[("A",)] * p["B"],
              ("B", EOS): (2 - d2) / 2 + backoff[("B",)] * p[EOS]}
    assert list(bigram.values()) == [F(11, 24), F(17, 48), F(11, 16), F(5, 8)]
    trigram = {(BOS, "A", "B"): (2 - d2) / 2 + backoff[(BOS, "A")] * bigram[("A", "B")],
               ("A", "B", EOS): (2 - d2) / 2 + backoff[("A", "B")] * bigram[("B", EOS)],
               (BOS, "B", EOS): (1 - d1) / 1 + backoff[(BOS, "B")] * bigram[("B", EOS)]}
    assert list(trigram.values()) == [F(27, 32), F(13, 16), F(13, 16)]

    write_arpa(estimate_kneser_ney(sentences, 3), tmp_path / "lm.arpa")
    lm = read_arpa(tmp_path / "lm.arpa")
    for n, table in enumerate([{(w,): v for w, v in p.items()}, bigram, trigram]):
        assert lm.logprobs[n].keys() - {(BOS,)} == table.keys()
        for gram, value in table.items():
            assert_log10(lm.logprobs[n][gram], value)
    for ctx, value in backoff.items():
        assert_log10(lm.backoffs[ctx], value)
    # A after <s> A: no trigram, no bigram A A -> gamma(<s> A) gamma(A) p(A)
    assert_log10(lm.logprob("A", [BOS, "A"]), backoff[(BOS, "A")] * backoff[("A",)] * p["A"])


def test_discounts_from_count_of_counts():
    assert modified_kneser_ney_discounts([1] * 4 + [2] * 3 + [3] * 2 + [4, 7]) == pytest.approx(
        (2 / 5, 6 / 5, 11 / 5))  # n4 = 1; counts above 4 only fill the 3+ class
    assert modified_kneser_ney_discounts([1, 2, 3]) == pytest.approx((1 / 3, 1, 3))  # n4 = 0: D3+ = 3
    fallback = (0.5, 1.0, 1.5)
    assert modified_kneser_ney_discounts([1, 1, 2, 2]) == fallback  # no adjusted count of 3
    assert modified_kneser_ney_discounts([]) == fallback
    # n1..n3 = 1, 1, 5: D2 = 2 - 3 (1/3) 5 < 0, out of range
    assert modified_kneser_ney_discounts([1, 2] + [3] * 5) == fallback


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
