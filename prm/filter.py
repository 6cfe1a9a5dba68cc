"""Apply PRM verdicts to samples: add the PRM columns and reject traces under the threshold (reason ``prm``).

Shared by the pipeline step (samples nested in problem rows) and ``distill prm-score`` (flat records),
so that re-scoring a dataset gives the same result as scoring it during the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prm.aggregate import UNSCORED, PrmVerdict

REASON = "prm"


def wants_score(sample: dict[str, Any], score_rejected: bool = False) -> bool:
    """Kept samples with a thought; earlier PRM rejections are scored again (the threshold may have moved)."""
    if not sample.get("thought"):
        return False
    return bool(sample.get("kept")) or sample.get("rejection_reason") == REASON or score_rejected


def apply_verdict(sample: dict[str, Any], verdict: PrmVerdict | None) -> dict[str, Any]:
    """The sample with PRM columns; a kept sample that fails the threshold is rejected with reason ``prm``."""
    out = {**sample, **(verdict.columns() if verdict else UNSCORED)}
    if sample.get("rejection_reason") == REASON:
        out.update(kept=True, rejection_reason=None)
    if verdict is not None and not verdict.passed and out.get("kept"):
        out.update(kept=False, rejection_reason=REASON)
    return out


def score_samples(scorer: Any, samples: Sequence[dict[str, Any]], problems: Sequence[str],
                  score_rejected: bool = False) -> list[dict[str, Any]]:
    """Score the samples that want it in one call (one or more forward passes), leave the others unscored."""
    chosen = [i for i, s in enumerate(samples) if wants_score(s, score_rejected)]
    verdicts = scorer.score([(problems[i], samples[i]["thought"]) for i in chosen]) if chosen else []
    by_index = dict(zip(chosen, verdicts, strict=True))
    return [apply_verdict(s, by_index.get(i)) for i, s in enumerate(samples)]


def score_rows(scorer: Any, rows: list[dict[str, Any]], score_rejected: bool = False) -> list[dict[str, Any]]:
    """Problem rows with ``samples`` lists: score all their samples together, then recompute ``pass_rate``."""
    flat = [(r, s) for r in rows for s in r["samples"]]
    scored = iter(score_samples(scorer, [s for _, s in flat], [r["problem"] for r, _ in flat], score_rejected))
    for row in rows:
        row["samples"] = [next(scored) for _ in row["samples"]]
        kept = [bool(s.get("kept")) for s in row["samples"]]
        row["pass_rate"] = sum(kept) / len(kept) if kept else 0.0
    return rows
