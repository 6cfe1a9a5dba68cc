"""Exact and near-duplicate problem detection: a streaming MinHash-LSH pass (datasketch).

Problems are seen in source order and the first occurrence wins, so a rerun over the same source drops
the same problems (MinHash uses a fixed seed). Exact duplicates compare case- and whitespace-normalised
text; near duplicates compare token shingles and are confirmed on the MinHash Jaccard estimate, so an
LSH band collision alone never drops a problem.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalise_problem(text: str) -> str:
    """NFKC, lower case, single spaces: the key for exact duplicates (keeps digits and operators)."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def shingles(text: str, size: int) -> set[str]:
    """Token ``size``-grams of the normalised text (words and single punctuation marks as tokens)."""
    tokens = _TOKEN.findall(normalise_problem(text))
    if len(tokens) <= size:
        return {" ".join(tokens)}
    return {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


@dataclass(frozen=True)
class Duplicate:
    kind: str  # "exact" or "near"
    duplicate_of: str  # problem id of the first occurrence
    similarity: float


class Deduplicator:
    """Feed problems in order with ``check``; returns a ``Duplicate`` for each one to drop, else None."""

    def __init__(self, near_threshold: float = 0.85, num_perm: int = 128, shingle_size: int = 3) -> None:
        self.near_threshold = near_threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self._exact: dict[bytes, str] = {}
        self._lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
        self._signatures: dict[str, tuple[np.ndarray, str]] = {}

    def _minhash(self, text: str) -> MinHash:
        minhash = MinHash(num_perm=self.num_perm, seed=1)
        minhash.update_batch([s.encode("utf-8", errors="replace") for s in sorted(shingles(text, self.shingle_size))])
        return minhash

    def check(self, problem_id: str, text: str) -> Duplicate | None:
        key = hashlib.sha1(normalise_problem(text).encode("utf-8", errors="replace")).digest()
        if key in self._exact:
            return Duplicate("exact", self._exact[key], 1.0)
        minhash = self._minhash(text)
        # datasketch hash values fit in 32 bits: keep them compact for the confirmation step.
        signature = minhash.hashvalues.astype(np.uint32)
        best: tuple[float, str] | None = None
        for candidate in self._lsh.query(minhash):
            stored, first_id = self._signatures[candidate]
            similarity = float(np.mean(stored == signature))
            if similarity >= self.near_threshold and (best is None or similarity > best[0]):
                best = (similarity, first_id)
        if best is not None:
            return Duplicate("near", best[1], round(best[0], 4))
        self._exact[key] = problem_id
        lsh_key = f"{len(self._signatures)}:{problem_id}"
        self._lsh.insert(lsh_key, minhash)
        self._signatures[lsh_key] = (signature, problem_id)
        return None
