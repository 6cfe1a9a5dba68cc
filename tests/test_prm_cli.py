"""`distill run` with a prm: section, `distill prm-score` and `distill prm-eval`, through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_distill, write_jsonl, write_spec
from test_prm_scoring import direct_math_shepherd

from pipelines.store import finalize, write_part
from prm.evaluate import MINI_SET, load_labelled, predictions, processbench_f1
from prm.split import split_steps
from testing.loopback.teacher import LoopbackTeacher

PROBLEMS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (12, 30), (7, 8), (40, 2)]]


def thought_for(question: str, index: int) -> str:
    a, b = map(int, re.findall(r"\d+", question))
    steps = [f"Step 1: we add {a} and {b}.", f"Step 2: {a} + {b} = {a + b}."]
    if index % 2:
        steps += [f"Step 3: check: {a + b} - {b} = {a}.", "Step 4: so the sum is right."]
    return "\n\n".join(steps)


def responder(messages: list[dict[str, str]], index: int) -> str:
    question = messages[-1]["content"]
    a, b = map(int, re.findall(r"\d+", question))
    answer = a + b if question != PROBLEMS[2]["question"] or index == 0 else a + b + 1  # one wrong answer
    return f"<thought>\n{thought_for(question, index)}\n</thought>\n\nThe sum is \\boxed{{{answer}}}."


def expected_scores(model_dir: Path) -> dict[tuple[str, int], list[float]]:
    return {(p["question"], i): direct_math_shepherd(model_dir, p["question"],
                                                     [s.strip() for s in split_steps(thought_for(p["question"], i))])
            for p in PROBLEMS for i in range(2)}


def _none(value: object) -> object:
    """pandas reads a null as None or NaN."""
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def midpoint_threshold(scores: list[float]) -> float:
    """A threshold that puts about half of the scores strictly below it."""
    ordered = sorted(scores)
    mid = len(ordered) // 2
    return (ordered[mid - 1] + ordered[mid]) / 2


def test_distill_run_with_prm_scores_and_rejects_exactly_the_traces_under_threshold(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    expected = expected_scores(tiny_model_dir)
    correct_keys = [k for k in expected if not (k[0] == PROBLEMS[2]["question"] and k[1] == 1)]
    threshold = midpoint_threshold([min(expected[k]) for k in correct_keys])
    source = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    with LoopbackTeacher(responder) as teacher:
        spec = write_spec(tmp_path / "prm-run.yaml", source, teacher={"base_url": teacher.base_url},
                          prm={"model": str(tiny_model_dir), "style": "math-shepherd", "threshold": threshold})
        result = run_distill("run", spec, "--out", tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out").sort_values(["problem_index", "sample_index"])
    assert len(df) == 8 and {"step_scores", "prm_score", "prm_first_error"} <= set(df.columns)
    incorrect = df[df.rejection_reason == "incorrect"]
    assert len(incorrect) == 1 and incorrect.prm_score.isna().all()  # rejected earlier: not scored
    scored = df[df.rejection_reason != "incorrect"]
    for row in scored.itertuples():
        want = expected[(row.problem, row.sample_index)]
        assert list(row.step_scores) == pytest.approx(want, abs=1e-4)
        assert row.prm_score == pytest.approx(min(want), abs=1e-4)
        below = [i for i, s in enumerate(want) if s < threshold]
        assert _none(row.prm_first_error) == (below[0] if below else None)
        assert row.kept == (min(want) >= threshold)
        assert _none(row.rejection_reason) == (None if row.kept else "prm")
    n_prm = int((df.rejection_reason == "prm").sum())
    assert 0 < n_prm < len(scored)
    for _, group in df.groupby("problem_id"):
        assert group.pass_rate.iloc[0] == pytest.approx(group.kept.mean())
    stats = json.loads((tmp_path / "out" / "__meta__" / "stats.json").read_text())
    assert stats["reasons"]["prm"] == n_prm and stats["prm"]["threshold"] == threshold
    assert f"\"prm\": {n_prm}" in result.stdout


def _dataset(tmp_path: Path) -> Path:
    """A dataset folder as `distill run` writes it (no PRM columns), built with pipelines.store."""
    records = []
    for p_index, problem in enumerate(PROBLEMS):
        for s_index in range(2):
            thought = thought_for(problem["question"], s_index)
            kept = not (p_index == 2 and s_index == 1)
            records.append({"problem_id": f"p{p_index}", "problem_index": p_index, "sample_index": s_index,
                            "problem": problem["question"], "gold": problem["answer"], "thought": thought,
                            "answer": "x", "correct": kept, "kept": kept,
                            "rejection_reason": None if kept else "incorrect", "completion_tokens": 10,
                            "teacher_model": "t", "pass_rate": 0.5 if p_index == 2 else 1.0,
                            "messages": [{"role": "user", "content": problem["question"]}]})
    cache, out = tmp_path / "cache", tmp_path / "data"
    write_part(cache, records[:4])
    write_part(cache, records[4:])
    finalize(cache, out, rows_per_file=3, run_info={"spec": "hand-made", "wall_time_s": 2.0})
    (out / "__meta__" / "spec.yaml").write_text("name: hand-made\noutput:\n  rows_per_file: 3\n")
    return out


def test_prm_score_adds_columns_refilters_and_can_rescore_in_place(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = _dataset(tmp_path)
    expected = expected_scores(tiny_model_dir)
    threshold = midpoint_threshold([min(v) for k, v in expected.items() if k != (PROBLEMS[2]["question"], 1)])
    out = tmp_path / "scored"
    result = run_distill("prm-score", "--model", tiny_model_dir, "--style", "math-shepherd", "--in", data,
                         "--out", out, "--threshold", threshold, "--batch-size", 3)
    assert "traces scored" in result.stdout
    assert sorted(p.name for p in out.glob("data-*.parquet")) == [f"data-0000{i}-of-00003.parquet" for i in range(3)]
    df = pd.read_parquet(out).sort_values(["problem_index", "sample_index"])
    rejected = df[df.rejection_reason == "prm"]
    for row in df.itertuples():
        want = expected[(row.problem, row.sample_index)]
        if row.rejection_reason == "incorrect":
            assert row.step_scores is None
            continue
        assert list(row.step_scores) == pytest.approx(want, abs=1e-4)
        assert row.kept == (min(want) >= threshold)
    assert 0 < len(rejected) < 7
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["reasons"]["prm"] == len(rejected) and stats["prm"]["scored"] == 7
    assert stats["spec"] == "hand-made" and stats["samples"] == 8
    assert (out / "__meta__" / "spec.yaml").read_text() == (data / "__meta__" / "spec.yaml").read_text()
    for _, group in df.groupby("problem_id"):
        assert group.pass_rate.iloc[0] == pytest.approx(group.kept.mean())

    # re-filter in place with a threshold under every score: earlier prm rejections come back
    run_distill("prm-score", "--model", tiny_model_dir, "--in", out, "--out", out, "--threshold", 0.0)
    again = pd.read_parquet(out)
    assert (again.rejection_reason == "prm").sum() == 0 and again.kept.sum() == 7
    assert not (out / ".cache" / "prm-score").exists()


def test_prm_score_errors_are_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = _dataset(tmp_path)
    cases = [
        (["--model", tiny_model_dir, "--in", tmp_path / "nothing", "--out", tmp_path / "o"],
             f"--in: {tmp_path / 'nothing'} does not exist"),
        (["--model", tiny_model_dir, "--in", data, "--out", tmp_path / "o", "--threshold", "1.5"], "--threshold:"),
        (["--model", tiny_model_dir, "--style", "orm", "--in", data, "--out", tmp_path / "o"], "--style:"),
        (["--in", data, "--out", tmp_path / "o"], "--model: missing"),
        (["--model", tiny_model_dir, "--backend", "vllm", "--base-url", "http://127.0.0.1:9", "--in", data,
          "--out", tmp_path / "o"], "prm.base_url: cannot reach"),
    ]
    for args, message in cases:
        result = run_distill("prm-score", *args, check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().startswith(f"error: {message}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_prm_eval_reports_processbench_f1_on_the_mini_set(tmp_path: Path, tiny_model_dir: Path) -> None:
    report_file = tmp_path / "report.json"
    result = run_distill("prm-eval", "--model", tiny_model_dir, "--style", "math-shepherd", "--threshold", 0.45,
                         "--out", report_file)
    report = json.loads(report_file.read_text())
    traces = load_labelled(MINI_SET)
    scores = [direct_math_shepherd(tiny_model_dir, t.problem, t.steps) for t in traces]
    want = processbench_f1(predictions(scores, 0.45), [t.label for t in traces])
    assert report["traces"] == 50 and report["n_correct"] == 23 and report["n_erroneous"] == 27
    assert report["f1"] == pytest.approx(want["f1"]) and report["acc_correct"] == pytest.approx(want["acc_correct"])
    assert report["best_f1"] >= report["f1"]
    assert "ProcessBench F1" in result.stdout


def test_distill_run_with_an_unloadable_prm_fails_before_generating(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS[:1])
    with LoopbackTeacher(responder) as teacher:
        spec = write_spec(tmp_path / "bad-prm.yaml", source, teacher={"base_url": teacher.base_url},
                          prm={"model": str(tmp_path / "no-such-prm")})
        result = run_distill("run", spec, "--out", tmp_path / "out", check=False)
        assert teacher.requests == []
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: prm.model: cannot load")
