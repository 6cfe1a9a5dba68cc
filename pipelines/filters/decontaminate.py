"""Benchmark decontamination by word n-gram overlap, as open-r1 does (8-grams by default).

Texts are lower-cased, punctuation becomes spaces, and a problem sharing any n-gram with a benchmark
problem is contaminated. A text shorter than n words has no n-gram, so for those the whole normalised
text is compared instead (a short benchmark question copied verbatim is still caught).
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

_PUNCTUATION = str.maketrans({ch: " " for ch in string.punctuation})


def normalise_words(text: str) -> list[str]:
    return unicodedata.normalize("NFKC", text).lower().translate(_PUNCTUATION).split()


def word_ngrams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


@dataclass(frozen=True)
class Contamination:
    benchmark: str
    benchmark_index: int  # row of the benchmark problem that matched
    ngram: str  # the shared n-gram (or the whole short text)


class NgramIndex:
    """All n-grams of the benchmark problems, each pointing at its first benchmark row."""

    def __init__(self, n: int = 8) -> None:
        self.n = n
        self._ngrams: dict[str, tuple[str, int]] = {}
        self._short: dict[str, tuple[str, int]] = {}
        self.sizes: dict[str, int] = {}

    def add(self, benchmark: str, texts: Iterable[str]) -> None:
        count = 0
        for index, text in enumerate(texts):
            count += 1
            words = normalise_words(text)
            if len(words) < self.n:
                self._short.setdefault(" ".join(words), (benchmark, index))
            for gram in word_ngrams(words, self.n):
                self._ngrams.setdefault(gram, (benchmark, index))
        self.sizes[benchmark] = self.sizes.get(benchmark, 0) + count

    def __len__(self) -> int:
        return len(self._ngrams) + len(self._short)

    def match(self, text: str) -> Contamination | None:
        """The first benchmark n-gram found in ``text``, or None when it is clean."""
        words = normalise_words(text)
        if len(words) < self.n:
            hit = self._short.get(" ".join(words))
            return Contamination(hit[0], hit[1], " ".join(words)) if hit and words else None
        for gram in word_ngrams(words, self.n):
            hit = self._ngrams.get(gram)
            if hit:
                return Contamination(hit[0], hit[1], gram)
        return None
