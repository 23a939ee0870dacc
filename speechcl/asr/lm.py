"""Word n-gram language models for CTC beam search: estimation, ARPA files and lexicons.

:func:`estimate_kneser_ney` builds an interpolated Kneser-Ney model (Chen & Goodman 1998, one
discount per order, ``D = n1 / (n1 + 2 n2)``) from transcripts, the smoothing KenLM's ``lmplz`` and
SRILM's ``-kndiscount -interpolate`` use; :func:`write_arpa` writes it as an ARPA file that KenLM (and
so flashlight-text / torchaudio's ``ctc_decoder``) loads directly. An interpolated model folds exactly
into ARPA's backoff form: a listed n-gram carries its interpolated probability, a context carries the
interpolation weight of its lower order as its backoff weight.

ARPA layout (log10 values)::

    \\data\\
    ngram 1=5
    ngram 2=4

    \\1-grams:
    -0.69897  </s>
    -99       <s>      -0.30103
    ...
    \\end\\

:func:`write_lexicon` writes the word -> spelling lexicon of fairseq / flashlight: ``HELLO H E L L O |``
(letters separated by spaces, the word boundary ``|`` last).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from speechcl.data.labels import WORD_SEPARATOR, normalize_transcript
from speechcl.utils.io import atomic_open

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
MAX_ORDER = 6
_NO_PROB = -99.0  # log10 "probability" ARPA gives <s>, which is never predicted

Ngram = tuple[str, ...]


@dataclass
class NgramLM:
    """A backoff n-gram model as an ARPA file holds it.

    Attributes:
        order: the highest n-gram order.
        logprobs: per order ``n`` (index ``n - 1``), n-gram -> log10 p(last word | preceding words).
        backoffs: n-gram -> log10 backoff weight (0 when absent) for n-grams that are contexts.
    """

    order: int
    logprobs: list[dict[Ngram, float]] = field(default_factory=list)
    backoffs: dict[Ngram, float] = field(default_factory=dict)

    @property
    def vocabulary(self) -> list[str]:
        """The unigram words (including ``<s>``, ``</s>``, ``<unk>``), in file order."""
        return [g[0] for g in self.logprobs[0]]

    def logprob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(``word`` | ``context``) by ARPA backoff (context oldest first; ``<s>`` may start it).

        Words outside the vocabulary score as ``<unk>``; the context is cut to ``order - 1`` words.
        """
        vocab = self.logprobs[0]
        word = word if (word,) in vocab else UNK
        ctx = tuple(w if (w,) in vocab else UNK for w in context)[max(0, len(context) - self.order + 1):]
        penalty = 0.0
        while True:
            gram = (*ctx, word)
            value = self.logprobs[len(gram) - 1].get(gram)
            if value is not None:
                return penalty + value
            if not ctx:
                raise ValueError(f"{word!r} has no unigram probability: the model has no {UNK!r} entry")
            penalty += self.backoffs.get(ctx, 0.0)
            ctx = ctx[1:]

    def sentence_logprob(self, words: Sequence[str]) -> float:
        """log10 probability of a whole sentence, ``<s>`` and ``</s>`` included."""
        history = [BOS]
        total = 0.0
        for word in [*words, EOS]:
            total += self.logprob(word, history)
            history.append(word)
        return total


def _discount(counts: Iterable[int]) -> float:
    """Kneser-Ney discount ``n1 / (n1 + 2 n2)`` from counts-of-counts; 0.5 when it is undefined."""
    hist = Counter(c for c in counts if c <= 2)
    n1, n2 = hist[1], hist[2]
    if n1 == 0 or n2 == 0:
        return 0.5  # too little data (toy corpora): a moderate fixed discount
    d = n1 / (n1 + 2 * n2)
    return min(max(d, 0.05), 0.95)


def estimate_kneser_ney(sentences: Iterable[Sequence[str]], order: int = 3) -> NgramLM:
    """Interpolated Kneser-Ney estimate from tokenised sentences (``<s>``/``</s>`` are added).

    Counts: the highest order uses raw counts; lower orders use continuation counts (distinct left
    contexts), except n-grams starting with ``<s>``, which keep raw counts (nothing precedes ``<s>``).
    Every order interpolates with the next lower one; unigrams interpolate with the uniform
    distribution over the predictable vocabulary (words, ``</s>``, ``<unk>``), so ``<unk>`` gets mass.

    Args:
        sentences: word sequences (no ``<s>``/``</s>``); empty ones count as ``<s> </s>``.
        order: 1 to 6.

    Returns:
        the model; ``sum(10 ** lm.logprob(w, ctx) for w in vocab - {<s>}) == 1`` for any context.
    """
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be between 1 and {MAX_ORDER}, got {order}")
    raw: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    n_sentences = 0
    for sentence in sentences:
        for token in sentence:
            if token in (BOS, EOS) or not token or any(c.isspace() for c in token):
                raise ValueError(f"sentence token {token!r} is not a word (whitespace, <s> and </s> are reserved)")
        tokens = (BOS, *sentence, EOS)
        n_sentences += 1
        for n in range(1, order + 1):
            for i in range(len(tokens) - n + 1):
                gram = tokens[i:i + n]
                if gram != (BOS,):
                    raw[n - 1][gram] += 1
    if n_sentences == 0:
        raise ValueError("cannot estimate a language model from no sentences")

    # adjusted counts: raw at the top order and for <s>-initial n-grams, continuation counts otherwise
    adjusted: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    adjusted[order - 1] = raw[order - 1]
    for n in range(order - 1, 0, -1):
        cont: Counter[Ngram] = Counter()
        for gram in raw[n]:  # order n + 1 grams
            cont[gram[1:]] += 1
        for gram, count in raw[n - 1].items():
            adjusted[n - 1][gram] = count if gram[0] == BOS else cont[gram]
    discounts = [_discount(adjusted[n].values()) for n in range(order)]

    # per context: total adjusted count and number of distinct continuations, for each order >= 2
    ctx_total: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    ctx_types: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    for n in range(1, order):
        for gram, count in adjusted[n].items():
            ctx_total[n][gram[:-1]] += count
            ctx_types[n][gram[:-1]] += 1

    words = sorted({g[0] for g in adjusted[0]} | {UNK, EOS})
    vocab_size = len(words)  # predictable words; <s> is never predicted
    total1 = sum(adjusted[0].values())
    d1 = discounts[0]
    gamma1 = d1 * len(adjusted[0]) / total1
    probs: list[dict[Ngram, float]] = [{} for _ in range(order)]
    for w in words:
        probs[0][(w,)] = max(adjusted[0][(w,)] - d1, 0.0) / total1 + gamma1 / vocab_size
    for n in range(1, order):
        d = discounts[n]
        for gram, count in adjusted[n].items():
            ctx = gram[:-1]
            gamma = d * ctx_types[n][ctx] / ctx_total[n][ctx]
            probs[n][gram] = (count - d) / ctx_total[n][ctx] + gamma * probs[n - 1][gram[1:]]

    lm = NgramLM(order=order, logprobs=[{} for _ in range(order)])
    lm.logprobs[0][(BOS,)] = _NO_PROB
    for n in range(order):
        for gram in sorted(probs[n]):
            lm.logprobs[n][gram] = math.log10(probs[n][gram])
    for n in range(1, order):
        d = discounts[n]
        for ctx, total in ctx_total[n].items():
            lm.backoffs[ctx] = math.log10(d * ctx_types[n][ctx] / total)
    return lm


def read_sentences(path: str | os.PathLike) -> list[list[str]]:
    """Transcripts of a ``.wrd`` (or any one-sentence-per-line text) file, normalised to uppercase words."""
    with open(path, encoding="utf-8") as handle:
        return [normalize_transcript(line).split() for line in handle]


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def write_arpa(lm: NgramLM, path: str | os.PathLike) -> None:
    """Write ``lm`` as an ARPA file (atomically)."""
    with atomic_open(path) as out:
        out.write("\n\\data\\\n")
        for n in range(lm.order):
            out.write(f"ngram {n + 1}={len(lm.logprobs[n])}\n")
        for n in range(lm.order):
            out.write(f"\n\\{n + 1}-grams:\n")
            for gram, value in lm.logprobs[n].items():
                line = f"{_fmt(value)}\t{' '.join(gram)}"
                if n < lm.order - 1 and gram in lm.backoffs:
                    line += f"\t{_fmt(lm.backoffs[gram])}"
                out.write(line + "\n")
        out.write("\n\\end\\\n")


def read_arpa(path: str | os.PathLike) -> NgramLM:
    """Parse an ARPA file; raises ``ValueError`` naming the file and line when it is malformed."""
    path = Path(path)
    declared: dict[int, int] = {}
    logprobs: list[dict[Ngram, float]] = []
    backoffs: dict[Ngram, float] = {}
    section = ""  # "", "data", or "grams"
    current = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            where = f"{path}:{number}"
            if text == "\\data\\":
                section = "data"
            elif text == "\\end\\":
                break
            elif text.startswith("\\") and text.endswith("-grams:"):
                current = int(text[1:].split("-")[0])
                if current != len(logprobs) + 1:
                    raise ValueError(f"{where}: section {text!r} out of order")
                logprobs.append({})
                section = "grams"
            elif section == "data":
                key, _, value = text.partition("=")
                if not key.startswith("ngram ") or not value.strip().isdigit():
                    raise ValueError(f"{where}: expected 'ngram N=COUNT' in \\data\\, got {text!r}")
                declared[int(key.split()[1])] = int(value)
            elif section == "grams":
                parts = text.split()
                if len(parts) not in (current + 1, current + 2):
                    raise ValueError(f"{where}: expected 'LOGPROB {current} words [BACKOFF]', got {text!r}")
                gram = tuple(parts[1:current + 1])
                logprobs[-1][gram] = float(parts[0])
                if len(parts) == current + 2:
                    backoffs[gram] = float(parts[-1])
            else:
                raise ValueError(f"{where}: unexpected line {text!r} before \\data\\")
    if not logprobs:
        raise ValueError(f"{path}: no n-gram sections; is this an ARPA file?")
    for n, expected in declared.items():
        if n > len(logprobs) or len(logprobs[n - 1]) != expected:
            got = len(logprobs[n - 1]) if n <= len(logprobs) else 0
            raise ValueError(f"{path}: header declares {expected} {n}-grams but the file lists {got}")
    return NgramLM(order=len(logprobs), logprobs=logprobs, backoffs=backoffs)


def arpa_vocabulary(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA file's 1-gram section, without reading the higher orders."""
    words: list[str] = []
    inside = False
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if text == "\\1-grams:":
                inside = True
            elif inside and text.startswith("\\"):
                break
            elif inside and text:
                parts = text.split()
                if len(parts) < 2:
                    raise ValueError(f"{path}: malformed 1-gram line {text!r}")
                words.append(parts[1])
    if not inside:
        raise ValueError(f"{path}: no \\1-grams: section; is this an ARPA file?")
    return words


def spell(word: str) -> list[str]:
    """A word's lexicon spelling: its letters then the word boundary, ``HI`` -> ``[H, I, |]``."""
    return [*word, WORD_SEPARATOR]


def write_lexicon(words: Iterable[str], path: str | os.PathLike, symbols: Iterable[str] | None = None) -> int:
    """Write a flashlight lexicon (``WORD L E T T E R S |`` per line, sorted, unique) atomically.

    ``<s>``, ``</s>`` and ``<unk>`` are skipped. With ``symbols`` (the acoustic model's tokens), words
    spelled with a letter outside them are skipped too (the decoder could never emit them).

    Returns:
        the number of words written.
    """
    allowed = None if symbols is None else set(symbols)
    entries = []
    for word in sorted(set(words) - {BOS, EOS, UNK}):
        letters = spell(word)
        if allowed is not None and not allowed.issuperset(letters):
            continue
        entries.append(f"{word} {' '.join(letters)}")
    with atomic_open(path) as out:
        for entry in entries:
            out.write(entry + "\n")
    return len(entries)


def build_lm(text: str | os.PathLike, out: str | os.PathLike, order: int = 3,
             lexicon_out: str | os.PathLike | None = None, symbols: Iterable[str] | None = None
             ) -> tuple[NgramLM, int | None]:
    """``.wrd`` transcripts -> ARPA file at ``out`` (and a lexicon of its words at ``lexicon_out``).

    Returns:
        the model and the number of lexicon entries (``None`` without ``lexicon_out``).
    """
    sentences = read_sentences(text)
    if not any(sentences):
        raise ValueError(f"{text}: no words found; pass a transcript file with one sentence per line")
    lm = estimate_kneser_ney(sentences, order)
    write_arpa(lm, out)
    written = None
    if lexicon_out is not None:
        written = write_lexicon(lm.vocabulary, lexicon_out, symbols)
    return lm, written

