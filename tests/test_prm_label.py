"""`distill prm-label`: Math-Shepherd labels from teacher continuations of each step prefix.

A crafted teacher whose continuations are known makes every label exact; the real vLLM test checks that the
teacher really continues the reply (vLLM's continue_final_message) instead of starting a new one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import lab_spec, run_distill, write_jsonl, write_spec

from distill.prm_label.consensus import agrees, parse_first_error, step_messages
from distill.prm_label.plan import (
    Skipped,
    StepLabel,
    first_error,
    label_row,
    next_steps,
    prefix_rows,
    step_label,
    step_traces,
)
from testing.loopback.teacher import LoopbackTeacher

PROBLEMS = [(23, 45), (31, 27), (12, 16)]
STEP = re.compile(r"(\d+) \+ (\d+) = (\d+)\.")


def _steps(a: int, b: int, wrong_at: int | None, sure: bool = False) -> list[str]:
    units = (a % 10, b % 10, (a % 10 + b % 10))
    tens = (a // 10, b // 10, (a // 10 + b // 10))
    steps = []
    for k, (x, y, z) in enumerate((units, tens)):
        z = z + 1 if k == wrong_at else z
        steps.append(f"{x} + {y} = {z}." + (" (sure)" if k == wrong_at and sure else ""))
    return steps


def _wrong_lines(text: str) -> list[str]:
    return [m.group(0) for m in STEP.finditer(text) if int(m.group(1)) + int(m.group(2)) != int(m.group(3))]


def crafted_teacher(messages: list[dict[str, str]], index: int) -> str:
    """Without a prefix: trace ``index`` of the problem (0 right, 1 wrong at step 0, 2 wrong at step 1, 3 wrong
    at step 0 but "sure"). With one: 3 of 4 continuations reach the gold after right steps, none after a wrong
    step, except after a "sure" one, where only the first does (the Monte Carlo label is then wrong)."""
    a, b = map(int, re.findall(r"\d+", messages[-1 if messages[-1]["role"] == "user" else -2]["content"]))
    if messages[-1]["role"] != "assistant":
        wrong_at, sure = {0: (None, False), 1: (0, False), 2: (1, False), 3: (0, True)}[index]
        return "<thought>\n" + "\n".join(_steps(a, b, wrong_at, sure)) + f"\n</thought>\n\n\\boxed{{{a + b}}}"
    prefix = messages[-1]["content"]
    if not _wrong_lines(prefix):
        right = index < 3
    else:
        right = "(sure)" in prefix and index == 0
    rest = "" if prefix.endswith("\n") else "\n"
    return rest + f"</thought>\n\n\\boxed{{{a + b if right else a + b + 100}}}"


def perfect_judge(messages: list[dict[str, str]], index: int) -> str:
    steps = re.findall(r"<step (\d+)>\n(.*?)\n</step", messages[-1]["content"], re.DOTALL)
    wrong = [int(k) for k, text in steps if _wrong_lines(text)]
    return f"The earliest error is at step {wrong[0] if wrong else -1}: \\boxed{{{wrong[0] if wrong else -1}}}"


def _traces(tmp_path: Path, teacher: LoopbackTeacher) -> Path:
    problems = write_jsonl(tmp_path / "problems.jsonl",
                           [{"question": f"{a} + {b}", "answer": str(a + b)} for a, b in PROBLEMS])
    spec = write_spec(tmp_path / "crafted.yaml", problems, dedupe={"enabled": False},
                      teacher={"base_url": teacher.base_url, "num_samples": 4, "max_new_tokens": 64})
    run_distill("run", spec, "--out", tmp_path / "traces")
    return tmp_path / "traces"


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _continuations(teacher: LoopbackTeacher) -> list[dict[str, Any]]:
    return [r for r in teacher.requests if r["messages"][-1]["role"] == "assistant"]


# --- the pure parts -------------------------------------------------------------------------------------------

def test_step_traces_prefixes_are_the_reply_verbatim() -> None:
    completion = "<thought>\n3 + 4 = 7.\n1 + 2 = 3.\n</thought>\n\n\\boxed{37}"
    records = [
        {"problem_id": "a", "sample_index": 1, "problem": "13 + 24", "gold": "37", "completion": completion,
         "thought": "3 + 4 = 7.\n1 + 2 = 3."},
        {"problem_id": "b", "problem": "x", "gold": "1", "completion": "\\boxed{1}", "thought": "1 = 1.\n2 = 2.",
         "reasoning_content": "\n1 = 1.\n2 = 2.\n"},  # a reasoning parser took the thought out of the reply
        {"problem_id": "e", "problem": "x", "gold": "1", "completion": "rewritten", "thought": "not there"},
        {"problem_id": "c", "problem": "x", "gold": None, "completion": completion, "thought": "3 + 4 = 7."},
        {"problem_id": "d", "problem": "x", "gold": "1", "completion": None, "thought": None},
    ]
    skipped = Skipped()
    trace, r1 = step_traces(records, "lines", None, skipped)
    assert skipped.counts == {"thought_not_in_completion": 1, "no_gold": 1, "no_thought": 1}
    assert r1.prefix(0) == "<think>\n1 = 1.\n"  # the opening tag the parser stripped, restored
    assert trace.id == "a/1" and trace.head == "<thought>\n"
    assert trace.prefix(0) == "<thought>\n3 + 4 = 7.\n"
    assert trace.prefix(1) == completion[:completion.index("\n</thought>")]
    [row] = prefix_rows([trace], {"a/1": [1]})
    assert row == {"id": "a/1#1", "problem": "13 + 24", "gold": "37", "prefix": trace.prefix(1)}


def test_a_continuation_becomes_the_whole_reply() -> None:
    from pipelines.steps.generate import continue_reply

    plain = {"text": "2 = 2.\n</thought>\n\n\\boxed{2}", "reasoning": None}
    continue_reply(plain, "<thought>\n1 = 1.\n")
    assert plain["text"] == "<thought>\n1 = 1.\n2 = 2.\n</thought>\n\n\\boxed{2}"
    # a reasoning parser split the continuation at </think>: joined back there
    parsed = {"text": "\n\n\\boxed{2}", "reasoning": "2 = 2.\n"}
    continue_reply(parsed, "<think>\n1 = 1.\n")
    assert parsed == {"text": "<think>\n1 = 1.\n2 = 2.\n</think>\n\n\\boxed{2}", "reasoning": None}
    failed = {"text": None, "error": "teacher_error"}
    continue_reply(failed, "<think>\n")
    assert failed["text"] is None


def test_labels_from_completions_and_the_first_error_budget() -> None:
    assert step_label([{"correct": True}, {"correct": False}, {"correct": None, "rejection_reason": "truncated"},
                       {"correct": None, "rejection_reason": "teacher_error"}]) == StepLabel(1 / 3, True, 3)
    assert step_label([{"correct": False}]) == StepLabel(0.0, False, 1)
    assert step_label([{"rejection_reason": "teacher_error"}]) is None
    [trace] = step_traces([{"problem_id": "p", "problem": "q", "gold": "1", "completion": "a\nb\nc",
                            "thought": "a\nb\nc"}], "lines")
    labels = {0: StepLabel(1.0, True, 4), 1: StepLabel(0.0, False, 4), 2: StepLabel(0.5, True, 4)}
    assert next_steps([trace], {"p/0": labels}, 2, max_steps=16) == {}  # step 1 failed: step 2 is not asked
    assert next_steps([trace], {"p/0": {0: labels[0]}}, 1, max_steps=16) == {"p/0": [1]}
    assert next_steps([trace], {"p/0": {0: labels[0]}}, 1, max_steps=1) == {}
    row = label_row(trace, labels, "first-error")
    assert row is not None and row["completions"] == ["a", "b"] and row["labels"] == [True, False]
    assert row["soft_labels"] == [1.0, 0.0] and row["first_error"] == 1
    everything = label_row(trace, labels, "all")
    assert everything is not None and everything["labels"] == [True, False, True]
    assert label_row(trace, {}, "first-error") is None
    assert first_error([True, True]) == -1 and first_error([False]) == 0


def test_judge_prompt_and_reply() -> None:
    messages = step_messages("1 + 1", ["1 + 1 = 3.", "so 3"], "2")
    assert "<step 0>\n1 + 1 = 3.\n</step 0>" in messages[-1]["content"] and "Reference answer:\n2" in \
        messages[-1]["content"]
    assert parse_first_error("first \\boxed{1}, no: \\boxed{ 0 }", 2) == 0
    assert parse_first_error("\\boxed{-1}", 2) == -1
    from pipelines.teachers.retry import BadResponse

    for reply in ("step 1", "\\boxed{2}", None):
        with pytest.raises(BadResponse):
            parse_first_error(reply, 2)
    assert agrees({"first_error": 1}, 1) and not agrees({"first_error": -1}, 0)


# --- the command, against the crafted teacher --------------------------------------------------------------

def test_prm_label_crafted_teacher_exact_labels_budget_and_resume(tmp_path: Path) -> None:
    with LoopbackTeacher(crafted_teacher) as teacher:
        traces = _traces(tmp_path, teacher)
        before = len(teacher.requests)
        out = tmp_path / "labels"
        result = run_distill("prm-label", traces, "--out", out, "--split", "lines", "--completions", "4",
                             "--teacher-url", teacher.base_url)
        asked = _continuations(teacher)
        assert "wrote" in result.stdout and "first errors" in result.stdout

    # continuations: the reply so far as the final assistant message, continued, never a new turn
    assert len(teacher.requests) - before == len(asked)
    for body in asked:
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert body["n"] == 4 and body["messages"][-1]["content"].startswith("<thought>\n")
    # the first-error budget: every trace's step 0, then step 1 only where step 0 reached the gold (3 of 4)
    assert len(asked) == len(PROBLEMS) * 4 + len(PROBLEMS) * 3
    rows = _rows(out / "labels.jsonl")
    assert len(rows) == len(PROBLEMS) * 4
    for p, (a, b) in enumerate(PROBLEMS):
        right, wrong0, wrong1, sure = (rows[f"{p}/{i}"] for i in range(4))
        assert right["prompt"] == f"{a} + {b}" and right["completions"] == _steps(a, b, None)
        assert (right["labels"], right["soft_labels"], right["first_error"]) == ([True, True], [0.75, 0.75], -1)
        assert (wrong0["labels"], wrong0["soft_labels"], wrong0["first_error"]) == ([False], [0.0], 0)
        assert (wrong1["labels"], wrong1["soft_labels"], wrong1["first_error"]) == ([True, False], [0.75, 0.0], 1)
        assert (sure["labels"], sure["soft_labels"]) == ([True, True], [0.25, 0.25])  # Monte Carlo is fooled
        # the answer is right and a step is not: what only a PRM can see
        assert right["rollouts"] == [4, 4] and wrong1["trace_correct"] is True
    stats = json.loads((out / "stats.json").read_text())
    assert stats["steps_labelled"] == len(PROBLEMS) * 7 and stats["steps_not_asked"] == len(PROBLEMS)
    assert stats["first_error"] == {"-1": 6, "0": 3, "1": 3} and stats["rollouts"] == len(PROBLEMS) * 7 * 4

    # resume: a finished labelling asks nothing; a lost round is asked again, and only it
    with LoopbackTeacher(crafted_teacher) as again:
        first = (out / "labels.jsonl").read_text()
        import shutil

        shutil.rmtree(out / "rollouts" / "step-1")
        run_distill("prm-label", traces, "--out", out, "--split", "lines", "--completions", "4",
                    "--teacher-url", again.base_url)
        assert len(_continuations(again)) == len(PROBLEMS) * 3
        assert (out / "labels.jsonl").read_text() == first
        run_distill("prm-label", traces, "--out", out, "--split", "lines", "--completions", "4",
                    "--teacher-url", again.base_url)
        assert len(_continuations(again)) == len(PROBLEMS) * 3
        changed = run_distill("prm-label", traces, "--out", out, "--split", "lines", "--completions", "2",
                              "--teacher-url", again.base_url, check=False)
        assert changed.returncode == 2 and "other config" in changed.stderr and "--fresh" in changed.stderr
        assert len(changed.stderr.strip().splitlines()) == 1


def test_prm_label_all_steps_and_judge_consensus(tmp_path: Path) -> None:
    with LoopbackTeacher(crafted_teacher) as teacher, LoopbackTeacher(perfect_judge, model="judge") as judge:
        traces = _traces(tmp_path, teacher)
        out = tmp_path / "labels"
        result = run_distill("prm-label", traces, "--out", out, "--split", "lines", "--completions", "4",
                             "--until", "all", "--consensus", "--judge-url", judge.base_url, "--judge-model",
                             "judge", "--teacher-url", teacher.base_url)
        assert "agreed with the judge" in result.stdout
        assert len(_continuations(teacher)) == len(PROBLEMS) * 4 * 2  # every step of every trace
    everything = _rows(out / "labels-all.jsonl")
    assert everything["0/1"]["labels"] == [False, False] and everything["0/2"]["labels"] == [True, False]
    assert everything["0/3"]["judge_first_error"] == 0 and everything["0/3"]["first_error"] == -1
    kept = _rows(out / "labels.jsonl")
    # the judge agrees on the right traces and on both honest errors; the "sure" trace (MC fooled) is dropped
    assert sorted(kept) == sorted(f"{p}/{i}" for p in range(len(PROBLEMS)) for i in range(3))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["consensus"]["agreed"] == 9 and stats["consensus"]["judged"] == 12
    assert len(judge.requests) == 12
    # verdicts are kept: a rerun asks the judge nothing
    with LoopbackTeacher(crafted_teacher) as teacher2, LoopbackTeacher(perfect_judge, model="judge") as judge2:
        run_distill("prm-label", traces, "--out", out, "--split", "lines", "--completions", "4", "--until", "all",
                    "--consensus", "--judge-url", judge2.base_url, "--judge-model", "judge",
                    "--teacher-url", teacher2.base_url)
        assert judge2.requests == [] and _continuations(teacher2) == []


def test_prm_label_bad_input_is_one_line(tmp_path: Path) -> None:
    with LoopbackTeacher(crafted_teacher) as teacher:
        traces = _traces(tmp_path, teacher)
        cases = [
            (["--until", "sometimes"], "--until"),
            (["--completions", "0"], "--completions"),
            (["--split", "regex"], "--split-pattern"),
            (["--consensus"], "--consensus"),
            (["--teacher-url", "localhost:8000"], "--teacher-url"),
        ]
        for extra, flag in cases:
            args = ["--teacher-url", teacher.base_url, *extra] if "--teacher-url" not in extra else extra
            result = run_distill("prm-label", traces, "--out", tmp_path / "x", *args, check=False)
            assert result.returncode == 2, (extra, result.stderr)
            assert result.stderr.startswith(f"error: {flag}") and len(result.stderr.strip().splitlines()) == 1
        loose = write_jsonl(tmp_path / "loose.jsonl", [{"problem": "1 + 1", "answer": "2"}])
        result = run_distill("prm-label", loose, "--out", tmp_path / "y", check=False)
        assert result.returncode == 2 and "--spec" in result.stderr
    down = run_distill("prm-label", traces, "--out", tmp_path / "z", "--teacher-url", "http://127.0.0.1:9/v1",
                       check=False)
    assert down.returncode == 2 and "teacher" in down.stderr and len(down.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "z" / "labels.jsonl").exists()


# --- the real vLLM ---------------------------------------------------------------------------------------------

@pytest.mark.vllm
@pytest.mark.slow
def test_prm_label_real_vllm_continues_the_reply(tmp_path: Path, vllm_teacher: Any) -> None:
    spec = lab_spec(tmp_path / "lab.yaml", vllm_teacher, n_problems=8, num_samples=2, temperature=1.0)
    run_distill("run", spec, "--out", tmp_path / "traces")
    out = tmp_path / "labels"
    run_distill("prm-label", tmp_path / "traces", "--out", out, "--split", "lines", "--completions", "3",
                "--until", "all")
    rows = _rows(out / "labels.jsonl")
    assert rows and all(len(r["labels"]) == len(r["soft_labels"]) == len(r["completions"]) for r in rows.values())
    from pipelines.foreign import load_records

    prefixes = {json.loads(line)["id"]: json.loads(line)["prefix"]
                for line in (out / "rollouts" / "all" / "prefixes.jsonl").read_text().splitlines()}
    completions = load_records(out / "rollouts" / "all")
    assert len(completions) == 3 * len(prefixes)
    for record in completions:
        text = record["completion"]
        assert text.startswith(prefixes[record["problem_id"]])
        # continued, not answered afresh: one thought, opened once by the prefix
        assert text.count("<thought>") == 1, text
    parsed = [r for r in completions if r["rejection_reason"] != "malformed_tags"]
    assert len(parsed) >= 0.8 * len(completions)


@pytest.mark.vllm
@pytest.mark.slow
def test_prm_label_real_vllm_r1_teacher_behind_a_reasoning_parser(tmp_path: Path, vllm_r1_teacher: Any) -> None:
    """R1-style traces (the thought in vLLM's reasoning field) are continued from `<think>` + the steps, and the
    parser's split of each continuation is joined back into one reply."""
    spec = lab_spec(tmp_path / "r1.yaml", vllm_r1_teacher, n_problems=6, num_samples=2, temperature=0.6)
    run_distill("run", spec, "--out", tmp_path / "traces")
    out = tmp_path / "labels"
    run_distill("prm-label", tmp_path / "traces", "--out", out, "--split", "lines", "--completions", "2")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["traces"] >= 8 and "thought_not_in_completion" not in stats["skipped"]
    from pipelines.foreign import load_records

    completions = load_records(out / "rollouts" / "step-0")
    assert all(r["completion"].startswith("<think>\n") and r["completion"].count("</think>") == 1
               for r in completions if r["rejection_reason"] != "teacher_error")
    parsed = [r for r in completions if r["thought"]]
    assert len(parsed) >= 0.8 * len(completions)
    # the labelled steps are the thought's lines; each hard label is what its completions say (any reached the
    # gold), the soft label their share, and the teacher's right first steps do lead to the gold. (How often is
    # the teacher's business, not this command's: a share asserted here failed at random, 4 of 12 once.)
    rows = _rows(out / "labels.jsonl")
    assert all(" = " in r["completions"][0] for r in rows.values())
    assert all(r["labels"] == [s > 0 for s in r["soft_labels"]] for r in rows.values())
    assert all(s in (0.0, 0.5, 1.0) for r in rows.values() for s in r["soft_labels"])  # of 2 completions
    assert any(r["labels"][0] for r in rows.values())
