"""Word n-gram language models for CTC beam search: estimation, ARPA files and lexicons.

:func:`estimate_kneser_ney` builds an interpolated modified Kneser-Ney model from transcripts
(Chen & Goodman 1998): three discounts per order (D1, D2, D3+ for adjusted counts 1, 2, 3 and more,
from the order's count-of-counts), continuation counts for the lower orders, and the smoothing KenLM's
``lmplz`` applies when it does not prune. :func:`write_arpa` writes it as an ARPA file that KenLM (and
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
from collections import Counter, defaultdict
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


FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz's --discount_fallback defaults


def modified_kneser_ney_discounts(counts: Iterable[int]) -> tuple[float, float, float]:
    """The discounts ``(D1, D2, D3+)`` of one order from its adjusted counts (Chen & Goodman 1998, eq. 26).

    With ``n_k`` the number of n-grams whose adjusted count is exactly ``k``::

        Y = n1 / (n1 + 2 n2)
        D1 = 1 - 2 Y n2 / n1,   D2 = 2 - 3 Y n3 / n2,   D3+ = 3 - 4 Y n4 / n3

    When ``n1``, ``n2`` or ``n3`` is 0 (tiny or artificial corpora), or a discount falls outside
    ``0 < D_k <= k``, the order uses :data:`FALLBACK_DISCOUNTS` ``(0.5, 1, 1.5)``, the values lmplz
    substitutes with ``--discount_fallback`` (without that flag lmplz stops with an error). lmplz accepts
    ``D_k = 0``; here it falls back too, since a context whose continuations all had a zero discount
    would keep no mass for its lower order.
    """
    n = Counter(c for c in counts if 1 <= c <= 4)
    n1, n2, n3, n4 = n[1], n[2], n[3], n[4]
    if n1 == 0 or n2 == 0 or n3 == 0:
        return FALLBACK_DISCOUNTS
    y = n1 / (n1 + 2 * n2)
    discounts = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < d <= k for k, d in enumerate(discounts, start=1)):
        return FALLBACK_DISCOUNTS
    return discounts


def _raw_counts(sentences: Iterable[Sequence[str]], order: int) -> list[Counter[Ngram]]:
    """Per order ``n`` (index ``n - 1``), how often each n-gram of ``<s> words </s>`` occurs.

    ``<s>`` alone is not counted: it is never predicted.
    """
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
    return raw


def _adjusted_counts(raw: list[Counter[Ngram]]) -> list[Counter[Ngram]]:
    """Kneser-Ney's adjusted counts: raw counts at the highest order and for n-grams starting with ``<s>``
    (nothing precedes ``<s>``); below the highest order otherwise the continuation count, the number of
    distinct words seen before the n-gram. ``<unk>`` is a unigram with adjusted count 0."""
    order = len(raw)
    adjusted: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    adjusted[order - 1] = Counter(raw[order - 1])
    for n in range(order - 1, 0, -1):
        continuation: Counter[Ngram] = Counter(gram[1:] for gram in raw[n])  # raw[n] holds order n + 1
        for gram, count in raw[n - 1].items():
            adjusted[n - 1][gram] = count if gram[0] == BOS else continuation[gram]
    adjusted[0].setdefault((UNK,), 0)
    return adjusted


def estimate_kneser_ney(sentences: Iterable[Sequence[str]], order: int = 3) -> NgramLM:
    """Interpolated modified Kneser-Ney estimate from tokenised sentences (``<s>``/``</s>`` are added).

    The smoothing of Chen & Goodman (1998) as KenLM's ``lmplz`` computes it without pruning. Every
    order works on adjusted counts ``a`` (raw counts at the highest order and for n-grams starting
    with ``<s>``, continuation counts otherwise) and has its own three discounts ``D(a)``: D1, D2, D3+
    for ``a = 1, 2, >= 3`` (:func:`modified_kneser_ney_discounts`, with its fallback for tiny corpora).
    With ``ctx'`` the context without its oldest word::

        p(w | ctx) = (a(ctx w) - D(a(ctx w))) / sum_x a(ctx x) + gamma(ctx) p(w | ctx')
        gamma(ctx) = (D1 N1(ctx) + D2 N2(ctx) + D3+ N3+(ctx)) / sum_x a(ctx x)

    where ``N_k(ctx)`` counts the words seen after ``ctx`` with adjusted count ``k`` (``3+``: at least
    3). Unigrams interpolate with the uniform distribution over the predictable vocabulary (words,
    ``</s>``, ``<unk>``; ``<s>`` is never predicted), so ``<unk>`` gets ``gamma() / |V|``. In the ARPA
    form a listed n-gram carries ``p(w | ctx)`` and a context carries ``gamma(ctx)`` as its backoff.

    Args:
        sentences: word sequences (no ``<s>``/``</s>``); empty ones count as ``<s> </s>``.
        order: 1 to 6.

    Returns:
        the model; ``sum(10 ** lm.logprob(w, ctx) for w in vocab - {<s>}) == 1`` for any context.
    """
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be between 1 and {MAX_ORDER}, got {order}")
    adjusted = _adjusted_counts(_raw_counts(sentences, order))
    uniform = 1.0 / len(adjusted[0])  # the unigrams are the predictable vocabulary, <unk> included
    probs: list[dict[Ngram, float]] = [{} for _ in range(order)]
    lm = NgramLM(order=order, logprobs=[{(BOS,): _NO_PROB}] + [{} for _ in range(order - 1)])
    for n in range(order):
        d1, d2, d3 = modified_kneser_ney_discounts(adjusted[n].values())
        discount = {0: 0.0, 1: d1, 2: d2}
        totals: Counter[Ngram] = Counter()
        removed: defaultdict[Ngram, float] = defaultdict(float)  # per context: what the discounts take away
        for gram, count in adjusted[n].items():
            totals[gram[:-1]] += count
            removed[gram[:-1]] += discount.get(count, d3)
        for gram in sorted(adjusted[n]):
            count, ctx = adjusted[n][gram], gram[:-1]
            lower = probs[n - 1][gram[1:]] if n else uniform
            probs[n][gram] = (count - discount.get(count, d3) + removed[ctx] * lower) / totals[ctx]
            lm.logprobs[n][gram] = math.log10(probs[n][gram])
        if n:
            for ctx, total in totals.items():
                lm.backoffs[ctx] = math.log10(removed[ctx] / total)
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

