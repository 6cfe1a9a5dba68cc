"""Dedupe: exact and MinHash near-duplicates are dropped, distinct problems kept, deterministically."""

from __future__ import annotations

from pipelines.filters.apply import ProblemFilter
from pipelines.filters.dedupe import Deduplicator, normalise_problem, shingles
from pipelines.spec import DecontaminationConfig, DedupeConfig

BASE = ("A farmer has 17 sheep and buys 5 more every week. After 6 weeks he sells half of his sheep "
        "at the market. How many sheep does the farmer have left?")
NEAR = ("A farmer has 17 sheep and buys 5 more every week. After 6 weeks he sells half of his sheep "
        "at the market. How many sheep does the farmer have left now?")
OTHER = "What is the sum of the interior angles of a hexagon, in degrees?"


def _problems(*texts: str) -> list[dict]:
    return [{"problem_id": f"p{i}", "problem": t, "gold": None} for i, t in enumerate(texts)]


def test_normalise_keeps_operators_and_folds_case_and_space() -> None:
    assert normalise_problem("  What is 2+3 ?\n") == normalise_problem("what IS 2+3 ?")
    assert normalise_problem("2+3") != normalise_problem("2-3")
    assert shingles("a b", 3) == {"a b"}
    assert shingles("x = 1 + 2", 3) == {"x = 1", "= 1 +", "1 + 2"}


def test_exact_near_and_distinct() -> None:
    dedupe = Deduplicator(near_threshold=0.8, num_perm=128)
    assert dedupe.check("a", BASE) is None
    exact = dedupe.check("b", "  " + BASE.upper() + " ")
    assert exact is not None and exact.kind == "exact" and exact.duplicate_of == "a"
    near = dedupe.check("c", NEAR)
    assert near is not None and near.kind == "near" and near.duplicate_of == "a" and 0.8 <= near.similarity < 1
    assert dedupe.check("d", OTHER) is None


def test_changed_numbers_are_not_duplicates_of_short_problems() -> None:
    dedupe = Deduplicator(near_threshold=0.85)
    assert dedupe.check("a", "What is 12 times 7?") is None
    assert dedupe.check("b", "What is 13 times 8?") is None


def test_filter_report_counts_and_is_deterministic() -> None:
    rows = _problems(BASE, OTHER, NEAR, BASE, "", "Name a prime number between 20 and 25.")
    reports, kept = [], []
    for _ in range(2):
        problems = ProblemFilter(DedupeConfig(near_threshold=0.8), DecontaminationConfig())
        kept.append([(i, p["problem_id"]) for i, p in problems.apply(rows)])
        reports.append(problems.report())
    assert kept[0] == kept[1] == [(0, "p0"), (1, "p1"), (4, "p4"), (5, "p5")]
    assert reports[0] == reports[1]
    dedupe = reports[0]["dedupe"]
    assert (dedupe["exact"], dedupe["near"], dedupe["checked"]) == (1, 1, 6)
    assert {(d["problem_id"], d["kind"], d["duplicate_of"]) for d in dedupe["dropped"]} == {
        ("p2", "near", "p0"), ("p3", "exact", "p0")}


def test_dedupe_can_be_switched_off() -> None:
    problems = ProblemFilter(DedupeConfig(enabled=False), DecontaminationConfig())
    assert len(list(problems.apply(_problems(BASE, BASE)))) == 2
    assert problems.report()["dedupe"]["dropped"] == []
