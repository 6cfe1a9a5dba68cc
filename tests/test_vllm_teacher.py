"""The factory against a real vLLM server (CPU build) serving tiny teachers trained here.

`distill serve` starts the servers (conftest); `distill run` samples n completions with top-k log-probabilities,
vLLM's deepseek_r1 reasoning parser fills `reasoning`, `distill export --format kd` gives targets that equal a
direct forward pass of the teacher, and a teacher killed and restarted mid-run still yields every problem once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import DISTILL, ROOT, Served, lab_spec, run_distill, wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@cache
def teacher_model(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), \
        AutoTokenizer.from_pretrained(model_dir)


def forward_logprobs(model_dir: Path, ids: list[int]) -> Any:
    """log-softmax of a direct forward pass: row p is the distribution of token p+1."""
    import torch

    model, _ = teacher_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def assert_top_k_equal(reference: Any, ids: list[int], logprobs: list[float], where: str) -> float:
    """The ids are the reference's top k (as a set) and their logprobs agree to 1e-3; returns the worst error."""
    top = reference.topk(len(ids))
    assert set(top.indices.tolist()) == {int(i) for i in ids}, where
    expected = dict(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    worst = max(abs(expected[int(i)] - v) for i, v in zip(ids, logprobs, strict=True))
    assert worst < 1e-3, f"{where}: off by {worst}"
    return worst


def read_rows(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder)


def test_run_samples_n_with_the_true_top_k(vllm_teacher: Served, tmp_path: Path) -> None:
    spec = lab_spec(tmp_path / "sample.yaml", vllm_teacher, num_samples=3, top_logprobs=3, temperature=1.0)
    run_distill("run", spec, "--out", tmp_path / "out")
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 36 and rows.groupby("problem_id").size().eq(3).all()
    # the teacher writes the format; its sums are right only sometimes (a tiny model, 300 steps)
    assert (rows.kept | (rows.rejection_reason == "incorrect")).mean() > 0.8, rows.rejection_reason.value_counts()
    assert rows.kept.sum() > 0 and rows.teacher_model.eq("lab-teacher").all()
    stats = json.loads((tmp_path / "out" / "__meta__" / "stats.json").read_text())
    assert stats["samples"] == 36
    checked = 0
    for _, row in rows[rows.finish_reason == "stop"].head(8).iterrows():
        sampled = [int(t.removeprefix("token_id:")) for t in row.tokens]
        assert row.finish_reason == "stop" and row.completion_tokens == len(sampled)
        reference = forward_logprobs(vllm_teacher.model_dir, [*row.prompt_token_ids, *sampled])
        start = len(row.prompt_token_ids) - 1
        for i, top in enumerate(row.logprobs):  # the k most likely, never the sampled token in their place
            assert len(top) == 3 and [e["logprob"] for e in top] == sorted((e["logprob"] for e in top), reverse=True)
            assert_top_k_equal(reference[start + i], [e["token"].removeprefix("token_id:") for e in top],
                               [e["logprob"] for e in top], f"row {row.problem_id} token {i}")
            checked += 1
    assert checked > 100


def test_reasoning_parser_fills_reasoning_and_traces_are_normalised(vllm_r1_teacher: Served, tmp_path: Path) -> None:
    spec = lab_spec(tmp_path / "r1.yaml", vllm_r1_teacher, num_samples=2, temperature=0.6)
    run_distill("run", spec, "--out", tmp_path / "out")
    rows = read_rows(tmp_path / "out")
    kept = rows[rows.kept | (rows.rejection_reason == "incorrect")]  # parsed; the sum itself may be wrong
    assert len(rows) == 24 and len(kept) >= 18, rows.rejection_reason.value_counts()
    # vLLM's deepseek_r1 parser moved the thought to `reasoning`; the content is the answer alone
    assert kept.reasoning_content.str.contains(" = ").all()
    assert kept.completion.str.strip().str.startswith("\\boxed{").all()
    assert not kept.completion.str.contains("think>").any()
    for messages in rows[rows.kept].messages:
        content = messages[-1]["content"]
        assert content.startswith("<thought>\n") and "</thought>\n\n\\boxed{" in content and "think>" not in content


def export_kd(dataset: Path, out: Path, student: Path, *extra: Any, check: bool = True) -> Any:
    return run_distill("export", dataset, "--format", "kd", "--student", student, "--out", out, "--max-seq-len", 512,
                       *extra, check=check)


def check_targets_against_forward_pass(export_dir: Path, teacher_dir: Path) -> dict[str, int]:
    """Every exported target (the teacher's scored ones; a generation row's up to its end of turn) equals a direct
    forward pass of the teacher on the student's exact ids: same top-k ids, logprobs within 1e-3; and a scored
    row's ``target_token_logprob`` is the forward pass's log-probability of the token that follows, within 1e-3
    (``outside_top_k`` counts those tokens the top k does not hold: what only this field carries)."""
    from distill.axolotl.kd_align import student_turn

    _, tokenizer = teacher_model(teacher_dir)
    counts = {"rows": 0, "positions": 0, "token_logprobs": 0, "outside_top_k": 0}
    for record in pd.read_parquet(export_dir / "train.parquet").to_dict("records"):
        turn = student_turn(tokenizer, [dict(m) for m in record["messages"]])
        ids = turn.input_ids
        reference = forward_logprobs(teacher_dir, ids)
        targets = list(zip(record["target_token_ids"], record["logprobs"], strict=True))
        assert len(targets) == len(ids) - turn.content_start + 1
        # positions p (target over token p+1); a generation row's tokens after the end of turn are one-hot
        last = len(ids) - 1 if record["kd_targets"] == "scored" else turn.content_end
        for j, position in enumerate(range(turn.content_start - 1, last)):
            token_ids, logprobs = targets[j]
            assert_top_k_equal(reference[position], list(token_ids), list(logprobs),
                               f"{record['problem_id']}/{record['sample_index']} position {position}")
            counts["positions"] += 1
            if record["kd_targets"] == "scored":  # the teacher's log-probability of the token that follows
                expected = reference[position][ids[position + 1]].item()
                stored = record["target_token_logprob"][j]
                assert abs(stored - expected) < 1e-3, f"{record['problem_id']} position {position}: {stored} {expected}"
                counts["token_logprobs"] += 1
                counts["outside_top_k"] += ids[position + 1] not in {int(i) for i in token_ids}
        counts["rows"] += 1
    return counts


def test_kd_targets_equal_a_forward_pass(vllm_teacher: Served, tmp_path: Path) -> None:
    # temperature 1.0 samples tokens outside the top k now and then: those must never enter the targets
    spec = lab_spec(tmp_path / "kd.yaml", vllm_teacher, verification="none", num_samples=4, top_logprobs=5,
                    temperature=1.0)
    run_distill("run", spec, "--out", tmp_path / "out")
    export_kd(tmp_path / "out", tmp_path / "from-run", vllm_teacher.model_dir)
    manifest = json.loads((tmp_path / "from-run" / "export.json").read_text())
    assert manifest["kd"]["targets"] == {"scored": 0, "generation": manifest["rows"]} and manifest["rows"] > 30
    assert manifest["kd"]["distribution"] | {"tokenizer_sha256": None} == {
        "logprobs": "raw", "temperature": 1.0, "top_k": 5, "tokenizer_sha256": None}
    counts = check_targets_against_forward_pass(tmp_path / "from-run", vllm_teacher.model_dir)
    assert counts["positions"] > 1000

    export_kd(tmp_path / "out", tmp_path / "scored", vllm_teacher.model_dir, "--teacher-url", vllm_teacher.base_url,
              "--teacher-model", vllm_teacher.name, "--top-k", 8)
    manifest = json.loads((tmp_path / "scored" / "export.json").read_text())
    assert manifest["kd"]["targets"]["scored"] == manifest["rows"] and manifest["kd"]["distribution"]["top_k"] == 8
    check_targets_against_forward_pass(tmp_path / "scored", vllm_teacher.model_dir)
    # the config declares the temperature the log-probabilities were computed at, not the sampling one (1.0 here
    # too, so check the rendering reads the manifest, whatever the spec's temperature)
    run_distill("config", "kd", "--dataset", tmp_path / "scored", "--student", vllm_teacher.model_dir,
                "--out", tmp_path / "kd.yaml", "--smoke")
    assert yaml.safe_load((tmp_path / "kd.yaml").read_text())["datasets"][0]["temperature"] == 1.0


def test_kd_targets_of_normalised_r1_traces_come_from_a_scoring_pass(vllm_r1_teacher: Served, tmp_path: Path) -> None:
    spec = lab_spec(tmp_path / "r1kd.yaml", vllm_r1_teacher, verification="none", num_samples=2, top_logprobs=4,
                    temperature=0.6)
    run_distill("run", spec, "--out", tmp_path / "out")
    # the kept traces were rewritten (<think> → <thought>, the reasoning field joined): the run's logprobs belong
    # to other tokens, so without a scorer nothing can be exported, and nothing is guessed
    result = export_kd(tmp_path / "out", tmp_path / "from-run", vllm_r1_teacher.model_dir, check=False)
    assert result.returncode == 2 and "not_provable" in result.stderr
    export_kd(tmp_path / "out", tmp_path / "scored", vllm_r1_teacher.model_dir, "--teacher-url",
              vllm_r1_teacher.base_url, "--teacher-model", vllm_r1_teacher.name)
    counts = check_targets_against_forward_pass(tmp_path / "scored", vllm_r1_teacher.model_dir)
    assert counts["rows"] >= 12
    # the same pass in-process (a local teacher model, no server) gives the same targets
    export_kd(tmp_path / "out", tmp_path / "in-process", vllm_r1_teacher.model_dir, "--teacher-model",
              vllm_r1_teacher.model_dir)
    served_rows = pd.read_parquet(tmp_path / "scored" / "train.parquet")
    local_rows = pd.read_parquet(tmp_path / "in-process" / "train.parquet")
    for a, b in zip(served_rows.target_token_ids, local_rows.target_token_ids, strict=True):
        assert [set(x) for x in a] == [set(x) for x in b]


def finished_requests(root_url: str) -> float:
    """vLLM's own count of finished requests (``vllm:request_success_total``, summed over finish reasons)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{root_url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def test_teacher_killed_and_restarted_mid_run(lab_teacher: Path, tmp_path: Path) -> None:
    """kill -9 of the vLLM server while `distill run` works, a restart on the same port, a rerun: every problem
    ends up in the output exactly once, with no failed sample left."""
    from distill.serve.server import ServeConfig, free_port, start_servers

    cfg = ServeConfig(model=str(lab_teacher), name="restarted", port=free_port(), dtype="float32",
                      max_model_len=1024, log_dir=tmp_path / "logs")
    (server,) = start_servers(cfg)
    spec = lab_spec(tmp_path / "restart.yaml", (server.base_url, "restarted"), n_problems=80, num_samples=2,
                    temperature=0.6, max_concurrency=2, max_retries=2, timeout_s=30)
    out = tmp_path / "out"
    run = subprocess.Popen([*DISTILL, "run", str(spec), "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        # kill when the server itself has finished a few requests: most of the 80 are still to come (waiting for
        # the first part file raced a fast server, which could be done with all of them by then)
        wait_for(lambda: finished_requests(server.root_url) >= 6, 180, "the server's first finished requests")
        os.killpg(server.process.pid, signal.SIGKILL)  # the whole server, workers included
        server.process.wait()
        server.process = None
        (server,) = start_servers(cfg)  # same port
        output, _ = run.communicate(timeout=600)
    finally:
        run.kill()
    first = read_rows(out)
    failed = int((first.rejection_reason == "teacher_error").sum())
    rerun = run_distill("run", spec, "--out", out)
    server.stop()
    rows = read_rows(out)
    assert len(rows) == 160 and rows.groupby("problem_id").size().eq(2).all()
    assert rows.problem_id.nunique() == 80 and not (rows.rejection_reason == "teacher_error").any()
    # the restart takes far longer than the 2 retries' backoff: requests sent meanwhile fail and the rerun redoes them
    assert failed > 0, f"the kill should have failed the requests sent while the server was down:\n{output[-2000:]}"
    print(f"teacher_error samples after the restart: {failed}; rerun: {rerun.stdout.strip()[-200:]}")
