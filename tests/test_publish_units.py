"""Pure parts of publishing: the Hub configs, the card, and the one-line error messages."""

from __future__ import annotations

import httpx2
import pyarrow as pa
from huggingface_hub import DatasetCard
from huggingface_hub.errors import HfHubHTTPError

from distill.publish.card import CardInputs, render_card
from distill.publish.configs import hub_configs, kd_table, kept_traces
from distill.publish.push import describe, is_transient, redact

STATS = {
    "problems": 40, "samples": 160, "kept": 97, "rejected": 63, "pass_rate": 0.6063, "correct_rate": 0.7,
    "problems_with_kept_trace": 33, "reasons": {"incorrect": 41, "kept": 97, "prm": 12, "truncated": 10},
    "tokens": {"completion_total": 51234, "completion_mean": 320.2, "completion_median": 301,
               "completion_max": 1024, "kept_mean": 288.7},
    "teacher_model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "verification": "math",
    "decontamination": {"ngram": 8, "benchmarks": [{"name": "MATH-500", "problems": 500}], "checked": 43,
                        "contaminated": 2, "dropped": [
                            {"problem_id": "17", "problem_index": 17, "benchmark": "MATH-500",
                             "benchmark_index": 4, "ngram": "how many vertical asymptotes does the graph of"},
                            {"problem_id": "30", "problem_index": 30, "benchmark": "MATH-500",
                             "benchmark_index": 9, "ngram": "what is 1 1"}]},
    "dedupe": {"enabled": True, "near_threshold": 0.85, "num_perm": 128, "checked": 41, "exact": 1, "near": 0,
               "dropped": []},
}
SPEC = """name: gsm8k
license: mit
source: {path: openai/gsm8k, config: main, split: train, problem_field: question}
teacher: {model: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B, temperature: 0.7, num_samples: 4}
prm: {model: Qwen/Qwen2.5-Math-PRM-7B, threshold: 0.42, aggregation: min}
description: "GSM8K traces; a ```fenced``` note"
"""


def _card(**overrides) -> str:
    inputs = CardInputs(repo_id="me/gsm8k-r1", stats=STATS, spec_text=SPEC,
                        config_rows={"default": 97, "curriculum_stage1": 30, "curriculum_stage2": 67},
                        axolotl_configs=["sft-qwen2.5-1.5b.yaml"])
    for key, value in overrides.items():
        setattr(inputs, key, value)
    return render_card(inputs)


def test_card_holds_every_number_and_the_spec_verbatim() -> None:
    text = _card()
    for reason, count in STATS["reasons"].items():
        assert f"| `{reason}` | {count} |" in text
    assert "Pass rate: **60.63%**" in text and "**97 kept**, 63 rejected" in text
    assert "| completion_median | 301 |" in text and "| kept_mean | 288.7 |" in text
    assert "`Qwen/Qwen2.5-Math-PRM-7B`" in text and "| threshold | 0.42 |" in text and "(12 samples)" in text
    with_run_prm = _card(stats={**STATS, "prm": {"model": "m/prm", "aggregation": "mean", "threshold": 0.5}})
    assert "`m/prm`" in with_run_prm and "| aggregation | mean |" in with_run_prm  # stats.json wins
    assert "| temperature | 0.7 |" in text and "| num_samples | 4 |" in text
    assert "**2** of 43 problems" in text and "`how many vertical asymptotes does the graph of`" in text
    assert "**1** exact and **0** near" in text
    assert "Licence of the source: **mit**" in text and "(config `main`)" in text
    assert "make train CONFIG=axolotl_configs/sft-qwen2.5-1.5b.yaml" in text and "path: me/gsm8k-r1" in text
    assert SPEC.rstrip() in text and "````yaml" in text  # a longer fence because the spec holds ```


def test_card_metadata_is_valid_for_the_hub() -> None:
    card = DatasetCard(_card())
    assert card.data.license == "mit" and card.data.size_categories == ["n<1K"]
    assert card.data.configs[0] == {"config_name": "default", "default": True,
                                    "data_files": [{"split": "train", "path": "data/default/train-*.parquet"}]}
    assert [c["config_name"] for c in card.data.configs] == ["default", "curriculum_stage1", "curriculum_stage2"]


def test_card_without_prm_licence_or_benchmarks_says_so() -> None:
    stats = {**STATS, "decontamination": {**STATS["decontamination"], "benchmarks": [], "contaminated": 0,
                                          "dropped": []}}
    text = _card(stats=stats, spec_text="name: x\nsource: {path: a.jsonl}\n")
    assert "No process reward model was used" in text
    assert "not stated** (set `license:` in the spec)" in text and "license: unknown" in text
    assert "`decontamination.benchmarks` is empty" in text


def _samples() -> pa.Table:
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    return pa.Table.from_pylist([
        {"problem_id": "0", "sample_index": 0, "kept": True, "messages": msgs, "pass_rate": 1.0,
         "completion_tokens": 10, "logprobs": [[{"token": "a", "logprob": -0.1}]]},
        {"problem_id": "0", "sample_index": 1, "kept": True, "messages": msgs, "pass_rate": 1.0,
         "completion_tokens": 12, "logprobs": [[{"token": "a", "logprob": -0.2}]]},
        {"problem_id": "1", "sample_index": 0, "kept": False, "messages": None, "pass_rate": 0.5,
         "completion_tokens": 50, "logprobs": None},
        {"problem_id": "1", "sample_index": 1, "kept": True, "messages": msgs, "pass_rate": 0.5,
         "completion_tokens": 40, "logprobs": None},
        {"problem_id": "2", "sample_index": 0, "kept": None, "messages": None, "pass_rate": 0.0,
         "completion_tokens": 5, "logprobs": None},
    ])


def test_configs_keep_only_kept_traces_and_split_kd_and_curriculum() -> None:
    table = _samples()
    assert kept_traces(table).column("problem_id").to_pylist() == ["0", "0", "1"]
    configs = hub_configs(table.append_column("tokens", pa.nulls(5, pa.list_(pa.string())))
                          .append_column("token_logprobs", pa.nulls(5, pa.list_(pa.float64()))))
    assert list(configs) == ["default", "kd", "curriculum_stage1", "curriculum_stage2"]
    assert "kept" not in configs["default"].column_names and configs["default"].num_rows == 3
    assert configs["kd"].num_rows == 2 and "logprobs" in configs["kd"].column_names
    # issue 4's rule: stage 1 = pass rate >= 0.75 and length <= the lower median (10 of 10, 12, 40)
    assert configs["curriculum_stage1"].column("completion_tokens").to_pylist() == [10]
    assert configs["curriculum_stage2"].column("completion_tokens").to_pylist() == [12, 40]
    assert kd_table(kept_traces(table.drop(["logprobs"]))) is None  # no logprob columns: no kd config


def _http_error(status: int, message: str) -> HfHubHTTPError:
    response = httpx2.Response(status, request=httpx2.Request("POST", "http://hub/api/repos/create"))
    return HfHubHTTPError(message, response=response, server_message=message)


def test_errors_are_one_line_and_transient_ones_are_retried() -> None:
    token = "hf_abcdefSECRET"
    line = redact(describe(_http_error(401, f"bad token {token}\nmore"), "me/x", "https://hub"), token)
    assert line.startswith("authentication failed (401)") and token not in line and "\n" not in line
    assert "permission denied (403) for dataset me/x" in describe(_http_error(403, "no"), "me/x", "e")
    assert is_transient(_http_error(503, "busy")) and is_transient(_http_error(429, "slow down"))
    assert not is_transient(_http_error(401, "no")) and not is_transient(ValueError("x"))
    assert is_transient(httpx2.ConnectError("refused"))
    assert describe(httpx2.ConnectError("refused"), "me/x", "http://h").startswith("cannot reach the Hub at http://h")
