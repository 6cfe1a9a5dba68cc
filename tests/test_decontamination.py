"""Decontamination: a planted benchmark problem is dropped and listed; clean problems pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.filters.apply import ProblemFilter
from pipelines.filters.decontaminate import NgramIndex, normalise_words, word_ngrams
from pipelines.spec import BenchmarkConfig, DecontaminationConfig, DedupeConfig, SpecError

MATH500 = [
    "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates. Enter your answer in the form "
    "$(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
    "How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?",
    "What is 1+1?",
]


def test_normalise_and_ngrams() -> None:
    assert normalise_words("Hello, World!  (x+y)") == ["hello", "world", "x", "y"]
    assert word_ngrams(["a", "b", "c"], 2) == ["a b", "b c"]
    assert word_ngrams(["a"], 2) == []


def test_index_matches_overlap_and_short_exact() -> None:
    index = NgramIndex(8)
    index.add("math500", MATH500)
    # The benchmark question embedded in a longer, reworded problem still shares an 8-gram.
    planted = "Solve this: how many vertical asymptotes does the graph of y = 2/(x^2+x-6) have? Explain."
    hit = index.match(planted)
    assert hit is not None and hit.benchmark == "math500" and hit.benchmark_index == 1
    assert len(hit.ngram.split()) == 8
    assert index.match("What is 1 + 1?").benchmark_index == 2  # shorter than 8 words: whole text compared
    assert index.match("What is 1+2?") is None
    assert index.match("How many horizontal asymptotes does the curve have when x grows large?") is None
    assert index.sizes == {"math500": 3}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_filter_drops_planted_problem_and_reports_it(tmp_path: Path) -> None:
    bench = _jsonl(tmp_path / "math500.jsonl", [{"problem": p, "answer": "x"} for p in MATH500])
    config = DecontaminationConfig(benchmarks=[BenchmarkConfig(path=str(bench), field="problem")])
    problems = [{"problem_id": "clean", "problem": "Tom has 3 apples and eats one. How many are left?"},
                {"problem_id": "planted", "problem": MATH500[0]}]
    kept = ProblemFilter(DedupeConfig(), config)
    assert [p["problem_id"] for _, p in kept.apply(problems)] == ["clean"]
    report = kept.report()["decontamination"]
    assert report["contaminated"] == 1 and report["ngram"] == 8
    assert report["benchmarks"] == [{"name": "math500", "problems": 3}]
    assert report["dropped"][0]["problem_id"] == "planted" and report["dropped"][0]["benchmark"] == "math500"


def test_bad_benchmark_field_is_one_line(tmp_path: Path) -> None:
    bench = _jsonl(tmp_path / "gsm8k.jsonl", [{"question": "q"}])
    config = DecontaminationConfig(benchmarks=[BenchmarkConfig(path=str(bench))])
    with pytest.raises(SpecError, match=r"decontamination.benchmarks\[0\].field: column 'problem'") as err:
        ProblemFilter(DedupeConfig(), config)
    assert "\n" not in str(err.value)


def test_offline_hub_benchmark_is_one_line() -> None:
    config = DecontaminationConfig(benchmarks=[BenchmarkConfig(path="no-such-owner/no-such-benchmark")])
    with pytest.raises(SpecError, match=r"decontamination.benchmarks\[0\].path: cannot load Hub dataset"):
        ProblemFilter(DedupeConfig(), config)
