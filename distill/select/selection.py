"""Choose a cold-start set: one trace per problem, hard-but-solvable problems first, spread over clusters.

s1K picked 1,000 of 59K questions by quality, then difficulty, then diversity; LIMO used 817. Here, in order:

1. quality: only verified traces (``kept`` and not ``correct == False``; ``min_prm`` when a PRM scored them);
2. one trace per problem: the highest PRM score where there is one, else the shortest correct trace;
3. difficulty: the problem's pass rate (kept samples / samples); lower is harder, and every candidate is solvable
   since it has a verified trace; ``max_pass_rate`` drops the too easy ones;
4. diversity: problems are clustered by MinHash (word shingles, datasketch) and taken round-robin over the
   clusters, the hardest remaining problem of each cluster per round, until the budget is spent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict, Field

from pipelines.filters.dedupe import shingles


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget: int = Field(..., ge=1)
    max_pass_rate: float = Field(1.0, ge=0.0, le=1.0)  # problems solved more often than this are too easy
    min_prm: float | None = Field(None, ge=0.0, le=1.0)
    cluster_threshold: float = Field(0.5, gt=0.0, le=1.0)  # MinHash Jaccard at which problems share a cluster
    shingle_size: int = Field(3, ge=1, le=16)
    num_perm: int = Field(128, ge=16, le=1024)


@dataclass
class Pick:
    row: int  # index into the rows given to ``select``
    reason: str


@dataclass
class Selection:
    picks: list[Pick]
    report: dict[str, Any] = field(default_factory=dict)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def verified(row: dict[str, Any], min_prm: float | None) -> bool:
    if not row.get("kept") or row.get("correct") is False:
        return False
    return min_prm is None or not _is_number(row.get("prm_score")) or row["prm_score"] >= min_prm


def best_trace(rows: Sequence[dict[str, Any]], candidates: Sequence[int]) -> tuple[int, str]:
    """The problem's trace to keep and why: highest PRM score, else the shortest (tokens, then characters)."""
    scored = [i for i in candidates if _is_number(rows[i].get("prm_score"))]
    if scored:
        best = max(scored, key=lambda i: (rows[i]["prm_score"], -_length(rows[i]), -i))
        return best, f"highest PRM score ({rows[best]['prm_score']:.3f}) of {len(candidates)} verified traces"
    best = min(candidates, key=lambda i: (_length(rows[i]), i))
    return best, f"shortest of {len(candidates)} verified traces ({_length(rows[best])} tokens)"


def _length(row: dict[str, Any]) -> int:
    tokens = row.get("completion_tokens")
    return int(tokens) if _is_number(tokens) else len(row.get("completion") or "")


def clusters(texts: Sequence[str], config: SelectConfig) -> list[int]:
    """A cluster id per text: texts linked by MinHash-LSH at ``cluster_threshold`` share one (union-find)."""
    lsh = MinHashLSH(threshold=config.cluster_threshold, num_perm=config.num_perm)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, text in enumerate(texts):
        minhash = MinHash(num_perm=config.num_perm, seed=1)
        minhash.update_batch([s.encode("utf-8", errors="replace") for s in sorted(shingles(text, config.shingle_size))])
        for other in lsh.query(minhash):
            parent[root(int(other))] = root(i)
        lsh.insert(str(i), minhash)
    roots = [root(i) for i in range(len(texts))]
    ids = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]


def select(rows: Sequence[dict[str, Any]], config: SelectConfig) -> Selection:
    """The picks (one row per selected problem, in selection order) and the report."""
    by_problem: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_problem.setdefault(str(row["problem_id"]), []).append(i)
    outcome: Counter[str] = Counter()
    candidates: list[tuple[str, int, str, float]] = []  # problem, row, trace reason, pass rate
    for problem, indices in by_problem.items():
        good = [i for i in indices if verified(rows[i], config.min_prm)]
        if not good:
            outcome["no_verified_trace"] += 1
            continue
        pass_rate = rows[good[0]].get("pass_rate")
        pass_rate = float(pass_rate) if _is_number(pass_rate) else len(good) / len(indices)
        if pass_rate > config.max_pass_rate:
            outcome["too_easy"] += 1
            continue
        best, why = best_trace(rows, good)
        candidates.append((problem, best, why, pass_rate))
    cluster_of = clusters([rows[c[1]]["problem"] or "" for c in candidates], config)
    members: dict[int, list[int]] = {}
    for position, cluster in enumerate(cluster_of):
        members.setdefault(cluster, []).append(position)

    def hardness(position: int) -> tuple[float, float, int, str]:
        _, row, _, pass_rate = candidates[position]
        prm = rows[row].get("prm_score")
        return (pass_rate, -(prm if _is_number(prm) else 1.0), _length(rows[row]), candidates[position][0])

    queues = {cluster: sorted(positions, key=hardness) for cluster, positions in members.items()}
    picks: list[Pick] = []
    picked: list[int] = []  # positions in candidates
    round_number = 0
    while len(picks) < config.budget and any(queues.values()):
        round_number += 1
        # this round: the hardest remaining problem of every cluster, hardest first
        heads = sorted((queue[0] for queue in queues.values() if queue), key=hardness)
        for position in heads[:config.budget - len(picks)]:
            queues[cluster_of[position]].remove(position)
            picked.append(position)
            _, row, why, pass_rate = candidates[position]
            cluster = cluster_of[position]
            picks.append(Pick(row, f"pass rate {pass_rate:.2f} (rank {len(picks) + 1}); cluster {cluster} of "
                                   f"{len(members[cluster])} problem(s), round {round_number}; {why}"))
    outcome["over_budget"] = len(candidates) - len(picks)
    outcome["selected"] = len(picks)
    report = {
        "config": config.model_dump(),
        "problems": len(by_problem), "candidates": len(candidates), "selected": len(picks),
        "outcome": dict(sorted(outcome.items())),
        "clusters": len(members), "clusters_selected": len({cluster_of[p] for p in picked}),
        "rounds": round_number,
        "pass_rate_selected": _histogram([candidates[p][3] for p in picked]),
        "pass_rate_candidates": _histogram([c[3] for c in candidates]),
        "mean_tokens_selected": round(sum(_length(rows[p.row]) for p in picks) / len(picks), 1) if picks else 0,
    }
    prm = [rows[p.row]["prm_score"] for p in picks if _is_number(rows[p.row].get("prm_score"))]
    if prm:
        report["mean_prm_selected"] = round(sum(prm) / len(prm), 4)
    return Selection(picks, report)


def _histogram(rates: Sequence[float]) -> dict[str, int]:
    """Counts of pass rates in five bins: [0, 0.2), …, [0.8, 1.0]."""
    bins = Counter(min(int(rate * 5), 4) for rate in rates)
    return {f"{b / 5:.1f}-{(b + 1) / 5:.1f}": bins.get(b, 0) for b in range(5)}
