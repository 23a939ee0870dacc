"""Transcripts and letter labels: ``.wrd``/``.ltr`` files and the letter :class:`Dictionary`.

- ``.wrd``: one transcript per line (uppercase words separated by single spaces), aligned with the
  manifest's items.
- ``.ltr``: the same transcripts as letters separated by spaces, ``|`` between words and a trailing
  ``|``: ``HELLO WORLD`` -> ``H E L L O | W O R L D |``.
- ``dict.ltr.txt``: ``SYMBOL COUNT`` per line, by count descending (ties by symbol), counted over the
  training labels.

:class:`Dictionary` indices (CTC output units), laid out so that index ``i`` means the same symbol as
in fairseq's and transformers' wav2vec 2.0 letter vocabularies:

====  ===========  ==========================================================================
0     ``<blank>``  the CTC blank (fairseq's ``<s>``, transformers' ``<pad>``)
1     ``<pad>``    padding (never a CTC target; collated targets are padded with ``-1`` instead)
2     ``</s>``     end of sentence (unused by CTC)
3     ``<unk>``    a symbol not in ``dict.ltr.txt``
4...  symbols      in ``dict.ltr.txt`` order; ``|`` (word boundary) is an ordinary symbol
====  ===========  ==========================================================================
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from speechcl.utils.io import write_lines

WORD_SEPARATOR = "|"
SPECIAL_SYMBOLS: tuple[str, ...] = ("<blank>", "<pad>", "</s>", "<unk>")


def normalize_transcript(text: str) -> str:
    """Uppercase and collapse whitespace: ``" hello  world"`` -> ``"HELLO WORLD"``."""
    return " ".join(text.upper().split())


def words_to_letters(transcript: str) -> str:
    """``"HELLO WORLD"`` -> ``"H E L L O | W O R L D |"`` (fairseq's ``libri_labels.py`` rule)."""
    words = normalize_transcript(transcript)
    if not words:
        return WORD_SEPARATOR
    return " ".join(words.replace(" ", WORD_SEPARATOR)) + " " + WORD_SEPARATOR


def letters_to_words(letters: str) -> str:
    """Inverse of :func:`words_to_letters`: ``"H I | T H E R E |"`` -> ``"HI THERE"``."""
    return " ".join("".join(letters.split()).replace(WORD_SEPARATOR, " ").split())


def count_symbols(ltr_lines: Iterable[str]) -> list[tuple[str, int]]:
    """Symbol counts over ``.ltr`` lines, by count descending then symbol."""
    counts: Counter[str] = Counter()
    for line in ltr_lines:
        counts.update(line.split())
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def write_dict(path: str | os.PathLike, counts: Sequence[tuple[str, int]]) -> None:
    """Atomically write ``dict.ltr.txt`` lines ``SYMBOL COUNT``."""
    write_lines(path, [f"{symbol} {count}" for symbol, count in counts])


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a label file (``.wrd``/``.ltr``), without newlines."""
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


class Dictionary:
    """Letter vocabulary for CTC: specials at 0-3 (see the module docstring), then the symbols.

    Args:
        symbols: the non-special symbols, in index order (index 4 onwards).
    """

    blank_index = 0
    pad_index = 1
    eos_index = 2
    unk_index = 3

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols: list[str] = list(SPECIAL_SYMBOLS)
        self._index: dict[str, int] = {s: i for i, s in enumerate(self.symbols)}
        for symbol in symbols:
            if symbol in self._index:
                raise ValueError(f"symbol {symbol!r} appears twice in the dictionary (or is a special symbol)")
            if not symbol or any(c.isspace() for c in symbol):
                raise ValueError(f"dictionary symbols must be non-empty without whitespace, got {symbol!r}")
            self._index[symbol] = len(self.symbols)
            self.symbols.append(symbol)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dictionary:
        """Read ``dict.ltr.txt`` (``SYMBOL COUNT`` per line; the count is ignored)."""
        symbols = []
        for number, line in enumerate(read_lines(Path(path)), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{number}: expected 'SYMBOL COUNT', got {line!r}")
            symbols.append(parts[0])
        return cls(symbols)

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._index

    def index(self, symbol: str) -> int:
        """Index of ``symbol``; :attr:`unk_index` when absent."""
        return self._index.get(symbol, self.unk_index)

    def encode(self, ltr_line: str) -> list[int]:
        """``"H I |"`` -> ``[index("H"), index("I"), index("|")]``."""
        return [self.index(symbol) for symbol in ltr_line.split()]

    def decode(self, indices: Iterable[int], strip_specials: bool = True) -> str:
        """Indices -> an ``.ltr`` line (specials dropped unless ``strip_specials`` is False)."""
        out = []
        for i in indices:
            i = int(i)
            if not 0 <= i < len(self.symbols):
                raise ValueError(f"index {i} is outside the dictionary (size {len(self.symbols)})")
            if strip_specials and i < len(SPECIAL_SYMBOLS):
                continue
            out.append(self.symbols[i])
        return " ".join(out)

    def decode_words(self, indices: Iterable[int]) -> str:
        """Indices -> a transcript: ``[H, I, |, Y, O, |]`` -> ``"HI YO"``."""
        return letters_to_words(self.decode(indices))
