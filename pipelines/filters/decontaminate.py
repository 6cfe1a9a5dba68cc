"""Benchmark decontamination by word n-gram overlap (open-r1 uses 8-grams), made precise.

Texts are lower-cased and punctuation becomes spaces. open-r1's rule flags a problem that shares *any* n-gram with
a benchmark problem; on GSM8K train against test that flags stock phrases ("how much money will she have left
over"), not leaks. Two refinements (docs/decontamination.md measures them):

- ``max_df``: an n-gram found in more than this share of the benchmark's problems (at least 2 of them) is a
  stock phrase and never counts;
- ``min_overlap``: a problem is contaminated by one benchmark problem only when the informative n-grams they share
  are at least this share of the smaller one's informative n-grams (containment, so a benchmark problem embedded
  in a longer text still counts), or when they share ``min_shared`` n-grams or more whatever the share.

``NgramIndex(n)`` without them is open-r1's rule (any shared n-gram). A text shorter than n words has no n-gram, so
for those the whole normalised text is compared instead (a short benchmark question copied verbatim is caught).
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
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
    ngram: str  # the first shared informative n-gram (or the whole short text)
    overlap: float = 1.0  # shared informative n-grams / the smaller side's informative n-grams
    shared: int = 1  # how many informative n-grams they share
    benchmark_problem: str = ""  # the matched benchmark problem's text


class NgramIndex:
    """The n-grams of the benchmark problems with the problems holding each (their document frequency)."""

    def __init__(self, n: int = 8, max_df: float | None = None, min_overlap: float = 0.0,
                 min_shared: int | None = None) -> None:
        self.n = n
        self.max_df = max_df
        self.min_overlap = min_overlap
        self.min_shared = min_shared
        self._postings: dict[str, list[int]] = {}
        self._short: dict[str, int] = {}
        self._docs: list[tuple[str, int, str]] = []  # (benchmark, row, text)
        self._informative: list[int] | None = None  # per doc, its n-grams that are not stock phrases
        self.sizes: dict[str, int] = {}

    def add(self, benchmark: str, texts: Iterable[str]) -> None:
        count = 0
        for index, text in enumerate(texts):
            count += 1
            doc = len(self._docs)
            self._docs.append((benchmark, index, text))
            words = normalise_words(text)
            if len(words) < self.n:
                self._short.setdefault(" ".join(words), doc)
            for gram in dict.fromkeys(word_ngrams(words, self.n)):
                self._postings.setdefault(gram, []).append(doc)
        self.sizes[benchmark] = self.sizes.get(benchmark, 0) + count
        self._informative = None

    def __len__(self) -> int:
        return len(self._postings) + len(self._short)

    @property
    def df_limit(self) -> int | None:
        """The most benchmark problems an n-gram may appear in and still count (None: no limit)."""
        if self.max_df is None:
            return None
        return max(2, int(self.max_df * len(self._docs)))

    def is_common(self, gram: str) -> bool:
        limit = self.df_limit
        return limit is not None and len(self._postings.get(gram, ())) > limit

    def _informative_counts(self) -> list[int]:
        if self._informative is None:
            counts = [0] * len(self._docs)
            for gram, docs in self._postings.items():
                if not self.is_common(gram):
                    for doc in docs:
                        counts[doc] += 1
            self._informative = counts
        return self._informative

    def _hit(self, doc: int, gram: str, overlap: float = 1.0, shared: int = 1) -> Contamination:
        benchmark, row, text = self._docs[doc]
        return Contamination(benchmark, row, gram, round(overlap, 4), shared, text)

    def match(self, text: str) -> Contamination | None:
        """The benchmark problem ``text`` is contaminated by (the best overlap), or None when it is clean."""
        words = normalise_words(text)
        if len(words) < self.n:
            doc = self._short.get(" ".join(words))
            return self._hit(doc, " ".join(words)) if doc is not None and words else None
        grams = [g for g in dict.fromkeys(word_ngrams(words, self.n)) if g in self._postings and not self.is_common(g)]
        if not grams:
            return None
        if self.min_overlap <= 0 and self.min_shared is None:  # open-r1's rule: the first shared n-gram
            return self._hit(self._postings[grams[0]][0], grams[0])
        shared: Counter[int] = Counter(doc for gram in grams for doc in self._postings[gram])
        own = sum(1 for g in dict.fromkeys(word_ngrams(words, self.n)) if not self.is_common(g))
        informative = self._informative_counts()
        best: tuple[float, int, int] | None = None
        for doc, count in shared.items():
            overlap = count / max(1, min(own, informative[doc]))
            if overlap >= self.min_overlap or (self.min_shared is not None and count >= self.min_shared):
                if best is None or (overlap, count, -doc) > (best[0], best[1], -best[2]):
                    best = (overlap, count, doc)
        if best is None:
            return None
        overlap, count, doc = best
        first = next(g for g in grams if doc in self._postings[g])
        return self._hit(doc, first, min(overlap, 1.0), count)
