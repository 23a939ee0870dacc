"""Greedy CTC decoding: the best-path rule on hand-made logits and batch invariance on a real model."""

from __future__ import annotations

import sys

import pytest
import torch

from speechcl.asr.decode import BeamSearchDecoder, GreedyDecoder, build_decoder, ctc_collapse, greedy_decode
from speechcl.data.labels import Dictionary

from .conftest import noise


def one_hot_logits(rows: list[list[int]], vocab: int) -> torch.Tensor:
    """[B, T, V] logits with a peak at each given index (rows padded with blank frames)."""
    t = max(len(r) for r in rows)
    logits = torch.zeros(len(rows), t, vocab)
    for b, row in enumerate(rows):
        padded = row + [0] * (t - len(row))
        for i, k in enumerate(padded):
            logits[b, i, k] = 5.0
    return logits


def test_ctc_collapse_merges_repeats_then_drops_blanks():
    assert ctc_collapse([5, 5, 0, 5, 6, 6, 0, 0, 7]) == [5, 5, 6, 7]
    assert ctc_collapse([0, 0, 0]) == []
    assert ctc_collapse([]) == []


def test_greedy_decode_hand_made_logits_respects_lengths():
    logits = one_hot_logits([[0, 4, 4, 0, 4, 5, 5, 0, 6], [7, 7, 8, 9, 9, 9, 9, 9, 9]], vocab=10)
    ids = greedy_decode(logits, torch.tensor([9, 3]))
    assert ids == [[4, 4, 5, 6], [7, 8]]  # row 2: frames after its length are ignored


def test_greedy_text_maps_word_boundaries_and_drops_specials():
    d = Dictionary(list("|HIYO"))
    h, i, bar, y, o = (d.index(s) for s in "HI|YO")
    rows = [[0, h, h, 0, i, bar, 0, y, o, o, bar], [0, 0, 0], [bar, d.unk_index, h, i, bar, bar]]
    texts = GreedyDecoder(d)(one_hot_logits(rows, len(d)), torch.tensor([11, 3, 6]))
    assert texts == ["HI YO", "", "HI"]


def test_greedy_rejects_bad_shapes_and_dictionary_mismatch():
    d = Dictionary(list("|AB"))
    with pytest.raises(ValueError, match=r"\[batch, frames, vocab\]"):
        greedy_decode(torch.zeros(4, 7))
    with pytest.raises(ValueError, match="lengths must lie"):
        greedy_decode(torch.zeros(1, 4, 7), torch.tensor([5]))
    with pytest.raises(ValueError, match="dictionary has 7 symbols"):
        GreedyDecoder(d)(torch.zeros(1, 4, 9))
    assert isinstance(build_decoder(d), GreedyDecoder)


def test_blank_penalty_lets_a_letter_through_where_blank_narrowly_wins():
    """A frame where blank beats B by log(0.55/0.4) = 0.32 nats: a penalty above that margin emits the B,
    one below it does not; the penalty is the same as lowering the blank's column by hand."""
    d = Dictionary(list("|AB"))
    a, b = d.index("A"), d.index("B")
    probs = torch.full((1, 4, len(d)), 1e-3)
    probs[0, 0, a] = probs[0, 2, a] = probs[0, 3, 0] = 0.9
    probs[0, 1, 0], probs[0, 1, b] = 0.55, 0.4
    logits = probs.log()
    assert GreedyDecoder(d)(logits) == ["AA"]
    assert GreedyDecoder(d, blank_penalty=0.3)(logits) == ["AA"]
    assert GreedyDecoder(d, blank_penalty=0.35)(logits) == ["ABA"]
    shifted = logits.clone()
    shifted[..., 0] -= 0.35
    assert greedy_decode(logits, blank_penalty=0.35) == greedy_decode(shifted)
    assert build_decoder(d, blank_penalty=0.35)(logits) == ["ABA"]
    assert torch.equal(logits, probs.log())  # the caller's logits are left as they were


def test_beam_search_without_flashlight_says_what_to_install(monkeypatch):
    """torchaudio turns a failed flashlight-text import into a RuntimeError; the decoder names the package."""
    import torchaudio.models.decoder as decoders

    # what torchaudio sees when flashlight-text is not installed: its _ctc_decoder module fails to import
    monkeypatch.delitem(decoders.__dict__, "ctc_decoder", raising=False)  # torchaudio caches it on first use
    monkeypatch.delattr(decoders, "_ctc_decoder", raising=False)
    monkeypatch.setitem(sys.modules, "torchaudio.models.decoder._ctc_decoder", None)
    with pytest.raises(RuntimeError, match="flashlight-text"):
        decoders.ctc_decoder  # noqa: B018 - the lookup itself raises
    with pytest.raises(ImportError, match="pip install flashlight-text"):
        BeamSearchDecoder(Dictionary(list("|AB")))
    with pytest.raises(ImportError, match="pip install flashlight-text"):
        build_decoder(Dictionary(list("|AB")), beam_size=8)


def test_greedy_hypotheses_do_not_depend_on_batch_size(recognizer):
    """Batch of 8 padded utterances vs one at a time: same logits on valid frames, same transcripts."""
    lengths = [16_000, 9_000, 23_000, 4_000, 12_345, 20_000, 7_777, 16_001]
    waves = [noise(n, seed) for seed, n in enumerate(lengths)]
    decoder = GreedyDecoder(recognizer.dictionary)
    batched_logits, frames = recognizer.forward(waves)
    batched = decoder(batched_logits, frames)
    single = []
    for b, wave in enumerate(waves):
        logits, n = recognizer.forward([wave])
        assert int(n[0]) == int(frames[b]) == recognizer.num_frames(wave.shape[0])
        torch.testing.assert_close(batched_logits[b, : int(n[0])], logits[0], atol=1e-4, rtol=1e-4)
        single.extend(decoder(logits, n))
    assert batched == single
    assert any(single)  # the test model does emit symbols
