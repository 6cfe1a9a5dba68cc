"""Issue 26's thought-budget data kinds (lab/budget.py): answer_only strips the thought of the verified samples,
shortest keeps one trace per problem (`distill select`), on a hand-made dataset folder like `distill run` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lab.config import load_lab_config
from lab.tasks import DICTATION_PROMPT
from pipelines.trace.parse import normalise

# (problem id, sample index, kept, thought steps, completion tokens)
SAMPLES = [
    ("p0", 0, True, 3, 30), ("p0", 1, True, 1, 20), ("p0", 2, False, 0, 10),  # the 10-token one is rejected
    ("p1", 0, True, 2, 25), ("p1", 1, True, 2, 25),  # a tie: sample 0 wins
    ("p2", 0, False, 1, 12),  # no verified trace: no row in either derivation
    ("p3", 0, True, 2, 40), ("p3", 1, False, 1, 15),
]
ANSWERS = {"p0": "I will meet Sarah at five.", "p1": "We need to call the doctor.", "p2": "They will bring dinner.",
           "p3": "On friday, she must visit grandma."}


def _dataset(folder: Path) -> Path:
    """Rows as `distill run` writes them: the raw completion, its thought and answer, the normalised assistant
    turn in ``messages`` (kept rows only), the teacher's tokens and log-probabilities."""
    (folder / "__meta__").mkdir(parents=True)
    (folder / "__meta__" / "spec.yaml").write_text("name: lab-thought-budget\n")
    (folder / "__meta__" / "stats.json").write_text(json.dumps({"samples": len(SAMPLES)}) + "\n")
    rows = []
    for problem_id, sample, kept, steps, tokens in SAMPLES:
        problem = f"spoken {problem_id} um uh"
        thought = "\n".join(f'remove filler "um" ({problem_id} step {s}).' for s in range(steps)) or "none."
        answer = ANSWERS[problem_id] if kept else "wrong"
        completion = f"<thought>\n{thought}\n</thought>\n\n{answer}"
        rows.append({
            "problem_id": problem_id, "problem_index": int(problem_id[1:]), "sample_index": sample,
            "problem": problem, "gold": ANSWERS[problem_id], "completion": completion, "reasoning_content": None,
            "thought": thought, "answer": answer, "correct": kept, "kept": kept,
            "rejection_reason": None if kept else "incorrect",
            "messages": [{"role": "system", "content": DICTATION_PROMPT}, {"role": "user", "content": problem},
                         {"role": "assistant", "content": normalise(thought, answer)}] if kept else None,
            "completion_tokens": tokens, "pass_rate": 0.5,
            "tokens": [f"token_id:{i}" for i in range(tokens)], "token_logprobs": [-0.1] * tokens,
            "logprobs": [[{"token": f"token_id:{i}", "logprob": -0.1}] for i in range(tokens)],
        })
    pq.write_table(pa.Table.from_pylist(rows), folder / "data-00000-of-00001.parquet")
    return folder


def _words(text: str) -> int:
    return len(text.split())


def test_answer_only_strips_the_thought_keeps_the_answer_and_recounts_tokens(tmp_path: Path) -> None:
    from distill.axolotl.export import ExportOptions, export_dataset
    from lab.budget import answer_only, data_stats
    from pipelines.foreign import load_records

    source = _dataset(tmp_path / "filtered")
    before = {(r["problem_id"], r["sample_index"]): r for r in load_records(source)}
    report = answer_only(source, tmp_path / "answer_only", _words)
    rows = load_records(tmp_path / "answer_only")
    assert sorted((r["problem_id"], r["sample_index"]) for r in rows) == \
        [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1), ("p3", 0)]  # the same verified samples, no others
    for row in rows:
        full = before[(row["problem_id"], row["sample_index"])]
        assert row["kept"] and row["thought"] is None
        assert row["completion"] == row["answer"] == ANSWERS[row["problem_id"]]
        assert row["messages"][-1] == {"role": "assistant", "content": ANSWERS[row["problem_id"]]}
        assert [m["content"] for m in row["messages"][:-1]] == [m["content"] for m in full["messages"][:-1]]
        assert "thought" not in row["messages"][-1]["content"] and "remove filler" not in row["completion"]
        removed = _words(full["completion"]) - _words(full["answer"])  # what the thought took
        assert row["completion_tokens"] == full["completion_tokens"] - removed < full["completion_tokens"]
        assert row["tokens"] is None and row["logprobs"] is None and row["token_logprobs"] is None
    tokens = [r["completion_tokens"] for r in rows]
    assert report["rows"] == 5 and report["mean_completion_tokens"] == round(sum(tokens) / 5, 1)
    assert report["source_mean_completion_tokens"] == 28.0  # (30 + 20 + 25 + 25 + 40) / 5
    assert data_stats(tmp_path / "answer_only") == {"rows": 5, "mean_completion_tokens": round(sum(tokens) / 5, 1)}
    assert (tmp_path / "answer_only" / "__meta__" / "spec.yaml").is_file()
    # what `distill export --format sft` trains on: assistant turns without the thought
    manifest = export_dataset(tmp_path / "answer_only", tmp_path / "export", ExportOptions(format="sft",
                                                                                        file_format="jsonl"))
    exported = [json.loads(line) for line in (tmp_path / "export" / "train.jsonl").read_text().splitlines()]
    assert manifest["rows"] == 5 and len(exported) == 5
    assert {r["messages"][-1]["content"] for r in exported} == {ANSWERS[p] for p in ("p0", "p1", "p3")}
    assert not any("<thought>" in r["messages"][-1]["content"] for r in exported)
    # without a tokenizer the count is unknown, not the full trace's
    answer_only(source, tmp_path / "uncounted")
    assert data_stats(tmp_path / "uncounted") == {"rows": 5, "mean_completion_tokens": None}


def test_shortest_is_distill_select_one_verified_trace_per_problem(tmp_path: Path) -> None:
    from lab.loop import Loop
    from pipelines.foreign import load_records

    source = _dataset(tmp_path / "filtered")
    said: list[str] = []
    loop = Loop(load_lab_config("thought-budget"), tmp_path / "run", echo=said.append)
    out = loop.derive("shortest", source, tmp_path / "no-teacher-needed")
    assert out == tmp_path / "run" / "traces" / "shortest"
    assert any(line.startswith("  $ distill select ") and "--budget 3" in line for line in said)
    rows = {r["problem_id"]: r for r in load_records(out)}
    assert sorted(rows) == ["p0", "p1", "p3"]  # one row per problem with a verified trace
    assert rows["p0"]["sample_index"] == 1 and rows["p0"]["completion_tokens"] == 20  # not the rejected 10
    assert rows["p1"]["sample_index"] == 0  # the tie goes to the lowest sample index
    assert rows["p3"]["sample_index"] == 0 and rows["p3"]["thought"]  # the full trace, thought kept
    assert all(r["kept"] for r in rows.values())
    assert said[-1].strip() == f"wrote {out}: 3 rows, 28.3 completion tokens on average"  # (20 + 25 + 40) / 3


def test_thought_budget_config_and_summary(tmp_path: Path) -> None:
    from lab.loop import data_table, summarize

    cfg = load_lab_config("thought-budget")
    ondevice = load_lab_config("ondevice")
    assert cfg.teacher == ondevice.teacher and cfg.generation == ondevice.generation
    assert cfg.students.seeds == [0, 1, 2] and cfg.students.baseline == "full"
    assert [(v.name, v.data) for v in cfg.students.variants] == \
        [("full", "filtered"), ("answer-only", "answer_only"), ("shortest", "shortest")]
    assert cfg.students.max_steps == ondevice.students.max_steps and cfg.students.shape == ondevice.students.shape
    assert cfg.evaluation.problems == 100 and cfg.evaluation.num_samples == ondevice.evaluation.num_samples

    def run(pass1: float, tokens: float) -> dict:
        return {"lab-dictation": {"clean": None, "all": {"pass@1": pass1, "format_adherence": 1.0,
                                                         "tokens": {"mean": tokens}, "chrf": 0.9, "wer": 0.1}}}

    runs = {"teacher": run(1.0, 44.0), **{f"full-s{s}": run(0.9, 45.0 + s) for s in (0, 1, 2)},
            **{f"answer-only-s{s}": run(0.8, 12.0) for s in (0, 1, 2)}}
    table = summarize({"sets": ["lab-dictation"], "runs": runs}, cfg)
    assert "| full | 90.0% | 0.0% | 90.0%, 90.0%, 90.0% | 100.0% | 46.0 | 0.900 | 0.100 |" in table
    assert "| answer-only | 80.0% | 0.0% | 80.0%, 80.0%, 80.0% | 100.0% | 12.0 | 0.900 | 0.100 |" in table
    assert "shortest" not in table  # not evaluated: no row
    source = _dataset(tmp_path / "filtered")
    data = data_table({"filtered": source, "answer_only": source, "shortest": source}, cfg)
    assert "| full | filtered | 5 | 28.0 |" in data and "| shortest | shortest | 5 | 28.0 |" in data


def test_the_loop_counts_the_stripped_thought_with_the_teachers_tokenizer(tmp_path: Path,
                                                                          tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from lab.loop import Loop
    from pipelines.foreign import load_records

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    source = _dataset(tmp_path / "filtered")
    shard = source / "data-00000-of-00001.parquet"
    table = pq.read_table(shard)  # the teacher's counts: its tokens of the completion and the end of turn
    pq.write_table(table.set_column(table.column_names.index("completion_tokens"), "completion_tokens",
                                    pa.array([count(c) + 1 for c in table.column("completion").to_pylist()],
                                             pa.int64())), shard)
    said: list[str] = []
    out = Loop(load_lab_config("thought-budget"), tmp_path / "run", echo=said.append).derive(
        "answer_only", source, tiny_model_dir)
    full = {(r["problem_id"], r["sample_index"]): r for r in load_records(source)}
    rows = load_records(out)
    assert out == tmp_path / "run" / "traces" / "answer_only" and len(rows) == 5
    for row in rows:
        before = full[(row["problem_id"], row["sample_index"])]
        thought_tokens = count(before["completion"]) - count(row["completion"])
        assert thought_tokens > 5 and row["completion_tokens"] == before["completion_tokens"] - thought_tokens
        assert row["completion_tokens"] == count(row["completion"]) + 1  # the answer and the end of turn
    assert "5 rows" in said[-1]


def test_the_latency_projection_matches_the_benchmarks_table_and_picks_the_best_arm_within_450_ms(
        tmp_path: Path) -> None:
    """lab/projection.py: Qwen2-1.5B at 4.5 bits reads 0.87 GB a token (docs/benchmarks.md's projection), so the
    M3's GPU decodes ~97 tok/s and prefills 64 tokens in ~73 ms; an arm fits 450 ms on a device only when its
    tokens do, and the best fitting arm is the most accurate of those."""
    from lab.projection import BUDGET_MS, BYTES_PER_TOKEN, DEVICES, arm_points, projection_markdown

    assert round(BYTES_PER_TOKEN / 1e9, 2) == 0.87
    gpu, cpu, phone, here = DEVICES
    assert round(gpu.decode_tok_s) == 97 and round(gpu.ms(0)) == 73 and round(cpu.decode_tok_s) == 53
    assert round(here.decode_tok_s, 1) == 13.9 and round(here.ms(0)) == 452  # the measured row gives back its input
    assert gpu.ms(gpu.tokens_within()) <= BUDGET_MS < gpu.ms(gpu.tokens_within() + 1)
    assert phone.tokens_within() < cpu.tokens_within() < gpu.tokens_within()

    def run(pass1: float, chrf: float, tokens: float) -> dict[str, object]:
        return {"clean": None, "all": {"pass@1": pass1, "chrf": chrf, "tokens": {"mean": tokens}}}

    results = {"sets": {"lab-dictation": {}}, "runs": {
        "full-s0": {"lab-dictation": run(0.9, 0.95, 45)}, "full-s1": {"lab-dictation": run(0.8, 0.93, 47)},
        "answer-only-s0": {"lab-dictation": run(0.7, 0.90, 12)},
        "answer-only-s1": {"lab-dictation": run(0.6, 0.88, 14)}}}
    points = arm_points(results, ["full", "answer-only"], [0, 1])
    assert round(points["full"]["pass@1"], 6) == 0.85 and points["answer-only"]["tokens"] == 13
    markdown = projection_markdown(points, tmp_path / "budget.png")
    best = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[-1]
            for line in markdown.splitlines() if line.startswith("| ") and "tok" not in line}
    # the full arm's 46 tokens take the M3's GPU 73 + 46 x 10.3 = 548 ms; the answer-only arm's 13 fit
    assert gpu.ms(46) > BUDGET_MS >= gpu.ms(13)
    assert best[gpu.name] == "answer-only" and best[phone.name] == "none"
    assert (tmp_path / "budget.png").exists()
