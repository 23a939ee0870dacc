"""Beam search through torchaudio's ctc_decoder, with and without an n-gram LM."""

from __future__ import annotations

import pytest
import torch

from speechcl.asr.decode import BeamSearchDecoder, GreedyDecoder, build_decoder
from speechcl.asr.evaluate import Skipped, tune_decoder
from speechcl.asr.lm import build_lm
from speechcl.data.labels import Dictionary

pytest.importorskip("flashlight.lib.text.decoder")

D = Dictionary(list("|ETAHCSUNR"))


def spoken(text: str, ambiguous: dict[int, dict[str, float]] | None = None) -> torch.Tensor:
    """Log-posteriors ``[1, T, V]`` of a clear CTC rendering of ``text`` (letter, blank per symbol,
    a trailing ``|``); ``ambiguous`` replaces the distribution at the frame of the n-th symbol."""
    symbols = list(text.replace(" ", "|")) + ["|"]
    rows: list[dict[int, float]] = []
    previous = None
    for n, s in enumerate(symbols):
        if s == previous:
            rows.append({0: 0.98})
        dist = {D.index(k): p for k, p in ambiguous[n].items()} if ambiguous and n in ambiguous else {D.index(s): 0.9}
        rows.append({**dist, 0: 1.0 - sum(dist.values())})
        rows.append({0: 0.9})
        previous = s
    probs = torch.full((1, len(rows), len(D)), 1e-4)
    for t, row in enumerate(rows):
        for k, p in row.items():
            probs[0, t, k] = p
    return probs.log()


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    text = root / "train.wrd"
    text.write_text("THE CAT SAT\nTHE CAT RAN\nA CUT\nTHE CAT\nA CUT RAN\n" * 3)
    build_lm(text, root / "lm.arpa", order=3, lexicon_out=root / "lexicon.txt", symbols=D.symbols)
    return root / "lm.arpa", root / "lexicon.txt"


def test_beam_without_lm_matches_greedy_on_clear_input():
    logits = spoken("THE CAT SAT")
    assert GreedyDecoder(D)(logits) == ["THE CAT SAT"]
    assert BeamSearchDecoder(D, beam_size=8)(logits) == ["THE CAT SAT"]


def test_lm_fixes_an_acoustically_ambiguous_word(lm_files):
    arpa, lexicon = lm_files
    # the vowel of CAT (symbol 5 of "THE|CAT|SAT|") sounds slightly more like U
    logits = spoken("THE CAT SAT", {5: {"U": 0.5, "A": 0.4}})
    assert GreedyDecoder(D)(logits) == ["THE CUT SAT"]
    assert BeamSearchDecoder(D, beam_size=16)(logits) == ["THE CUT SAT"]
    with_lm = BeamSearchDecoder(D, beam_size=16, lm=arpa, lexicon=lexicon, lm_weight=1.0)
    assert with_lm(logits) == ["THE CAT SAT"]
    # without --lexicon the ARPA file's own words serve as the lexicon
    assert build_decoder(D, lm=arpa, lm_weight=1.0)(logits) == ["THE CAT SAT"]


def test_beam_decodes_batches_with_lengths(lm_files):
    arpa, _ = lm_files
    a, b = spoken("THE CAT"), spoken("A CUT RAN")
    logits = torch.full((2, b.shape[1], len(D)), -10.0)
    logits[0, : a.shape[1]] = a[0]
    logits[1] = b[0]
    decoder = BeamSearchDecoder(D, beam_size=8, lm=arpa, lm_weight=0.5)
    assert decoder(logits, torch.tensor([a.shape[1], b.shape[1]])) == ["THE CAT", "A CUT RAN"]


def test_beam_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        BeamSearchDecoder(D, lm=tmp_path / "missing.arpa")
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0")
    with pytest.raises(ValueError, match="--lexicon"):
        BeamSearchDecoder(D, lm=binary)
    with pytest.raises(ValueError, match="word boundary"):
        BeamSearchDecoder(Dictionary(list("AB")))


def test_lexicon_entries_outside_the_dictionary_are_dropped(lm_files, tmp_path):
    arpa, lexicon = lm_files
    extended = tmp_path / "lexicon.txt"
    extended.write_text(lexicon.read_text() + "ZOO Z O O |\n")
    decoder = BeamSearchDecoder(D, beam_size=16, lm=arpa, lexicon=extended, lm_weight=1.0)
    assert decoder(spoken("THE CAT SAT", {5: {"U": 0.5, "A": 0.4}})) == ["THE CAT SAT"]


def test_blank_penalty_of_beam_search_matches_greedy_and_survives_reweighting(lm_files):
    """A letter whose frame blank narrowly wins is emitted by beam search (no LM) once the penalty exceeds
    the margin, as by greedy decoding; a reweighted decoder keeps the penalty or takes a new one."""
    logits = spoken("A CUT", {3: {"U": 0.4}})  # blank 0.6 over U at the vowel's frame: log(1.5) = 0.41
    assert GreedyDecoder(D)(logits) == ["A CT"]
    assert BeamSearchDecoder(D, beam_size=8)(logits) == ["A CT"]
    for penalty in (0.5, 1.0):
        assert BeamSearchDecoder(D, beam_size=8, blank_penalty=penalty)(logits) == ["A CUT"]
        assert GreedyDecoder(D, blank_penalty=penalty)(logits) == ["A CUT"]
    arpa, lexicon = lm_files
    base = BeamSearchDecoder(D, beam_size=8, lm=arpa, lexicon=lexicon, lm_weight=0.0, blank_penalty=0.5)
    assert base.reweighted(0.0, 0.0).blank_penalty == 0.5
    assert base.reweighted(0.0, 0.0, 0.0)(logits) == BeamSearchDecoder(D, beam_size=8, lm=arpa, lexicon=lexicon,
                                                                       lm_weight=0.0)(logits)


def test_tuning_keeps_the_lm_weight_with_the_fewest_errors(lm_files):
    arpa, lexicon = lm_files
    # utterance 0: CAT sounds like CUT, which only the LM corrects; utterance 1 is clear
    logits = [spoken("THE CAT SAT", {5: {"U": 0.5, "A": 0.4}})[0], spoken("A CUT RAN")[0], Skipped("too short")]
    refs = ["THE CAT SAT", "A CUT RAN", ""]
    built = []

    def make(lm_weight: float, word_score: float, blank_penalty: float) -> BeamSearchDecoder:
        assert blank_penalty == 0.0
        built.append((lm_weight, word_score))
        return BeamSearchDecoder(D, beam_size=16, lm=arpa, lexicon=lexicon, lm_weight=lm_weight,
                                 word_score=word_score)

    best, points = tune_decoder(logits, refs, make, [0.0, 1.0], [0.0, 0.5], progress=False)
    assert built == [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)]  # LM weights outer, grid order
    assert [(p.lm_weight, p.word_score) for p in points] == built
    assert points[0].score.words.errors == 1  # without the LM: THE CUT SAT
    assert (best.lm_weight, best.word_score) == (1.0, 0.0)  # error-free; ties go to the earlier point
    assert best.score.wer == 0.0 and best.to_dict()["wer"] == 0.0
    with pytest.raises(ValueError, match="2 reference"):
        tune_decoder(logits, refs[:2], make, [1.0], [0.0], progress=False)
    with pytest.raises(ValueError, match="at least one"):
        tune_decoder(logits, refs, make, [], [0.0], progress=False)


def test_tuning_minimises_the_chosen_metric():
    """Two settings where WER and CER disagree: every word slightly wrong (WER 100%, CER 27%) against a word
    dropped (WER 33%, CER 36%); the metric decides, the other one breaks ties."""
    canned = {0.0: "THX CXT SXT", 1.0: "THE CAT", 2.0: "THE CAT"}

    def make(lm_weight: float, word_score: float, blank_penalty: float):
        return lambda logits, lengths=None: [canned[blank_penalty]]

    logits, refs = [torch.zeros(3, len(D))], ["THE CAT SAT"]
    by_wer, _ = tune_decoder(logits, refs, make, [0.0], [0.0], list(canned), metric="wer", progress=False)
    by_cer, points = tune_decoder(logits, refs, make, [0.0], [0.0], list(canned), metric="cer", progress=False)
    assert [p.blank_penalty for p in points] == [0.0, 1.0, 2.0]
    assert by_wer.blank_penalty == 1.0 and by_cer.blank_penalty == 0.0  # ties (1.0 vs 2.0) go to the earlier
    with pytest.raises(ValueError, match="unknown tuning metric"):
        tune_decoder(logits, refs, make, [0.0], [0.0], [0.0], metric="per", progress=False)


def test_reweighted_decoder_equals_a_fresh_one(lm_files):
    arpa, lexicon = lm_files
    logits = torch.cat([spoken("THE CAT SAT", {5: {"U": 0.5, "A": 0.4}}), spoken("THE CAT SAT")])
    base = BeamSearchDecoder(D, beam_size=16, lm=arpa, lexicon=lexicon, lm_weight=0.0, word_score=0.0)
    for weight, score in [(1.0, 0.0), (0.0, 0.0), (3.0, -2.0), (0.5, 2.0)]:
        shared = base.reweighted(weight, score)
        fresh = BeamSearchDecoder(D, beam_size=16, lm=arpa, lexicon=lexicon, lm_weight=weight, word_score=score)
        assert (shared.lm_weight, shared.word_score) == (weight, score)
        assert shared(logits) == fresh(logits)
        assert shared._decoder.lm is base._decoder.lm
    assert base.reweighted(1.0, 0.0)(logits)[0] == "THE CAT SAT" and base(logits)[0] == "THE CUT SAT"
