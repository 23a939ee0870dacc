"""CTC decoding: greedy (best path) and beam search with an optional word n-gram LM.

Both decoders take the CTC model's output ``logits [B, T, V]`` with the valid frame counts
``lengths [B]`` and return one transcript per row (words separated by single spaces). Token indices
follow :class:`speechcl.data.labels.Dictionary`: index 0 is the CTC blank, 1-3 are ``<pad>``,
``</s>``, ``<unk>`` (never emitted as text), then the letters; ``|`` is the word boundary.

Beam search uses torchaudio's ``ctc_decoder`` (flashlight-text, which vendors KenLM; install the
``lm`` extra: ``pip install 'speechcl[lm]'``). With a language model the search is constrained to a
lexicon (``WORD L E T T E R S |`` per line); without one it searches letter sequences freely.

Both take a ``blank_penalty``: subtracted from the blank's log-probability at every frame before
decoding, so a positive penalty makes the decoder emit letters where the model's blank only narrowly
wins (a model trained briefly on few labels emits too few: its hypotheses are shorter than the
references); a negative one emits fewer. 0 decodes the model's posteriors as they are; choose the value
on a dev split (``speechcl evaluate --blank-penalty 0 0.5 1 … --tune-on dev-clean``).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechcl.data.labels import WORD_SEPARATOR, Dictionary


def _check_logits(logits: Tensor, lengths: Tensor | None) -> Tensor:
    if logits.dim() != 3:
        raise ValueError(f"expected logits of shape [batch, frames, vocab], got {tuple(logits.shape)}")
    b, t, _ = logits.shape
    if lengths is None:
        return torch.full((b,), t, dtype=torch.int64)
    lengths = lengths.detach().to("cpu", torch.int64)
    if lengths.shape != (b,):
        raise ValueError(f"lengths must have shape [{b}], got {tuple(lengths.shape)}")
    if bool((lengths < 0).any()) or bool((lengths > t).any()):
        raise ValueError(f"lengths must lie in [0, {t}] (the frame count), got {lengths.tolist()}")
    return lengths


def ctc_collapse(ids: Sequence[int], blank: int = 0) -> list[int]:
    """Best-path rule: merge repeated ids, then drop blanks (``[a, a, 0, a, b] -> [a, a, b]``)."""
    out: list[int] = []
    previous = None
    for i in ids:
        if i != previous and i != blank:
            out.append(int(i))
        previous = i
    return out


def penalize_blank(scores: Tensor, blank: int, penalty: float) -> Tensor:
    """``scores [..., V]`` with ``penalty`` subtracted from the blank's column (a new tensor; ``scores``
    itself when the penalty is 0)."""
    if penalty == 0:
        return scores
    out = scores.clone()
    out[..., blank] -= penalty
    return out


def greedy_decode(logits: Tensor, lengths: Tensor | None = None, blank: int = 0,
                  blank_penalty: float = 0.0) -> list[list[int]]:
    """Best-path token ids per row.

    Args:
        logits: ``[B, T, V]`` scores (logits or log-probs: the best path is the same for both).
        lengths: ``[B]`` valid frames per row; frames at and after ``lengths[b]`` are ignored
            (``None``: all ``T``).
        blank: the blank index.
        blank_penalty: subtracted from the blank's score at every frame (see the module docstring).

    Returns:
        ``B`` lists of token ids after merging repeats and dropping blanks.
    """
    lengths = _check_logits(logits, lengths)
    best = penalize_blank(logits.detach(), blank, blank_penalty).argmax(dim=-1).cpu()
    return [ctc_collapse(best[b, : int(lengths[b])].tolist(), blank) for b in range(best.shape[0])]


class GreedyDecoder:
    """Greedy CTC decoding to text with a :class:`Dictionary` (``blank_penalty``: see the module docstring)."""

    def __init__(self, dictionary: Dictionary, blank_penalty: float = 0.0) -> None:
        self.dictionary = dictionary
        self.blank_penalty = blank_penalty

    def __call__(self, logits: Tensor, lengths: Tensor | None = None) -> list[str]:
        """``logits [B, T, V]``, ``lengths [B]`` -> ``B`` transcripts."""
        _check_vocab(logits, self.dictionary)
        ids = greedy_decode(logits, lengths, self.dictionary.blank_index, self.blank_penalty)
        return [self.dictionary.decode_words(row) for row in ids]


def _check_vocab(logits: Tensor, dictionary: Dictionary) -> None:
    if logits.dim() == 3 and logits.shape[-1] != len(dictionary):
        raise ValueError(
            f"logits have {logits.shape[-1]} classes but the dictionary has {len(dictionary)} symbols; "
            "decode with the dictionary the model was fine-tuned with"
        )


class BeamSearchDecoder:
    """CTC beam search (flashlight through torchaudio), optionally with a KenLM word n-gram LM.

    Args:
        dictionary: the model's output units.
        beam_size: hypotheses kept per frame (fairseq's ``beam``; 500 in the wav2vec 2.0 paper's 4-gram runs).
        lm: an ARPA or KenLM binary file; needs a lexicon (``lexicon``, or for an ARPA file one is
            made from its unigrams).
        lexicon: ``WORD L E T T E R S |`` lines; restricts the output to these words.
        lm_weight: LM weight (fairseq ``lm_weight``, the paper tunes it around 2).
        word_score: score added per word (fairseq ``word_score``, around -1 to 1).
        beam_threshold: prune hypotheses scoring this much below the best.
        unk_score: score of ``<unk>`` words (lexicon decoding); ``-inf`` never emits them.
        blank_penalty: subtracted from the blank's log-probability at every frame (module docstring).
    """

    def __init__(self, dictionary: Dictionary, beam_size: int = 50, lm: str | os.PathLike | None = None,
                 lexicon: str | os.PathLike | None = None, lm_weight: float = 2.0, word_score: float = 0.0,
                 beam_threshold: float = 25.0, unk_score: float = float("-inf"), blank_penalty: float = 0.0) -> None:
        ctc_decoder = _ctc_decoder_factory()
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        self.dictionary = dictionary
        if WORD_SEPARATOR not in dictionary:
            raise ValueError(f"the dictionary has no word boundary symbol {WORD_SEPARATOR!r}; beam search needs it")
        self._tmp: tempfile.TemporaryDirectory | None = None
        if lm is not None:
            lm = str(lm)
            if not Path(lm).is_file():
                raise FileNotFoundError(f"language model {lm} not found")
            if lexicon is None:
                if not _is_arpa(lm):
                    raise ValueError(f"{lm} is a binary LM: pass --lexicon (its words are not readable here)")
                from speechcl.asr.lm import arpa_vocabulary, write_lexicon

                lexicon = os.path.join(self._scratch(), "lexicon.txt")
                if write_lexicon(arpa_vocabulary(lm), lexicon, dictionary.symbols) == 0:
                    raise ValueError(f"no word of {lm} can be spelled with the model's symbols")
        if lexicon is not None:
            lexicon = _filtered_lexicon(str(lexicon), dictionary, self._scratch)
        self._options = dict(lexicon=lexicon, tokens=list(dictionary.symbols), nbest=1, beam_size=beam_size,
                             beam_threshold=beam_threshold, unk_score=unk_score,
                             blank_token=dictionary.symbols[dictionary.blank_index], sil_token=WORD_SEPARATOR,
                             unk_word="<unk>")
        self._decoder = ctc_decoder(lm=lm, lm_weight=lm_weight, word_score=word_score, **self._options)
        self.uses_lexicon = lexicon is not None
        self.lm_weight, self.word_score, self.blank_penalty = lm_weight, word_score, blank_penalty

    def reweighted(self, lm_weight: float, word_score: float, blank_penalty: float | None = None
                   ) -> BeamSearchDecoder:
        """The same search with another LM weight and word score (and blank penalty, unless None),
        sharing this decoder's loaded LM (reading a large ARPA file takes seconds; a tuning grid reads it
        once)."""
        ctc_decoder = _ctc_decoder_factory()
        other = copy.copy(self)
        other._decoder = ctc_decoder(lm=self._decoder.lm, lm_weight=lm_weight, word_score=word_score,
                                     **self._options)
        other.lm_weight, other.word_score = lm_weight, word_score
        if blank_penalty is not None:
            other.blank_penalty = blank_penalty
        return other

    def _scratch(self) -> str:
        """A private directory for generated lexicons, removed with the decoder."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="speechcl-lexicon-")
        return self._tmp.name

    def __call__(self, logits: Tensor, lengths: Tensor | None = None) -> list[str]:
        """``logits [B, T, V]``, ``lengths [B]`` -> ``B`` transcripts (log-softmax is applied here)."""
        _check_vocab(logits, self.dictionary)
        lengths = _check_logits(logits, lengths)
        emissions = torch.log_softmax(logits.detach().float(), dim=-1).cpu()
        emissions = penalize_blank(emissions, self.dictionary.blank_index, self.blank_penalty).contiguous()
        results = self._decoder(emissions, lengths.to(torch.int32))
        texts = []
        for hyps in results:
            if not hyps:
                texts.append("")
            elif self.uses_lexicon:
                texts.append(" ".join(w for w in hyps[0].words if w not in ("<unk>", "")))
            else:
                texts.append(self.dictionary.decode_words(hyps[0].tokens.tolist()))
        return texts


def _ctc_decoder_factory() -> Callable[..., Any]:
    """torchaudio's ``ctc_decoder``, or an ``ImportError`` that says to install flashlight-text.

    torchaudio imports its decoder lazily and reports a missing flashlight-text as a ``RuntimeError``
    when ``ctc_decoder`` is first looked up, so both that and a missing torchaudio are caught here.
    """
    try:
        from torchaudio.models.decoder import ctc_decoder
    except (ImportError, RuntimeError) as err:
        raise ImportError(
            "beam search needs flashlight-text: pip install flashlight-text (or speechcl[lm])"
        ) from err
    return ctc_decoder


def _is_arpa(path: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    return b"\\data\\" in head


def _filtered_lexicon(path: str, dictionary: Dictionary, scratch: Callable[[], str]) -> str:
    """The lexicon without entries spelled outside the dictionary (flashlight rejects those)."""
    keep, dropped = [], 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(f"{path}:{number}: expected 'WORD L E T T E R S |', got {line.strip()!r}")
            if all(p in dictionary for p in parts[1:]):
                keep.append(line.rstrip("\n"))
            else:
                dropped += 1
    if not keep:
        raise ValueError(f"{path}: no lexicon entry is spelled with the model's symbols")
    if not dropped:
        return path
    filtered = os.path.join(scratch(), "lexicon.filtered.txt")
    Path(filtered).write_text("\n".join(keep) + "\n", encoding="utf-8")
    return filtered


Decoder = GreedyDecoder | BeamSearchDecoder


def build_decoder(dictionary: Dictionary, beam_size: int = 0, lm: str | os.PathLike | None = None,
                  lexicon: str | os.PathLike | None = None, lm_weight: float = 2.0,
                  word_score: float = 0.0, blank_penalty: float = 0.0) -> Decoder:
    """Greedy when ``beam_size`` is 0 and there is no LM or lexicon; otherwise beam search (beam 50 by default)."""
    if beam_size == 0 and lm is None and lexicon is None:
        return GreedyDecoder(dictionary, blank_penalty)
    return BeamSearchDecoder(dictionary, beam_size or 50, lm=lm, lexicon=lexicon, lm_weight=lm_weight,
                             word_score=word_score, blank_penalty=blank_penalty)
