"""`distill run` end to end: the real Distilabel pipeline against a loopback teacher and in-process."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from conftest import run_distill, write_jsonl, write_spec

from testing.loopback.teacher import LoopbackTeacher

PROBLEMS = [
    {"question": "What is 2+3?", "answer": "2+3=5 #### 5"},
    {"question": "What is half of 1?", "answer": "0.5"},
    {"question": "What is 6*7?", "answer": "#### 42"},
    {"question": "What is 10-4?", "answer": "#### 6"},
]
# (problem keyword, sample index) -> reply, and the reason each must end with.
REPLIES = {
    ("2+3", 0): ("<thought>\nStep 1: 2+3=5\n\nStep 2: done\n</thought>\n\\boxed{5}", None),
    ("2+3", 1): ("<think>2+3=6</think> \\boxed{6}", "incorrect"),
    ("half", 0): ({"content": "\\boxed{\\frac{1}{2}}", "reasoning_content": "Half of one is 1/2."}, None),
    ("half", 1): ("The answer is 0.5", "no_thought"),
    ("6*7", 0): ("<thought>6*7 is 42 and I keep going", "unterminated_thought"),
    ("6*7", 1): ("First, 6*7=42.\n</think>\n\nThe answer is 42.", None),
    ("10-4", 0): ("<thought>10-4=6</thought>   ", "no_answer"),
    ("10-4", 1): ({"content": "<thought>10-4=6</thought> \\boxed{6", "finish_reason": "length"}, "truncated"),
}


def responder(messages: list[dict[str, str]], index: int) -> str | dict:
    question = messages[-1]["content"]
    for (key, sample), (reply, _) in REPLIES.items():
        if key in question and sample == index:
            return reply
    raise AssertionError(f"unexpected request {question!r} #{index}")


@pytest.fixture()
def problems_spec(tmp_path: Path) -> Path:
    source = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    return write_spec(tmp_path / "arith.yaml", source, teacher={"top_logprobs": 3, "temperature": 0.7})


def test_run_against_loopback_teacher(problems_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with LoopbackTeacher(responder) as teacher:
        result = run_distill("run", problems_spec, "--teacher-url", teacher.base_url,
                             "--teacher-model", "served-teacher", "--out", out)
    assert "kept 3" in result.stdout

    # The teacher saw one request per problem, asking for n samples with the spec's sampling settings.
    assert len(teacher.requests) == len(PROBLEMS)
    first = teacher.requests[0]
    # k+1 asked: vLLM puts the sampled token in place of the k-th when it is outside the top k
    assert (first["n"], first["model"], first["temperature"], first["top_logprobs"]) == (2, "served-teacher", 0.7, 4)
    assert first["return_tokens_as_token_ids"] is True and first["return_token_ids"] is True
    assert first["messages"][0]["role"] == "system" and "<thought>" in first["messages"][0]["content"]

    frame = pd.read_parquet(out)
    assert len(frame) == 8 and not frame.duplicated(["problem_id", "sample_index"]).any()
    by_key = {(row.problem, row.sample_index): row for row in frame.itertuples()}
    for (key, sample), (_, reason) in REPLIES.items():
        row = next(r for (problem, s), r in by_key.items() if key in problem and s == sample)
        assert (None if pd.isna(row.rejection_reason) else row.rejection_reason) == reason, (key, sample)
        assert row.kept == (reason is None)
        assert row.teacher_model == "served-teacher"
    kept = frame[frame.kept]
    assert kept.correct.all()
    half = kept[kept.problem.str.contains("half")].iloc[0]
    assert half.reasoning_content == "Half of one is 1/2." and half.thought == "Half of one is 1/2."
    assert list(half.messages[-1].values()) == ["assistant", "<thought>\nHalf of one is 1/2.\n</thought>\n\n"
                                                "\\boxed{\\frac{1}{2}}"]
    r1 = kept[kept.problem.str.contains("6\\*7")].iloc[0]
    assert r1.messages[-1]["content"] == "<thought>\nFirst, 6*7=42.\n</thought>\n\nThe answer is 42."
    assert set(frame[frame.rejection_reason == "incorrect"].correct) == {False}
    assert frame.loc[frame.rejection_reason == "no_thought", "correct"].isna().all()
    assert frame.gold.tolist().count("42") == 2 and (frame.completion_tokens > 0).all()
    # Top-k logprobs per generated token, tokens as ids, for KD.
    tops = kept.iloc[0].logprobs
    assert len(tops) == kept.iloc[0].completion_tokens and len(tops[0]) == 3
    assert tops[0][0]["token"].startswith("token_id:")
    pass_rates = frame.groupby("problem").pass_rate.first()
    assert pass_rates[PROBLEMS[0]["question"]] == 0.5 and pass_rates[PROBLEMS[3]["question"]] == 0.0

    loaded = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert loaded.num_rows == 8 and "messages" in loaded.column_names

    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["samples"] == 8 and stats["problems"] == 4 and stats["kept"] == 3
    assert stats["reasons"] == {"kept": 3, "incorrect": 1, "no_thought": 1, "unterminated_thought": 1,
                                "no_answer": 1, "truncated": 1}
    assert stats["pass_rate"] == 0.375
    assert stats["tokens"]["completion_total"] == int(frame.completion_tokens.sum())
    assert stats["wall_time_s"] > 0
    # __meta__/spec.yaml is the effective spec: the file's settings with the flags applied, loadable as a spec
    import yaml

    from pipelines.spec import DatasetSpec, load_spec

    used = DatasetSpec.model_validate(yaml.safe_load((out / "__meta__" / "spec.yaml").read_text()))
    given, _ = load_spec(str(problems_spec))
    assert used.teacher.model == "served-teacher" and used.teacher.base_url == teacher.base_url
    assert used.model_copy(update={"teacher": given.teacher}) == given
    assert used.teacher.model_copy(update={"model": given.teacher.model, "base_url": given.teacher.base_url}) \
        == given.teacher


def test_resume_does_not_redo_finished_problems(problems_spec: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    with LoopbackTeacher(responder) as teacher:
        run_distill("run", problems_spec, "--teacher-url", teacher.base_url, "--out", out, "--cache-dir", cache,
                    "--limit", "2")
        assert len(teacher.requests) == 2
        assert len(pd.read_parquet(out)) == 4
        run_distill("run", problems_spec, "--teacher-url", teacher.base_url, "--out", out, "--cache-dir", cache)
        asked = [r["messages"][-1]["content"] for r in teacher.requests[2:]]
    # The window sends requests concurrently, so their order is free; their set is not.
    assert sorted(asked) == sorted([PROBLEMS[2]["question"], PROBLEMS[3]["question"]])
    frame = pd.read_parquet(out)
    assert len(frame) == 8 and not frame.duplicated(["problem_id", "sample_index"]).any()
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["runs"] == 2 and stats["samples"] == 8


def test_transformers_backend_in_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS[:3])
    spec = write_spec(tmp_path / "local.yaml", source, teacher={"backend": "transformers",
                                                                "model": str(tiny_model_dir),
                                                                "num_samples": 2, "max_new_tokens": 12})
    out = tmp_path / "out"
    run_distill("run", spec, "--out", out)
    frame = pd.read_parquet(out)
    assert len(frame) == 6 and sorted(frame.sample_index.tolist()) == [0, 0, 0, 1, 1, 1]
    assert (frame.teacher_model == str(tiny_model_dir)).all()
    assert frame.completion.map(lambda text: isinstance(text, str) and len(text) > 0).all()
    assert frame.completion_tokens.between(1, 12).all()
    # A random model writes no <thought>: every sample is rejected, each with a reason.
    assert not frame.kept.any() and frame.rejection_reason.notna().all()


def test_list_and_shipped_specs_load() -> None:
    listing = run_distill("list").stdout
    for name in ("gsm8k", "math", "dictation", "demo"):
        assert name in listing
    from pipelines.spec import load_spec

    gsm8k, _ = load_spec("gsm8k")
    assert (gsm8k.source.path, gsm8k.source.problem_field, gsm8k.teacher.num_samples) == ("openai/gsm8k", "question", 4)
    dictation, _ = load_spec("dictation")
    assert dictation.verification == "similarity" and Path(dictation.source.path).is_file()
    assert sum(1 for _ in open(dictation.source.path)) >= 30


def test_spec_errors_name_the_field(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", PROBLEMS)
    bad = write_spec(tmp_path / "bad.yaml", source, teacher={"temperature": "hot"})
    result = run_distill("run", bad, "--out", tmp_path / "o", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "teacher.temperature" in result.stderr
    typo = write_spec(tmp_path / "typo.yaml", source, teacher={"num_sample": 3})
    result = run_distill("run", typo, "--out", tmp_path / "o", check=False)
    assert "teacher.num_sample: unknown key" in result.stderr


def test_the_plan_decides_whether_the_teacher_is_needed(tmp_path: Path) -> None:
    from pipelines.run.plan import make_plan
    from pipelines.spec import load_spec
    from pipelines.store import write_part

    source = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    spec, _ = load_spec(str(write_spec(tmp_path / "w.yaml", source)))
    cache = tmp_path / "cache"
    plan = make_plan(spec, None, cache)
    assert plan.work_left and plan.total == 4 and plan.done_count == 0  # nothing written yet
    assert plan.pending().column("problem_id").to_pylist() == ["0", "1", "2", "3"]
    assert plan.pending().column("problem_index").to_pylist() == [0, 1, 2, 3]

    def record(pid: int, reason: str | None) -> dict:
        return {"problem_id": str(pid), "problem_index": pid, "sample_index": 0, "problem": "p", "gold": "1",
                "kept": reason is None, "rejection_reason": reason}

    write_part(cache, [record(0, None), record(1, "incorrect"), record(2, None)])
    plan = plan.with_cache(cache)
    assert plan.work_left and plan.pending().column("problem_id").to_pylist() == ["3"]  # problem 3 is missing
    assert plan.missing(cache) == 1
    assert not make_plan(spec, 3, cache).work_left  # but not among the first three
    write_part(cache, [record(3, "teacher_error")])
    plan = plan.with_cache(cache)
    assert plan.work_left and plan.failed == {"3"}  # the teacher failed on problem 3: ask again
    assert plan.missing(cache) == 0  # written, though: nothing is missing
    write_part(cache, [record(3, None)])
    assert not plan.with_cache(cache).work_left  # a later version answered it

    # A duplicate problem (id 4) is never generated: dedupe drops it, so nothing is left to do.
    with_duplicate = write_jsonl(tmp_path / "dup.jsonl", [*PROBLEMS, PROBLEMS[0]])
    spec, _ = load_spec(str(write_spec(tmp_path / "d.yaml", with_duplicate)))
    plan = make_plan(spec, None, cache)
    assert not plan.work_left and plan.report["dedupe"]["exact"] == 1
    spec.dedupe.enabled = False
    assert make_plan(spec, None, cache).pending().column("problem_id").to_pylist() == ["4"]
