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
    assert report["contaminated"] == 1 and (report["ngram"], report["max_df"], report["min_overlap"]) == (5, 0.005, 0.3)
    assert report["benchmarks"] == [{"name": "math500", "problems": 3}]
    dropped = report["dropped"][0]
    assert dropped["problem_id"] == "planted" and dropped["benchmark"] == "math500"
    # the matched benchmark problem is reported next to the flagged one
    assert dropped["benchmark_problem"] == MATH500[0] == dropped["problem"] and dropped["overlap"] == 1.0


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


# GSM8K-style text written for this project: stock phrases recur across different problems.
BENCH = [
    "Sara buys 4 boxes of pencils for 3 dollars each and pays with a 20 dollar bill. How much money will she have "
    "left over?",
    "Maya earns 12 dollars an hour babysitting and works 5 hours. She buys a scarf for 18 dollars. How much money "
    "will she have left over?",
    "Nora sells 30 cupcakes at 2 dollars each and spends 25 dollars on flour and sugar. How much money will she "
    "have left over?",
    "A train leaves the station with 120 passengers. At the first stop 35 get off and 12 get on. How many "
    "passengers are on the train now?",
]


def test_stock_phrases_are_not_leaks_but_copies_are() -> None:
    index = NgramIndex(5, max_df=0.005, min_overlap=0.3)
    index.add("bench", BENCH)
    other = ("Lena has 50 dollars. She spends 14 dollars on a book and 9 on lunch. How much money will she have "
             "left over?")
    assert index.match(other) is None  # shares only the stock question, which 3 of 4 benchmark problems have
    assert index.is_common("how much money will she") and not index.is_common("a train leaves the station")
    embedded = f"Practice question from a worksheet: {BENCH[3]} Explain each step."
    hit = index.match(embedded)
    assert hit is not None and hit.benchmark_index == 3 and hit.overlap == 1.0 and hit.benchmark_problem == BENCH[3]
    renumbered = BENCH[3].replace("120", "130").replace("35", "30")
    assert index.match(renumbered).benchmark_index == 3  # most 5-grams survive two changed numbers
    # open-r1's rule (any shared 8-gram) flags the stock phrase
    old = NgramIndex(8)
    old.add("bench", BENCH)
    assert old.match(other) is not None and "left over" in old.match(other).ngram


def test_measured_precision_and_recall() -> None:
    """bench/decontamination.py's measurement (docs/decontamination.md): the default rule keeps open-r1's recall
    on planted leaks at many times its precision."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from decontamination import make_data, measure

    benchmark, source = make_data(seed=0)
    default = DecontaminationConfig()
    new = measure(benchmark, source, {"n": default.ngram, "max_df": default.max_df,
                                      "min_overlap": default.min_overlap})
    old = measure(benchmark, source, {"n": 8})
    assert old["precision"] < 0.1 and new["precision"] > 0.85
    assert new["recall"] >= old["recall"] - 0.05
    assert new["recall_by_kind"]["verbatim"] == "12/12" and new["recall_by_kind"]["embedded"] == "12/12"
