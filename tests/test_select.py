"""`distill select`: the choice worked out by hand on a run against the loopback teacher, then the card."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_distill, write_jsonl, write_spec

from distill.select.selection import SelectConfig, best_trace, clusters, select
from testing.loopback.teacher import LoopbackTeacher

ORCHARD = "A farmer has 12 rows of {n} apple trees each in the orchard. How many apple trees does the farmer have?"
PROBLEMS = [  # (problem, gold, which of the 4 samples are right)
    ("What is 1+1?", "2", [0, 1, 2, 3]),  # easy: pass rate 1.0
    (ORCHARD.format(n=12), "144", [2]),  # hard: 0.25
    (ORCHARD.format(n=13), "156", [0, 3]),  # 0.5, but in the same cluster as the one above
    ("What is 17*23?", "391", []),  # unsolved: no verified trace
    ("Name the number of sides of a hexagon.", "6", [1, 3]),  # 0.5
    ("How many days are in a week?", "7", [0, 1, 2]),  # 0.75
]


def responder(messages: list[dict[str, str]], index: int) -> str:
    question = messages[-1]["content"]
    problem, gold, right = next(p for p in PROBLEMS if p[0] == question)
    padding = " Let me check again." * index  # later samples are longer
    return f"<thought>Working it out.{padding}</thought> \\boxed{{{gold if index in right else 999}}}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("select")
    source = write_jsonl(tmp / "p.jsonl", [{"question": q, "answer": a} for q, a, _ in PROBLEMS])
    spec = write_spec(tmp / "sel.yaml", source, teacher={"num_samples": 4}, license="mit")
    with LoopbackTeacher(responder) as teacher:
        run_distill("run", spec, "--teacher-url", teacher.base_url, "--out", tmp / "run")
    return tmp / "run"


def test_select_by_hand(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cold"
    result = run_distill("select", run_dir, "--budget", "3", "--out", out)
    assert "wrote" in result.stdout and "3 of 5 candidate problems" in result.stdout
    frame = pd.read_parquet(out)
    # round 1 takes the hardest problem of each cluster: the 12-row orchard (0.25), the hexagon (0.5), the week
    # (0.75); the 13-row orchard (0.5) shares the first orchard's cluster and waits for round 2
    assert frame.problem.tolist() == [PROBLEMS[1][0], PROBLEMS[4][0], PROBLEMS[5][0]]
    assert frame.sample_index.tolist() == [2, 1, 0]  # the shortest verified trace of each problem
    assert frame.kept.all() and frame.correct.all()
    assert frame.selection_reason[0].startswith("pass rate 0.25 (rank 1); cluster")
    assert "2 problem(s), round 1; shortest of 1 verified traces" in frame.selection_reason[0]
    assert "shortest of 3 verified traces" in frame.selection_reason[2]
    report = json.loads((out / "__meta__" / "selection.json").read_text())
    assert report["outcome"] == {"no_verified_trace": 1, "over_budget": 2, "selected": 3}
    assert (report["clusters"], report["clusters_selected"], report["rounds"]) == (4, 3, 1)
    assert report["pass_rate_selected"] == {"0.0-0.2": 0, "0.2-0.4": 1, "0.4-0.6": 1, "0.6-0.8": 1, "0.8-1.0": 0}

    more = run_distill("select", run_dir, "--budget", "5", "--out", tmp_path / "five", "--max-pass-rate", "0.9")
    assert "4 of 4 candidate problems" in more.stdout  # the easy one is out
    assert pd.read_parquet(tmp_path / "five").problem.tolist()[-1] == PROBLEMS[2][0]  # round 2

    card = tmp_path / "hub"
    run_distill("publish", out, "--repo-id", "me/cold", "--dry-run", card)
    text = (card / "README.md").read_text()
    assert "## Selection" in text and "**3** of 5 problems with a verified trace" in text
    assert "| `no_verified_trace` | 1 |" in text


def test_select_errors(run_dir: Path, tmp_path: Path) -> None:
    bad = run_distill("select", run_dir, "--budget", "0", "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --budget:")
    missing = run_distill("select", tmp_path / "nothing", "--budget", "2", "--out", tmp_path / "y", check=False)
    assert missing.returncode == 2 and "not a finished dataset folder" in missing.stderr


def test_highest_prm_wins_and_clusters() -> None:
    rows = [{"prm_score": 0.7, "completion_tokens": 10}, {"prm_score": 0.9, "completion_tokens": 500},
            {"prm_score": None, "completion_tokens": 5}]
    assert best_trace(rows, [0, 1, 2])[0] == 1
    assert best_trace([{"completion_tokens": 9}, {"completion_tokens": 3}], [0, 1]) == (
        1, "shortest of 2 verified traces (3 tokens)")
    config = SelectConfig(budget=1)
    assert clusters([ORCHARD.format(n=1), "Something else", ORCHARD.format(n=2)], config) == [0, 1, 0]
    rows = [{"problem_id": "a", "problem": "p", "kept": True, "correct": True, "pass_rate": 1.0, "prm_score": 0.2},
            {"problem_id": "b", "problem": "q", "kept": True, "correct": True, "pass_rate": 1.0, "prm_score": 0.9}]
    assert [p.row for p in select(rows, SelectConfig(budget=2, min_prm=0.5)).picks] == [1]
