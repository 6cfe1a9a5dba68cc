"""Datasets from elsewhere: prm-score, export and publish take any parquet/jsonl with a problem and a thought or
assistant messages; anything else is one line naming the missing column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_distill, write_jsonl

from pipelines.foreign import load_traces
from pipelines.spec import SpecError

THOUGHT = "Step 1: 2 + 3 is 5.\n\nStep 2: so the answer is 5."


def _issue_parquet(path: Path) -> Path:
    """The issue's case: columns problem, thought, messages (and no problem_id / problem_index)."""
    rows = []
    for a, b in [(2, 3), (4, 4), (2, 3)]:
        rows.append({"problem": f"What is {a} + {b}?", "thought": f"Step 1: {a} + {b} = {a + b}.\n\nStep 2: done.",
                     "answer": f"\\boxed{{{a + b}}}", "source": "elsewhere",
                     "messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                  {"role": "assistant", "content": f"<think>{a}+{b}</think>\\boxed{{{a + b}}}"}]})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_parquet_with_problem_thought_and_messages_gets_ids_and_the_factory_columns(tmp_path: Path):
    frame = load_traces(_issue_parquet(tmp_path / "traces.parquet"))
    assert list(frame.problem_id) == ["0", "0", "1"] and list(frame.sample_index) == [0, 1, 0]
    assert list(frame.problem_index) == [0, 0, 1] and frame.kept.all() and (frame.pass_rate == 1.0).all()
    first = frame.iloc[0]
    assert first.thought == "Step 1: 2 + 3 = 5.\n\nStep 2: done." and first.answer == "\\boxed{5}"
    assert first.messages == [{"role": "user", "content": "What is 2 + 3?"},
                              {"role": "assistant",
                               "content": "<thought>\nStep 1: 2 + 3 = 5.\n\nStep 2: done.\n</thought>\n\n\\boxed{5}"}]
    assert first.gold == "\\boxed{5}"  # `answer` is also the gold's usual name


def test_sharegpt_conversations_with_r1_think_tags(tmp_path: Path):
    rows = [{"id": "q7", "conversations": [{"from": "system", "value": "Be careful."},
                                           {"from": "human", "value": "What is 2 + 3?"},
                                           {"from": "gpt", "value": f"<think>{THOUGHT}</think>\nIt is \\boxed{{5}}."}]},
            {"id": "q8", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}]
    frame = load_traces(write_jsonl(tmp_path / "sharegpt.jsonl", rows))
    assert list(frame.problem_id) == ["q7", "q8"] and list(frame.problem) == ["What is 2 + 3?", "Say hi."]
    assert frame.thought[0] == THOUGHT and frame.answer[0] == "It is \\boxed{5}."
    assert [m["role"] for m in frame.messages[0]] == ["system", "user", "assistant"]
    assert frame.messages[0][-1]["content"].startswith("<thought>\nStep 1")
    assert pd.isna(frame.thought[1]) and frame.messages[1][-1] == {"role": "assistant", "content": "hi"}


@pytest.mark.parametrize("rows, line", [
    ([{"text": "x", "thought": "y"}],
     "--in: {path} has no problem column (one of problem, question, prompt, instruction, query, input, or a user "
     "turn in messages); its columns: text, thought"),
    ([{"question": "x", "label": 1}],
     "--in: {path} has neither a thought column (one of thought, reasoning, reasoning_content, thinking, "
     "thinking_trajectory, deepseek_reasoning, cot, think) nor assistant messages (one of messages, conversations, "
     "conversation, chat); its columns: label, question"),
    ([], "--in: {path} has no rows"),
])
def test_anything_else_is_one_line_naming_the_missing_column(tmp_path: Path, rows: list, line: str):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SpecError) as refused:
        load_traces(path)
    assert str(refused.value) == line.format(path=path)


def test_a_hub_id_that_cannot_be_loaded_is_one_line():
    with pytest.raises(SpecError, match=r"^--in: cannot load the Hub dataset 'nobody/no-such-traces' \("):
        load_traces("nobody/no-such-traces")


def test_prm_score_export_and_publish_take_a_foreign_dataset(tmp_path: Path, tiny_model_dir: Path):
    traces = _issue_parquet(tmp_path / "traces.parquet")
    scored = tmp_path / "scored"
    result = run_distill("prm-score", "--in", traces, "--out", scored, "--model", tiny_model_dir,
                         "--style", "math-shepherd", "--threshold", "0")
    assert "3 traces scored" in result.stdout
    frame = pd.read_parquet(scored).sort_values(["problem_index", "sample_index"])
    assert len(frame) == 3 and frame.prm_score.notna().all() and frame.kept.all()
    assert json.loads((scored / "__meta__" / "stats.json").read_text())["samples"] == 3
    run_distill("export", traces, "--format", "sft", "--out", tmp_path / "sft")
    sft = pd.read_parquet(tmp_path / "sft" / "train.parquet")
    assert len(sft) == 3 and all(m[-1]["content"].startswith("<thought>") for m in sft.messages)
    run_distill("publish", traces, "--repo-id", "me/traces", "--dry-run", tmp_path / "hub")
    published = pd.read_parquet(tmp_path / "hub" / "data" / "default")
    assert len(published) == 3
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "Problems from `traces.parquet`" in card and "it has no spec" in card


def test_the_commands_refuse_a_dataset_without_a_problem_in_one_line(tmp_path: Path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "x", "thought": "y"}]), bad)
    for args, flag in ((["prm-score", "--in", bad, "--out", tmp_path / "o", "--model", "m"], "--in"),
                       (["export", bad, "--out", tmp_path / "e"], "DATASET_DIR"),
                       (["publish", bad, "--repo-id", "me/x", "--dry-run", tmp_path / "p"], "DATASET_DIR")):
        result = run_distill(*args, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"error: {flag}: {bad} has no problem column (one of problem, question, prompt, instruction, query, "
            "input, or a user turn in messages); its columns: text, thought"]
