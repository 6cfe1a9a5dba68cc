"""From per-step rewards to a trace score, a verdict and the predicted first error (ProcessBench-style)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

AGGREGATIONS = ("min", "mean", "last", "product")


def aggregate(scores: Sequence[float], method: str = "min") -> float:
    """One score in [0, 1] for a trace; ``min`` is the weakest step, ``product`` the chance all are right."""
    if not scores:
        raise ValueError("cannot aggregate an empty list of step scores")
    if method == "min":
        return float(min(scores))
    if method == "mean":
        return float(math.fsum(scores) / len(scores))
    if method == "last":
        return float(scores[-1])
    if method == "product":
        return float(math.prod(scores))
    raise ValueError(f"unknown aggregation {method!r}; use one of {', '.join(AGGREGATIONS)}")


def first_error(scores: Sequence[float], threshold: float) -> int | None:
    """Index of the first step scored below ``threshold`` (the predicted first wrong step), else None."""
    return next((i for i, score in enumerate(scores) if score < threshold), None)


@dataclass(frozen=True)
class PrmVerdict:
    """The dataset columns of one scored trace."""

    step_scores: list[float]
    prm_score: float
    prm_first_error: int | None
    passed: bool

    def columns(self) -> dict[str, object]:
        return {"step_scores": self.step_scores, "prm_score": self.prm_score,
                "prm_first_error": self.prm_first_error}


def judge(scores: Sequence[float], method: str, threshold: float) -> PrmVerdict:
    """Aggregate and threshold: a trace passes when its aggregate score is at least ``threshold``."""
    score = aggregate(scores, method)
    return PrmVerdict([float(s) for s in scores], score, first_error(scores, threshold), score >= threshold)


UNSCORED: dict[str, object] = {"step_scores": None, "prm_score": None, "prm_first_error": None}
