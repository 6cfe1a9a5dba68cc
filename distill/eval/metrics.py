"""The metrics of an eval, as pure functions of per-sample outcomes (no I/O, no models).

- pass@k: the unbiased estimator of Chen et al. 2021 (Codex paper, eq. 1): with n samples of which c are correct,
  ``1 - C(n-c, k) / C(n, k)``, averaged over problems; pass@1 is then the mean over the k samples.
- Standard error of pass@1: over problems (the sampling unit), ``stdev(per-problem pass rates) / sqrt(N)``.
- maj@k (DeepSeek's cons@k): the majority answer of k samples is right; the expectation over every k-subset of
  the n samples (enumerated when there are few, else a seeded sample), ties split evenly.
- ECE: the sample-weighted mean |accuracy - confidence| over equal-width confidence bins.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

MAX_SUBSETS = 2000  # maj@k enumerates every k-subset up to this many, else draws this many (seeded)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): the numerically stable form of 1 - C(n-c, k) / C(n, k)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_curve(counts: Sequence[tuple[int, int]]) -> dict[int, float]:
    """Mean pass@k over problems for k = 1 … min n; ``counts`` holds (n, c) per problem."""
    if not counts:
        return {}
    top = min(n for n, _ in counts)
    return {k: statistics.fmean(pass_at_k(n, c, k) for n, c in counts) for k in range(1, top + 1)}


def mean_with_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample stdev / sqrt(N)); SE is None for fewer than two values."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def _vote(keys: Sequence[str | None], correct: Sequence[bool]) -> float:
    """1 when the majority answer is right, 0 when wrong, the share of right ones among tied answers."""
    votes = Counter(key for key in keys if key is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [key for key, count in votes.items() if count == top]
    right = {key for key, ok in zip(keys, correct, strict=True) if key is not None and ok}
    return sum(key in right for key in winners) / len(winners)


def majority_at_k(keys: Sequence[str | None], correct: Sequence[bool], k: int, seed: int = 0) -> float:
    """Expected maj@k of one problem: ``keys`` are the samples' canonical answers (None: no answer)."""
    n = len(keys)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n (n={n}, k={k})")
    if k == n:
        return _vote(keys, correct)
    if math.comb(n, k) <= MAX_SUBSETS:
        subsets: list[tuple[int, ...]] = list(itertools.combinations(range(n), k))
    else:
        rng = random.Random(seed)
        subsets = [tuple(rng.sample(range(n), k)) for _ in range(MAX_SUBSETS)]
    return statistics.fmean(_vote([keys[i] for i in s], [correct[i] for i in s]) for s in subsets)


def consistency_confidence(keys: Sequence[str | None]) -> list[float]:
    """Per sample, the share of the problem's samples that give its answer (itself included); 0 without one."""
    votes = Counter(key for key in keys if key is not None)
    return [votes[key] / len(keys) if key is not None else 0.0 for key in keys]


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    confidence: float | None  # mean confidence of the samples in the bin
    accuracy: float | None


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins [i/B, (i+1)/B); a confidence of exactly 1 goes to the last bin."""
    members: list[list[int]] = [[] for _ in range(bins)]
    for index, conf in enumerate(confidences):
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"confidence {conf} is outside [0, 1]")
        members[min(int(math.floor(conf * bins + 1e-9)), bins - 1)].append(index)
    result = []
    for b, indices in enumerate(members):
        conf = statistics.fmean(confidences[i] for i in indices) if indices else None
        acc = statistics.fmean(float(correct[i]) for i in indices) if indices else None
        result.append(ReliabilityBin(b / bins, (b + 1) / bins, len(indices), conf, acc))
    return result


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float | None:
    """ECE = sum over bins of (bin size / N) * |bin accuracy - bin mean confidence|."""
    if not confidences:
        return None
    total = len(confidences)
    return sum(b.count / total * abs(b.accuracy - b.confidence)  # type: ignore[operator]
               for b in reliability_bins(confidences, correct, bins) if b.count)


def bins_as_dicts(bins: list[ReliabilityBin]) -> list[dict[str, float | int | None]]:
    return [asdict(b) for b in bins]


def rate(flags: Sequence[bool]) -> float | None:
    return sum(map(bool, flags)) / len(flags) if flags else None


def token_stats(tokens: Sequence[int | None]) -> dict[str, float | int | None]:
    """Mean, median, 90th percentile and max of the completion lengths that are known."""
    known = sorted(t for t in tokens if t is not None)
    if not known:
        return {"mean": None, "median": None, "p90": None, "max": None, "known": 0}
    p90 = known[min(len(known) - 1, math.ceil(0.9 * len(known)) - 1)]  # nearest-rank percentile
    return {"mean": statistics.fmean(known), "median": statistics.median(known), "p90": p90, "max": known[-1],
            "known": len(known)}
