"""Cold-start curriculum: stage 1 teaches the format on short traces of easy problems, stage 2 is the rest.

A trace's difficulty combines how often the teacher solved its problem (``pass_rate`` over its
``num_samples``) and how long the trace is (its length percentile among the exported traces):
``difficulty = (1 - pass_rate + length_percentile) / 2``, from 0 (easy, short) to 1 (hard, long).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field


class CurriculumConfig(BaseModel):
    """Which traces go to stage 1: an easy problem (pass rate at least ``stage1_min_pass_rate``) and a short
    trace (at most the ``stage1_max_length_quantile`` quantile of the exported lengths)."""

    model_config = ConfigDict(extra="forbid")

    stage1_min_pass_rate: float = Field(0.75, ge=0.0, le=1.0)
    stage1_max_length_quantile: float = Field(0.5, gt=0.0, le=1.0)


def length_percentiles(lengths: Sequence[int]) -> list[float]:
    """Each length's fraction of lengths at or below it (1.0 for the longest)."""
    ordered = sorted(lengths)
    n = len(ordered)
    return [bisect_right(ordered, length) / n for length in lengths] if n else []


def quantile(values: Sequence[int], q: float) -> int:
    """The lower q-quantile (an observed value)."""
    ordered = sorted(values)
    if not ordered:
        return 0
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 1e-9) - 1))]


def difficulties(pass_rates: Sequence[float | None], lengths: Sequence[int]) -> list[float]:
    """Per trace, in [0, 1]; an unknown pass rate counts as 0.5."""
    return [round((1.0 - (0.5 if p is None else p) + pct) / 2, 4)
            for p, pct in zip(pass_rates, length_percentiles(lengths), strict=True)]


def split_stages(pass_rates: Sequence[float | None], lengths: Sequence[int],
                 config: CurriculumConfig) -> tuple[list[int], list[int]]:
    """Row indices of stage 1 and stage 2, each ordered from the easiest to the hardest trace."""
    max_length = quantile(lengths, config.stage1_max_length_quantile)
    score = difficulties(pass_rates, lengths)
    stage1 = [i for i, (p, n) in enumerate(zip(pass_rates, lengths, strict=True))
              if p is not None and p >= config.stage1_min_pass_rate and n <= max_length]
    chosen = set(stage1)
    stage2 = [i for i in range(len(lengths)) if i not in chosen]
    return sorted(stage1, key=lambda i: (score[i], i)), sorted(stage2, key=lambda i: (score[i], i))
