"""`distill export-model --target executorch`: a tiny dictation-shaped Qwen2 → a `.pte` (XNNPACK), loaded and
generating in ExecuTorch's runtime (.venv-ondevice, `make setup-ondevice`), its greedy tokens compared with fp32.

The student has random weights drawn wide (std 0.3), so its greedy tokens vary from position to position: an fp32
`.pte` must then reproduce transformers' fp32 tokens exactly (the KV cache, positions and output head all right),
and the check must tell a different model apart. `make test` (CI) and `make test-ondevice` build .venv-ondevice
first (~4 min, 1.7 GB); a bare `pytest` without it skips the runtime's tests (CI fails them), and the ones that need
no runtime (the flags' errors, the timing loop every runtime is timed with, the bench's table) run everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require_venv, run_distill

pytestmark = [pytest.mark.ondevice, pytest.mark.slow]


def build_student(out: Path, seed: int) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lab.tasks import examples, get_task
    from lab.teacher import STUDENT_SHAPE, build_tokenizer, save_model

    spec = get_task("dictation")
    corpus = [spec.system_prompt + "\n" + ex.problem + "\n" + ex.solution for ex in examples("dictation", 64, 0, 2)]
    tokenizer = build_tokenizer(corpus, 700)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, max_position_embeddings=512,
                         initializer_range=0.3, **STUDENT_SHAPE)
    save_model(Qwen2ForCausalLM(config).eval(), tokenizer, out)
    return out


def require_runtime() -> None:
    require_venv(".venv-ondevice", "setup-ondevice")  # CI fails without it: make test builds it


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_runtime()
    root = tmp_path_factory.mktemp("et-students")
    return build_student(root / "seed0", 0), build_student(root / "seed1", 1)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory: pytest.TempPathFactory, students: tuple[Path, Path]) -> Path:
    out = tmp_path_factory.mktemp("et") / "fp32"
    result = run_distill("export-model", students[0], "--target", "executorch", "--quantize", "fp32", "--out", out,
                         timeout=600)
    assert "model.pte fp32" in result.stdout and "ExecuTorch generates" in result.stdout
    return out


def test_fp32_pte_reproduces_transformers_tokens(fp32_export: Path) -> None:
    record = json.loads((fp32_export / "ondevice.json").read_text())
    et = record["executorch"]
    assert record["target"] == "executorch" and et["scheme"] == "fp32" and et["xnnpack_delegates"] > 0
    check = et["check"]
    assert check["generates"] is True and check["prompts"] == len(check["samples"]) == 2
    for sample in check["samples"]:
        assert sample["tokens"] == sample["fp32_tokens"] == sample["agree"] == 48  # no end-of-turn in 48 tokens
    assert check["token_agreement_with_fp32"] == 1.0
    # ExecuTorch's own C++ runner (its apps' and llama_main's) loads the same .pte with the tokenizer file and
    # generates; its text is compared where it can cross into Python (a random model's tokens split UTF-8
    # characters, so here usually none is: the lab's trained model's 20 of 20 match, docs/benchmarks.md)
    runner = check["llm_runner"]
    assert runner["generates"] is True and runner["same_text_as_check"] == 2 - runner["undecodable"]
    assert len({s["text"] for s in check["samples"]}) == 2 and all(len(set(s["text"].split())) > 5
                                                                   for s in check["samples"])


def test_check_tells_another_model_apart(fp32_export: Path, students: tuple[Path, Path]) -> None:
    from distill.ondevice.check import CHECK_PROMPTS
    from distill.ondevice.executorch import check_pte

    other = check_pte(fp32_export / "model.pte", students[1], None, CHECK_PROMPTS, max_new_tokens=24)
    assert other["token_agreement_with_fp32"] < 0.5


def test_8da4w_pte_loads_generates_and_records_agreement(tmp_path: Path, fp32_export: Path,
                                                         students: tuple[Path, Path]) -> None:
    out = tmp_path / "int4"
    result = run_distill("export-model", students[0], "--target", "executorch", "--gguf", "--out", out, timeout=600)
    assert "model.pte 8da4w" in result.stdout and "model.gguf q8_0" in result.stdout  # --gguf stays
    et = json.loads((out / "ondevice.json").read_text())["executorch"]
    fp32 = json.loads((fp32_export / "ondevice.json").read_text())["executorch"]
    assert et["scheme"] == "8da4w" and et["group_size"] == 32 and et["executorch"].startswith("1.5.1")
    # int4 weights in groups of 32 (+ a scale each) instead of fp32: the program loses most of its linear weights'
    # bytes (the fp32 embedding and the zero-initialized KV cache are in both)
    config = json.loads((students[0] / "config.json").read_text())
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    linear_fp32 = 4 * (layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter)
                       + config["vocab_size"] * hidden)
    assert fp32["bytes"] - et["bytes"] > 0.6 * linear_fp32 and (out / "model.pte").stat().st_size == et["bytes"]
    assert all(s["tokens"] > 0 for s in et["check"]["samples"])
    assert 0.0 <= et["check"]["token_agreement_with_fp32"] <= 1.0
    assert et["check"]["token_agreement_with_fp32"] == round(
        sum(s["agree"] for s in et["check"]["samples"])
        / sum(max(s["tokens"], s["fp32_tokens"], 1) for s in et["check"]["samples"]), 4)


def test_missing_runtime_names_the_make_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.ondevice import executorch
    from pipelines.spec import SpecError

    monkeypatch.setattr(executorch, "VENV_ONDEVICE", tmp_path / "absent")
    with pytest.raises(SpecError, match="make setup-ondevice"):
        executorch.ondevice_python()


def test_executorch_flags_errors_name_the_field(tmp_path: Path) -> None:
    """Refused before any runtime is needed: a bad --target, fp32 for torchao, an unreadable --check-prompts."""
    student = build_student(tmp_path / "student", 0)
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"question": "um the cat"}\nnot json\n')
    no_question = tmp_path / "rows.jsonl"
    no_question.write_text('{"question": "um the cat"}\n\n{"text": "the cat"}\n')
    for args, message in [(("--target", "tpu"), "--target:"),
                          (("--quantize", "fp32"), "--quantize: fp32 is for --target executorch"),
                          (("--target", "executorch", "--check-prompts", bad),
                           f"--check-prompts: {bad}:2: not valid JSON (Expecting value); fix or remove that line"),
                          (("--target", "executorch", "--check-prompts", no_question),
                           f"--check-prompts: {no_question}:3 is not a JSON object with a `question`"),
                          (("--target", "executorch", "--check-prompts", tmp_path / "absent"), "--check-prompts:")]:
        result = run_distill("export-model", student, *args, "--out", tmp_path / "x", check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), \
            result.stderr[-500:]


def test_timed_greedy_stops_at_end_of_turn_and_counts_steps() -> None:
    """The loop every runtime is timed with: one prefill, then one step per token, an end-of-turn not kept."""
    import torch

    from distill.ondevice.executorch_runtime import timed_greedy

    calls: list[tuple[list[int], int]] = []
    script = [5, 6, 7, 2, 9]  # the token each call makes most likely; 2 ends the turn

    def step(ids: list[int], start: int) -> torch.Tensor:
        calls.append((list(ids), start))
        logits = torch.zeros(10)
        logits[script[len(calls) - 1]] = 1.0
        return logits

    run = timed_greedy(step, [1, 3, 4], max_new_tokens=10, eos_ids={2})
    assert run["tokens"] == [5, 6, 7]
    assert calls == [([1, 3, 4], 0), ([5], 3), ([6], 4), ([7], 5)]  # positions follow the prompt
    assert run["total_ms"] >= run["ttft_ms"] > 0 and run["decode_ms"] >= 0
    calls.clear()
    assert timed_greedy(step, [1], max_new_tokens=2, eos_ids=set())["tokens"] == [5, 6] and len(calls) == 2


def test_runtime_table_ratios_against_the_baseline() -> None:
    from lab.runtime_latency import agreement, summary, table

    base = [{"tokens": [1, 2, 3, 4, 5], "ttft_ms": 100.0, "decode_ms": 400.0, "total_ms": 500.0}] * 2
    fast = [{"tokens": [1, 2, 9, 4, 5], "ttft_ms": 10.0, "decode_ms": 40.0, "total_ms": 50.0}] * 2
    assert summary(base)["decode_tok_s"] == 10.0  # 4 tokens after the first in 0.4 s
    assert agreement(fast, base) == 0.8
    text = table("t", {"torch fp32": summary(base), "ExecuTorch XNNPACK 8da4w": {**summary(fast), "bytes": 2e6,
                                                                                 "agreement": 0.8}})
    rows = {line[:26].strip(): line[26:].split() for line in text.splitlines()[3:]}
    assert rows["torch fp32"][5:7] == ["1.00x", "1.00x"]
    assert rows["ExecuTorch XNNPACK 8da4w"][5:] == ["0.10x", "10.00x", "0.80", "2.0"]
